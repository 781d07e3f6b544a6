"""PatchCore fit time: 10% coreset on 50 training images at 256 px with tf_efficientnet_lite0.

Measures, as medians over ``--repeats`` runs in this one process: backbone feature extraction of the 50
images, and PatchCore's fit on those features (patch embedding + greedy coreset), plus their sum (the
comparable figure to anomalib 2.7's ~110 s fit, DESIGN.md section 10).  Then, on every category of the
embedded default (128 px), the image and pixel AUROC of the 10% coreset next to exact search over the
full memory bank.  Writes JSON and markdown.

    python benchmarks/bench_patchcore.py --out results/benchmarks/patchcore_fit.json
    python benchmarks/bench_patchcore.py --quick    # a tiny check that it runs (make bench BENCH_ARGS=--quick)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adbench.features.backbone import Backbone
from adbench.data.embedded import EmbeddedConfig, generate_category
from adbench.data.embedded import CATEGORIES
from adbench.features.cache import extract_split
from adbench.evaluation.metrics import evaluate
from baselines.patchcore import PatchCore


def coreset_vs_exact(backbone: Backbone, size: int = 128, categories: tuple[str, ...] = CATEGORIES,
                     generator: EmbeddedConfig | None = None) -> list[dict]:
    """Per embedded category (default generator): AUROCs with the 10% coreset and with the full bank."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for category in categories:
            generate_category(Path(tmp), category, generator or EmbeddedConfig())
            train, test = (extract_split("embedded", Path(tmp), category, s, backbone, size, progress=False)
                           for s in ("train", "test"))
            row = {"category": category}
            for name, ratio in (("exact", 1.0), ("coreset", 0.1)):
                pred = PatchCore({"coreset_ratio": ratio}, seed=0).fit(train).predict(test)
                m = evaluate(test.labels, pred.scores, test.masks.numpy(), pred.maps)
                row[f"{name}_image_auroc"], row[f"{name}_pixel_auroc"] = m["image_auroc"], m["pixel_auroc"]
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/patchcore_fit.json"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--weights-dir", type=Path, default=Path("results/weights"))
    p.add_argument("--quick", action="store_true",
                   help="a tiny run that only checks the script works: 1 repeat of 8 images at 64 px; the coreset "
                        "comparison on brick alone, with config/ci.yaml's generator sizes")
    a = p.parse_args()
    if a.quick:
        a.repeats, a.images, a.size = 1, 8, 64
    with tempfile.TemporaryDirectory() as tmp:
        generate_category(Path(tmp), "brick", EmbeddedConfig(size=256, n_train=a.images, n_test_good=1,
                                                             n_test_anomalous=4))
        backbone = Backbone("tf_efficientnet_lite0", a.weights_dir)
        extract, fit = [], []
        for _ in range(a.repeats):
            start = time.perf_counter()
            train = extract_split("embedded", Path(tmp), "brick", "train", backbone, a.size, progress=False)
            extract.append(time.perf_counter() - start)
            start = time.perf_counter()
            model = PatchCore({"coreset_ratio": 0.1}, seed=0).fit(train)
            fit.append(time.perf_counter() - start)
    result = {
        "images": a.images, "image_size": a.size, "patches": len(train) * train.features[0].shape[2] * train.features[0].shape[3],
        "memory_bank": int(len(model.memory_bank)), "repeats": a.repeats,
        "extract_seconds_median": statistics.median(extract), "fit_seconds_median": statistics.median(fit),
        "total_seconds_median": statistics.median(e + f for e, f in zip(extract, fit)),
        "extract_seconds": extract, "fit_seconds": fit, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor()} ({torch.get_num_threads()} threads)",
        "target_seconds": 20.0,
        "quick": a.quick,
        "coreset_vs_exact_128px": (coreset_vs_exact(backbone, 128, ("brick",), EmbeddedConfig(
            size=128, n_train=16, n_test_good=8, n_test_anomalous=12)) if a.quick else coreset_vs_exact(backbone)),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    a.out.with_suffix(".md").write_text(
        "| images | px | patches | memory bank | extract (s) | fit (s) | extract + fit (s) |\n|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {a.images} | {a.size} | {result['patches']} | {result['memory_bank']} | "
        f"{result['extract_seconds_median']:.1f} | {result['fit_seconds_median']:.1f} | {result['total_seconds_median']:.1f} |\n\n"
        "| category (128 px) | image AUROC exact | image AUROC 10% coreset | pixel AUROC exact | pixel AUROC 10% coreset |\n"
        "|---|---:|---:|---:|---:|\n" + "".join(
            f"| {r['category']} | {r['exact_image_auroc']:.3f} | {r['coreset_image_auroc']:.3f} | "
            f"{r['exact_pixel_auroc']:.3f} | {r['coreset_pixel_auroc']:.3f} |\n" for r in result["coreset_vs_exact_128px"])
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
