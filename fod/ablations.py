"""The rows of the paper's Table 4 as named FOD param overrides.

Each entry is merged over a run's FOD params (so it applies to either variant).  Columns of Table 4:
recognition views (``intra``/``inter`` branches; none = patch-wise reconstruction only, a plain
self-attention transformer), entropy constraint (``lambda2``: 0 switches it off), reference features
(``reference``: per-position ``mean`` or greedy k-centre ``coreset``), anomaly scoring (``score``).

Scoring: ``rec`` is the patch-wise error alone, ``div`` the correlation factor alone, ``rec_div`` their
product (Eq. 12).  The correlation factor comes from the inter maps against their prior whenever the
inter branch exists (as in the authors' code, which ignores the intra maps at test time even when both
branches are trained, so ``intra_inter_div`` scores by the inter maps).  The intra-only rows have no
inter branch, so their factor comes from the intra maps against their prior at test time:
c = softmax(-Div) over the image's tokens, where a low divergence (attention that stays local, as an
anomalous patch's does after training) scores high (see fod.scoring).  The ``div`` rows also report the
raw per-token divergence as a second score (``raw_div_*_auroc`` in ``Prediction.extra``; fod/README.md).

Coreset references: ``inter_coreset_recdiv`` (the paper's row) uses the coreset without the tokens'
source cells (``coreset_positions: drop``), the reading under which the paper explains its weaker
result; ``inter_coreset_cells_recdiv`` (not a row of the paper) keeps them, to show what the positions
are worth (see fod.reference).
"""
from __future__ import annotations

from typing import Any

ABLATIONS: dict[str, dict[str, Any]] = {
    "patchwise_rec": {"intra": False, "inter": False, "score": "rec"},
    "intra_noent_div": {"intra": True, "inter": False, "lambda2": 0.0, "score": "div"},
    "intra_ent_div": {"intra": True, "inter": False, "score": "div"},
    "intra_ent_recdiv": {"intra": True, "inter": False, "score": "rec_div"},
    "inter_mean_recdiv": {"intra": False, "inter": True, "reference": "mean", "score": "rec_div"},
    "inter_coreset_recdiv": {
        "intra": False, "inter": True, "reference": "coreset", "coreset_positions": "drop", "score": "rec_div"
    },
    "inter_coreset_cells_recdiv": {
        "intra": False, "inter": True, "reference": "coreset", "coreset_positions": "keep", "score": "rec_div"
    },
    "intra_inter_div": {"intra": True, "inter": True, "reference": "mean", "score": "div"},
    "full": {"intra": True, "inter": True, "reference": "mean", "score": "rec_div"},
}
