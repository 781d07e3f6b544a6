"""What a method's budget buys on the embedded default: fit time, image AUROC and local-defect pixel AUROC.

For one method (``impl`` and params, as in a config entry) and one or more seeds, fits and scores every
category of the embedded default from the workflow's feature cache (build it first:
``snakemake --cores 2 results/features/embedded/<category>/tf_efficientnet_lite0_128/{train,test}.pt``),
on one torch thread with the kernels pinned to AVX2, as the workflow's ``fit_evaluate`` jobs run.  Prints
one line per category and seed and a summary: mean image AUROC over the categories, the smallest pixel
AUROC on the local defects (``defect_kinds.local``: below 0.5 means inverted maps), and fit + predict
seconds per category.  Issue 10's targets: mean image AUROC >= 0.75, local pixel AUROC >= 0.5 everywhere.

    python benchmarks/budgets.py cflow '{"meta_epochs": 2}' --seeds 0 1 --out results/benchmarks/budget_cflow.json

The budgets in baselines/README.md and fod/README.md were measured with this command.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adbench.determinism import pin_cpu_isa  # noqa: E402  (imports no torch)

pin_cpu_isa("avx2")  # before torch runs a kernel, as the workflow's jobs

import torch  # noqa: E402
from adbench.datasets import defect_kinds  # noqa: E402
from adbench.features import load_split  # noqa: E402
from adbench.metrics import evaluate, per_defect  # noqa: E402
from adbench.registry import method_class  # noqa: E402

CATEGORIES = ("brick", "grass", "gravel", "coins", "tray")


def measure(impl: str, params: dict, seed: int, category: str, cache: Path, backbone: str) -> dict:
    """Fit on ``category``'s cached training split, score its test split; AUROCs and seconds."""
    folder = cache / category / backbone
    train, test = load_split(folder / "train.pt"), load_split(folder / "test.pt")
    start = time.perf_counter()
    pred = method_class(impl)(params, seed=seed).fit(train).predict(test)
    seconds = time.perf_counter() - start
    masks = test.masks.numpy()
    pooled = evaluate(test.labels, pred.scores, masks, pred.maps)
    kinds = per_defect(test.labels, test.defect_types, pred.scores, masks, pred.maps, defect_kinds("embedded"))
    return {"category": category, "seed": seed, "seconds": seconds, "image_auroc": pooled["image_auroc"],
            "pixel_auroc": pooled["pixel_auroc"],
            **{f"{kind}_{m}": v[m] for kind, v in kinds["defect_kinds"].items() for m in ("image_auroc", "pixel_auroc")}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("impl")
    ap.add_argument("params", nargs="?", default="{}", help="JSON object of params (default: the module's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    ap.add_argument("--cache", type=Path, default=ROOT / "results/features/embedded",
                    help="folder with <category>/<backbone>_<size>/{train,test}.pt")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0_128")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = json.loads(args.params)
    rows = []
    for seed in args.seeds:
        for category in args.categories:
            row = measure(args.impl, params, seed, category, args.cache, args.backbone)
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    summary = {"impl": args.impl, "params": params, "seeds": args.seeds,
               "mean_image_auroc": statistics.mean(r["image_auroc"] for r in rows),
               "mean_pixel_auroc": statistics.mean(r["pixel_auroc"] for r in rows),
               "min_local_pixel_auroc": min(r["local_pixel_auroc"] for r in rows),
               "seconds_per_category": statistics.median(r["seconds"] for r in rows),
               "per_seed_mean_image_auroc": {s: statistics.mean(r["image_auroc"] for r in rows if r["seed"] == s)
                                             for s in args.seeds}}
    print(json.dumps(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
