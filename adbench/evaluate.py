"""One run of one method on one category, end to end: fit, then evaluate.

``fit_run`` builds the method named in the config, fits it on the cached training split, saves the model
and opens the MLflow run.  ``evaluate_run`` scores the cached test split and writes, under
``results/<dataset>/<category>/<method>/seed<k>/``:

* ``metrics.json``: every metric of ``adbench.metrics.evaluate`` plus the evaluation resolution, the
  config hash, the git commit and the MLflow run id (so each number traces back to a run);
* ``scores.csv``: one row per test image (``id, label, defect_type, score``) for significance tests;
* ``maps.npz``: the pixel anomaly maps (float16, N x H x W) for plots.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adbench.features import cache_meta, load_split
from adbench.metrics import evaluate as compute_metrics
from adbench.protocol import AnomalyMethod, NullTracker, Prediction
from adbench.registry import method_class
from adbench.tracking import MlflowRun, git_commit


def run_config(config: dict, dataset: str, method: str, seed: int) -> dict[str, Any]:
    """The part of the config that determines a run's numbers (what the config hash covers)."""
    ds = config["datasets"][dataset]
    return {
        "dataset": dataset,
        "dataset_kind": ds["kind"],
        "generator": ds.get("generator"),
        "backbone": config["backbone"]["name"],
        "image_size": config["backbone"]["image_size"],
        "method": method,
        "impl": config["methods"][method]["impl"],
        "params": config["methods"][method].get("params", {}),
        "seed": seed,
    }


def config_hash(cfg: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the canonical JSON of ``cfg``."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_method(config: dict, method: str, seed: int) -> AnomalyMethod:
    entry = config["methods"][method]
    return method_class(entry["impl"])(entry.get("params", {}), seed)


def _tracker(config: dict, dataset: str, category: str, method: str, seed: int, params: dict):
    ml = config.get("mlflow", {})
    if not ml.get("enabled", True):
        return None
    flat = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in params.items()}
    return MlflowRun.create(
        ml["tracking_uri"], ml["experiment"], f"{dataset}/{category}/{method}/seed{seed}", flat,
        tags={"dataset": dataset, "category": category, "method": method},
    )


def fit_run(config: dict, dataset: str, category: str, method: str, seed: int,
            train_path: Path, model_path: Path, run_path: Path, test_path: Path | None = None) -> None:
    """Fit ``method`` on the cached training split; write the model and ``run.json`` (run identity)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = run_config(config, dataset, method, seed)
    params = {**cfg, "category": category, "config_hash": config_hash(cfg), "git_commit": git_commit()}
    run = _tracker(config, dataset, category, method, seed, params)
    model = build_method(config, method, seed)
    train = load_split(train_path)
    kwargs = {}
    monitor_every = config["methods"][method].get("params", {}).get("monitor_every", 0)
    if monitor_every and "monitor" in inspect.signature(model.fit).parameters:
        if test_path is None:
            raise ValueError(f"{method}: monitor_every needs the test split")
        kwargs["monitor"] = load_split(test_path)
    start = time.perf_counter()
    model.fit(train, tracker=run or NullTracker(), **kwargs)
    fit_seconds = time.perf_counter() - start
    model.save(model_path)
    identity = {**params, "fit_seconds": fit_seconds, "mlflow_run_id": run.run_id if run else None,
                "image_size_cache": cache_meta(train_path).get("image_size")}
    Path(run_path).write_text(json.dumps(identity, indent=1, sort_keys=True, default=str))
    if run:
        run.log_metrics({"fit_seconds": fit_seconds})


def _map_images(prediction: Prediction, test, out_dir: Path, count: int = 4) -> list[Path]:
    """PNGs of image | map | mask for the ``count`` highest-scoring anomalous test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    anomalous = np.flatnonzero(test.labels == 1)
    picks = anomalous[np.argsort(-prediction.scores[anomalous])][:count]
    paths = []
    for i in picks:
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
        axes[0].imshow(test.images[i].permute(1, 2, 0).numpy())
        axes[1].imshow(prediction.maps[i], cmap="inferno")
        axes[2].imshow(test.masks[i].numpy(), cmap="gray")
        for ax, title in zip(axes, (test.ids[i], f"score {prediction.scores[i]:.3g}", "mask")):
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        path = out_dir / f"map_{test.ids[i].replace('/', '_')}.png"
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def evaluate_run(config: dict, method: str, test_path: Path, model_path: Path, run_path: Path,
                 out_dir: Path) -> dict[str, Any]:
    """Score the cached test split with a fitted model and write metrics, scores and maps."""
    identity = json.loads(Path(run_path).read_text())
    model = method_class(config["methods"][method]["impl"]).load(model_path)
    test = load_split(test_path)
    start = time.perf_counter()
    prediction = model.predict(test)
    predict_seconds = time.perf_counter() - start
    masks = test.masks.numpy()
    if prediction.maps.shape != masks.shape:
        raise ValueError(f"{method} returned maps of shape {prediction.maps.shape}, expected {masks.shape}")
    metrics = compute_metrics(test.labels, prediction.scores, masks, prediction.maps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **metrics, **prediction.extra,
        "evaluation_resolution": test.image_size, "n_test": len(test), "n_anomalous": int(test.labels.sum()),
        "predict_seconds": predict_seconds, "fit_seconds": identity["fit_seconds"],
        **{k: identity[k] for k in ("dataset", "dataset_kind", "category", "method", "seed", "backbone", "config_hash",
                                    "git_commit", "mlflow_run_id")},
    }
    import pandas as pd

    pd.DataFrame({"id": test.ids, "label": test.labels, "defect_type": test.defect_types,
                  "score": prediction.scores}).to_csv(out_dir / "scores.csv", index=False)
    np.savez_compressed(out_dir / "maps.npz", maps=prediction.maps.astype(np.float16), ids=np.asarray(test.ids))
    metrics_path = out_dir / "metrics.json"
    tmp = metrics_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    if identity.get("mlflow_run_id"):
        run = MlflowRun(config["mlflow"]["tracking_uri"], identity["mlflow_run_id"])
        run.log_metrics({k: v for k, v in {**metrics, **prediction.extra, "predict_seconds": predict_seconds}.items()
                         if isinstance(v, (int, float))})
        run.log_artifacts([tmp.rename(metrics_path), *_map_images(prediction, test, out_dir)])
        run.finish()
    else:
        tmp.rename(metrics_path)
    return record
