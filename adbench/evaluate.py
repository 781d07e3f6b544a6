"""One run of one method on one category, end to end: fit, then evaluate.

``fit_run`` builds the method named in the config, fits it on the cached training split and writes the
model and ``run.json`` (params, config hash, git commit, fit time, per-epoch training losses).
``evaluate_run`` scores the cached test split and writes, under
``results/<dataset>/<category>/<method>/seed<k>/``:

* ``metrics.json``: every metric of ``adbench.metrics.evaluate`` plus the evaluation resolution, the
  config hash and the git commit (the MLflow run is tagged with the same config hash and folder);
* ``scores.csv``: one row per test image (``id, label, defect_type, score``) for significance tests;
* ``maps.npz``: the pixel anomaly maps (float16, N x H x W) for plots; ``map_*.png``: a few of them.

``adbench.tracking.log_runs`` then logs the folder to MLflow.
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
from adbench.protocol import AnomalyMethod, Prediction
from adbench.registry import method_class
from adbench.tracking import RecordingTracker, git_commit


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
    """The method entry's class with its params; methods that train through the frozen backbone on
    augmented images (DRAEM's ``reconstruction: backbone``) get it as ``feature_extractor``."""
    entry = config["methods"][method]
    model = method_class(entry["impl"])(entry.get("params", {}), seed)
    if hasattr(model, "feature_extractor") and entry.get("params", {}).get("reconstruction") == "backbone":
        from adbench.backbone import Backbone

        model.feature_extractor = Backbone(config["backbone"]["name"], Path(config["backbone"]["weights_dir"]))
    return model


def fit_run(config: dict, dataset: str, category: str, method: str, seed: int,
            train_path: Path, model_path: Path, run_path: Path, test_path: Path | None = None) -> None:
    """Fit ``method`` on the cached training split; write the model and ``run.json`` (the run's identity,
    fit time and per-epoch training losses, which ``adbench.tracking`` later logs to MLflow)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = run_config(config, dataset, method, seed)
    params = {**cfg, "category": category, "config_hash": config_hash(cfg), "git_commit": git_commit()}
    tracker = RecordingTracker()
    model = build_method(config, method, seed)
    train = load_split(train_path)
    kwargs = {}
    monitor_every = config["methods"][method].get("params", {}).get("monitor_every", 0)
    if monitor_every and "monitor" in inspect.signature(model.fit).parameters:
        if test_path is None:
            raise ValueError(f"{method}: monitor_every needs the test split")
        kwargs["monitor"] = load_split(test_path)
    start = time.perf_counter()
    model.fit(train, tracker=tracker, **kwargs)
    fit_seconds = time.perf_counter() - start
    model.save(model_path)
    identity = {**params, "fit_seconds": fit_seconds, "image_size": cache_meta(train_path)["image_size"],
                "history": tracker.history}
    Path(run_path).write_text(json.dumps(identity, indent=1, sort_keys=True, default=str))


def _hot(values: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 with the "hot" colour ramp (black, red, yellow, white)."""
    v = np.clip(values, 0, 1)[..., None] * 3.0
    return (np.clip(v - np.array([0.0, 1.0, 2.0]), 0, 1) * 255).astype(np.uint8)


def _map_images(prediction: Prediction, test, out_dir: Path, count: int = 4) -> list[Path]:
    """PNGs of image | map | mask for the ``count`` highest-scoring anomalous test images.

    Maps share one colour scale over the split (min to max of all maps), so panels are comparable.
    """
    from PIL import Image

    low, high = float(prediction.maps.min()), float(prediction.maps.max())
    anomalous = np.flatnonzero(test.labels == 1)
    picks = anomalous[np.argsort(-prediction.scores[anomalous], kind="stable")][:count]
    paths = []
    for i in picks:
        image = test.images[i].permute(1, 2, 0).numpy()
        heat = _hot((prediction.maps[i] - low) / (high - low + 1e-12))
        mask = np.repeat(test.masks[i].numpy()[..., None] * 255, 3, axis=2).astype(np.uint8)
        path = out_dir / f"map_{test.ids[i].replace('/', '_')}.png"
        Image.fromarray(np.concatenate([image, heat, mask], axis=1)).save(path)
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
    if not (np.isfinite(prediction.scores).all() and np.isfinite(prediction.maps).all()):
        raise ValueError(f"{method} ({model_path}) produced non-finite scores or maps on {test_path}; "
                         f"its training losses are in {run_path} (history)")
    metrics = compute_metrics(test.labels, prediction.scores, masks, prediction.maps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **metrics, **prediction.extra,
        "evaluation_resolution": test.image_size, "n_test": len(test), "n_anomalous": int(test.labels.sum()),
        "predict_seconds": predict_seconds, "fit_seconds": identity["fit_seconds"],
        **{k: identity[k] for k in ("dataset", "dataset_kind", "category", "method", "seed", "backbone",
                                    "config_hash", "git_commit")},
    }
    import pandas as pd

    pd.DataFrame({"id": test.ids, "label": test.labels, "defect_type": test.defect_types,
                  "score": prediction.scores}).to_csv(out_dir / "scores.csv", index=False)
    np.savez_compressed(out_dir / "maps.npz", maps=prediction.maps.astype(np.float16), ids=np.asarray(test.ids))
    _map_images(prediction, test, out_dir)
    metrics_path = out_dir / "metrics.json"
    tmp = metrics_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.rename(metrics_path)  # last: its presence means the run folder is complete
    return record
