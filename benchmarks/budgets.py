"""What a method's budget buys on the embedded set's validation split: seconds, image and local pixel AUROC.

For one method (``impl`` and params, as in a config entry), one or more seeds and one or more evaluation
sizes, fits on each category's training split and scores its **validation** split (``adbench.data.embedded``:
same defect mix and counts as the test split, its own images).  The test split is never generated, read
or scored here: budgets, learning rates and thresholds are chosen on validation numbers, and the test
split is read once, by the workflow (issue 16, item 3).

It builds what it needs in its own cache (``--work``, default ``results/budgets/cache``):

* ``<work>/<generator tag>/data/<category>/{train,validation}``: the category, generated with the
  generator settings of ``config/config.yaml`` (``datasets.embedded.generator``, overridden key by key by
  ``--generator``) with ``splits=("train", "validation")``, so no test image exists there;
* ``<work>/<generator tag>/features/<category>/<backbone>_<px>/{train,validation}.pt``: the frozen
  backbone's features (``adbench.features.cache``, the config's backbone, preprocessing and batch size);

the generator tag hashes the resolved generator settings (``generator.json`` beside it says which).
Everything runs on one torch thread with the kernels pinned to AVX2, as the workflow's ``fit_evaluate``
jobs do.  Prints one line per (size, category, seed) and, per size, a summary: mean image AUROC over the
categories and seeds and per seed, the smallest pixel AUROC on the local defects (``defect_kinds.local``:
below 0.5 means inverted maps), whether any cell's image scores or pixel maps were constant over the
validation split, or the method reported its own collapse (``collapsed``: such a cell's AUROCs are 0.5 by
construction, not a measurement, and count so in the means), and the median fit + predict seconds per
category.

    python benchmarks/budgets.py patchsvdd '{"lambda": 1e-3}' --image-size 128 256 --seeds 0 \
        --out results/budgets/patchsvdd.json

``--generator '{"size": 64, "n_train": 8}'`` and small ``--image-size`` values make a quick run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adbench.methods.determinism import pin_cpu_isa  # noqa: E402  (imports neither numpy nor torch)

if __name__ == "__main__":  # as the workflow's jobs, before numpy and torch load; an importer has its own pin
    pin_cpu_isa("avx2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from adbench.data.datasets import VALIDATION, defect_kinds  # noqa: E402
from adbench.data.embedded import CATEGORIES, GENERATOR_VERSION, EmbeddedConfig, generate_category  # noqa: E402
from adbench.evaluation.evaluate import build_method  # noqa: E402
from adbench.features.cache import extract_split, load_split, save_split  # noqa: E402
from adbench.jobs import job_settings  # noqa: E402
from adbench.evaluation.metrics import evaluate, per_defect  # noqa: E402
from adbench.protocol import CollapseError, Prediction, Split, constant_output  # noqa: E402

SPLITS = ("train", VALIDATION)  # all this script ever generates, extracts or reads
DEFAULT_SIZES = (128, 256)  # the embedded default's evaluation size and the paper's


def settings(config: Path, generator_overrides: dict) -> tuple[EmbeddedConfig, dict]:
    """The generator settings (config's ``datasets.embedded.generator`` updated by ``generator_overrides``)
    and the config's ``backbone`` mapping (name, preprocess, batch_size, weights_dir)."""
    cfg = yaml.safe_load(Path(config).read_text())
    generator = {**cfg["datasets"]["embedded"].get("generator", {}), **generator_overrides}
    return EmbeddedConfig(**generator), dict(cfg["backbone"])


def generator_tag(gen: EmbeddedConfig) -> str:
    """A folder name that changes with any generator setting or the generator's version."""
    blob = json.dumps({"version": GENERATOR_VERSION, **asdict(gen)}, sort_keys=True)
    return "gen-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


class Cache:
    """The generated train/validation images and their features, built on first use (see the module doc).

    ``work``: the cache folder; ``gen``: generator settings; ``backbone``: the config's backbone mapping;
    ``weights_dir``: where the backbone's weights are (converted there on first use for lite0).
    """

    def __init__(self, work: Path, gen: EmbeddedConfig, backbone: dict, weights_dir: Path) -> None:
        self.folder = Path(work) / generator_tag(gen)
        self.data = self.folder / "data"
        self.gen, self.backbone, self.weights_dir = gen, backbone, Path(weights_dir)
        self._model = None

    def _category(self, category: str) -> Path:
        """The generated category folder (train and validation only); generates it when absent."""
        folder = self.data / category
        if not (folder / "meta.json").exists():  # generate_category renames a complete folder into place
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "generator.json").write_text(
                json.dumps({"generator_version": GENERATOR_VERSION, **asdict(self.gen)}, indent=1) + "\n")
            generate_category(self.data, category, self.gen, splits=SPLITS)
        if (folder / "test").exists():
            raise RuntimeError(f"{folder / 'test'} exists: budgets.py's cache must hold no test split; delete "
                               f"{self.folder} and rerun")
        return folder

    def split(self, category: str, split: str, image_size: int) -> Split:
        """``split`` (train or validation) of ``category`` at ``image_size`` px, from the feature cache
        (extracted on one torch thread when missing)."""
        if split not in SPLITS:
            raise ValueError(f"budgets.py reads only the {SPLITS} splits, not {split!r}")
        path = self.folder / "features" / category / f"{self.backbone['name']}_{image_size}" / f"{split}.pt"
        if not path.exists():
            self._category(category)
            if self._model is None:
                from adbench.features.backbone import Backbone

                self._model = Backbone(self.backbone["name"], self.weights_dir)
            data = extract_split("embedded", self.data, category, split, self._model, image_size,
                                 int(self.backbone.get("batch_size", 16)), progress=False,
                                 preprocess=self.backbone.get("preprocess", "squash"))
            save_split(data, path, {"dataset": "embedded (budgets.py)", "category": category, "split": split,
                                    "backbone": self.backbone["name"], "image_size": image_size,
                                    "generator": asdict(self.gen)})
        return load_split(path)


