"""Anomaly scoring (the paper's Eq. 12; the authors' test code).

Per token: s = rec x c, with rec the patch-wise error (``fod.losses.reconstruction_error``) and c a
correlation factor from the per-token divergence d (Eq. 6, averaged over heads and layers) through
p = softmax(-d) over the tokens of the image:

  inter branch (anomalies have a large d): c = max(p) - p (authors' code) or 1 - p (paper, Eq. 12);
  intra branch (used only when there is no inter branch; anomalies attend locally, so their d to the
  local prior is small): c = p, as in the authors' intra-only code.

``score`` picks s = rec x c (``rec_div``), rec alone (``rec``) or c alone (``div``).  ``raw_div_scores`` is
the alternative to c alone that Table 4's "pure KL divergence" may mean: the divergence itself, d for the
inter branch and -d for the intra branch (the same direction as c, without the per-image softmax).

Per level, the token scores are reshaped to the grid and bilinearly upsampled (align_corners=True) to the
image size; levels are averaged into the pixel map.  The image score is the max of the map after a
Gaussian filter (sigma = 4 px); the returned map itself is unsmoothed, as the authors' pixel AUROC uses.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

IMAGE_SIGMA = 4.0


def correlation_factor(divergence: torch.Tensor, branch: str, corr_score: str) -> torch.Tensor:
    """divergence: (B, L) per-token Div -> (B, L) factor c (see the module docstring)."""
    p = torch.softmax(-divergence, dim=-1)
    if branch == "intra":
        return p
    return p.amax(-1, keepdim=True) - p if corr_score == "max_minus" else 1.0 - p


def raw_div_scores(divergence: torch.Tensor, branch: str) -> torch.Tensor:
    """divergence: (B, L) per-token Div -> (B, L) token scores: d (inter) or -d (intra), no normalisation."""
    return divergence if branch == "inter" else -divergence


def token_scores(rec: torch.Tensor | None, factor: torch.Tensor | None) -> torch.Tensor:
    """(B, L) rec error and/or (B, L) correlation factor -> (B, L) token scores (their product when both)."""
    if rec is None:
        return factor
    return rec if factor is None else rec * factor


def level_map(scores: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(B, L) token scores on an (H, W) grid -> (B, size, size), bilinear with align_corners=True."""
    maps = scores.reshape(scores.shape[0], 1, *grid)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)[:, 0]


def image_scores(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) pixel maps -> (N,) max of each map after a Gaussian filter with sigma = 4 px."""
    return np.array([gaussian_filter(m.astype(np.float64), sigma=IMAGE_SIGMA).max() for m in maps])