def measure(impl: str, params: dict, seed: int, train: Split, val: Split, backbone: str,
            weights_dir: Path) -> dict:
    """Fit ``impl`` on ``train``, score ``val``: AUROCs (pooled and per defect kind), seconds, collapse flags.

    ``constant_scores`` / ``constant_maps``: the image scores / all pixels of all maps were one value up to
    rounding (``adbench.protocol.constant_output``: a collapsed model, whose AUROCs are 0.5 by
    construction).  A method that detects its own collapse and raises ``CollapseError`` (PatchSVDD's
    embedding check) is scored as the constant output it collapsed to (every AUROC 0.5, both flags set)
    and its message kept as ``collapse``; ``seconds`` then runs to the raise.
    """
    model = build_method({"impl": impl, "params": params, "seed": seed, "backbone": backbone}, weights_dir)
    start = time.perf_counter()
    collapse = None
    try:
        pred = model.fit(train).predict(val)
    except CollapseError as exc:
        collapse = str(exc)
        pred = Prediction(np.zeros(len(val)), np.zeros((len(val), val.image_size, val.image_size), np.float32))
    seconds = time.perf_counter() - start
    masks = val.masks.numpy()
    pooled = evaluate(val.labels, pred.scores, masks, pred.maps)
    kinds = per_defect(val.labels, val.defect_types, pred.scores, masks, pred.maps, defect_kinds("embedded"))
    return {"seed": seed, "seconds": seconds, "image_auroc": pooled["image_auroc"],
            "pixel_auroc": pooled["pixel_auroc"],
            **{f"{kind}_{m}": v[m] for kind, v in kinds["defect_kinds"].items()
               for m in ("image_auroc", "pixel_auroc")},
            "constant_scores": constant_output(pred.scores), "constant_maps": constant_output(pred.maps),
            "collapse": collapse}


def summarise(rows: list[dict], seeds: list[int]) -> dict:
    """One evaluation size's rows (one per category and seed) -> the summary described in the module doc.
    A collapsed cell counts with the AUROCs of its constant output (0.5) and is listed in ``collapsed_cells``."""
    collapsed = [f"{r['category']}/seed{r['seed']}" for r in rows if r["constant_scores"] or r["constant_maps"]]
    return {"mean_image_auroc": statistics.mean(r["image_auroc"] for r in rows),
            "mean_pixel_auroc": statistics.mean(r["pixel_auroc"] for r in rows),
            "min_local_pixel_auroc": min(r["local_pixel_auroc"] for r in rows),
            "collapsed": bool(collapsed), "collapsed_cells": collapsed,
            "seconds_per_category": statistics.median(r["seconds"] for r in rows),
            "per_seed_mean_image_auroc": {s: statistics.mean(r["image_auroc"] for r in rows if r["seed"] == s)
                                          for s in seeds}}


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement; returns ``{"split", "impl", "params", "seeds", "generator", "backbone",
    "preprocess", "sizes": {px: summary}, "rows": [...]}`` (also written to ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("impl")
    ap.add_argument("params", nargs="?", default="{}", help="JSON object of params (default: the module's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES))
    ap.add_argument("--image-size", type=int, nargs="+", default=list(DEFAULT_SIZES),
                    help="evaluation sizes in px (default: 128 256)")
    ap.add_argument("--config", type=Path, default=ROOT / "config/config.yaml",
                    help="where the generator and backbone settings come from")
    ap.add_argument("--generator", default="{}", help="JSON object overriding generator settings")
    ap.add_argument("--work", type=Path, default=ROOT / "results/budgets/cache", help="the cache folder")
    ap.add_argument("--weights-dir", type=Path, help="backbone weights (default: the config's weights_dir)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    job_settings(1)  # as the workflow's jobs (adbench.jobs.job_context)
    params = json.loads(args.params)
    if params.get("monitor_every"):
        ap.error("drop monitor_every: budgets.py scores the validation split once, after training")
    gen, backbone = settings(args.config, json.loads(args.generator))
    weights_dir = args.weights_dir or ROOT / backbone.get("weights_dir", "results/weights")
    cache = Cache(args.work, gen, backbone, weights_dir)
    rows, sizes = [], {}
    for size in args.image_size:
        size_rows = []
        for category in args.categories:
            train, val = cache.split(category, "train", size), cache.split(category, VALIDATION, size)
            for seed in args.seeds:
                row = {"image_size": size, "category": category,
                       **measure(args.impl, params, seed, train, val, backbone["name"], weights_dir)}
                size_rows.append(row)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
        sizes[size] = summarise(size_rows, args.seeds)
        print(json.dumps({"image_size": size, **sizes[size]}), flush=True)
        rows += size_rows
    result = {"split": VALIDATION, "impl": args.impl, "params": params, "seeds": args.seeds,
              "generator": asdict(gen), "backbone": backbone["name"],
              "preprocess": backbone.get("preprocess", "squash"), "sizes": sizes, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
