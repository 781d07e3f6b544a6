"""One run of one method on one category, end to end: fit, then evaluate.

``fit_run`` builds the method named in the config, fits it on the cached training split and writes the
model and ``run.json`` (params, config hash, git commit, fit time, per-epoch training losses).
``evaluate_run`` scores the cached test split and writes, under
``results/<dataset>/<category>/<method>/seed<k>/``:

* ``metrics.json``: every metric of ``adbench.evaluation.metrics.evaluate`` (pooled over the test split: the
  MVTec-comparable numbers), per defect type and kind ``adbench.evaluation.metrics.per_defect`` (``defect_types``,
  ``defect_kinds``), the evaluation resolution, the
  config hash and the git commit (the MLflow run is tagged with the same config hash and folder);
* ``scores.csv``: one row per test image (``id, label, defect_type, score``) for significance tests;
* ``maps.npz``: the pixel anomaly maps (N x H x W, float16 relative to their maximum: ``adbench.methods.runs.write_maps``) for plots; ``map_*.png``: a few of them.

``metrics.json`` also records the SHA-256 of ``scores.csv`` and ``maps.npz`` (``scores_sha256``,
``maps_sha256``), which every reader checks (``adbench.evaluation.integrity.read_metrics``).

Degenerate outputs are errors, not numbers: a method whose image scores or pixel maps are constant over
the test split (``adbench.protocol.constant_output``), or whose ``fit`` finds its embedding collapsed,
stops the job with a ``CollapseError`` naming the method's config name, the category, the files and the
method's own ``collapse_hint``; nothing is written for it.

``adbench.evaluation.tracking.log_runs`` then logs the folder to MLflow.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adbench.features.backbone import BACKBONES, Backbone
from adbench.methods.determinism import kernel_provenance
from adbench.features.cache import cache_meta, load_split
from adbench.evaluation.integrity import file_digests, write_scores
from adbench.data.datasets import defect_kinds
from adbench.evaluation.metrics import evaluate as compute_metrics
from adbench.evaluation.metrics import per_defect
from adbench.protocol import AnomalyMethod, CollapseError, Prediction, constant_output, device_name, resolve_device
from adbench.methods.registry import method_class
from adbench.methods.runs import config_hash, write_atomic, write_maps
from adbench.evaluation.tracking import RecordingTracker, git_commit


def build_method(cfg: dict[str, Any], weights_dir: str | Path) -> AnomalyMethod:
    """The method of run config ``cfg`` (``run_config``) with its params and seed; a method whose
    ``inputs`` include ``backbone`` (it trains through the frozen network on images the cache cannot hold,
    e.g. DRAEM's ``reconstruction: backbone``) gets it as ``feature_extractor``."""
    model = method_class(cfg["impl"])(cfg["params"], cfg["seed"])
    if "backbone" in model.inputs(model.params):
        model.feature_extractor = Backbone(cfg["backbone"], Path(weights_dir))
    return model


def fit_run(cfg: dict[str, Any], category: str, train_path: Path, model_path: Path, run_path: Path,
            test_path: Path | None = None, weights_dir: str | Path = "results/weights",
            device: str = "cpu") -> None:
    """Fit the method of run config ``cfg`` on the cached training split; write the model and ``run.json``
    (the run's identity, the kernels and the device it ran on, fit time and per-epoch training losses,
    which ``adbench.evaluation.tracking`` later logs to MLflow).

    ``device``: the config's ``device`` setting (auto, cpu, cuda, cuda:N; ``resolve_device``).  It is
    recorded (``device``, ``device_name``) but is not part of ``cfg`` or its hash: a GPU run is another
    draw of the same configuration, not another configuration.
    """
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    run_on = resolve_device(device)
    params = {**cfg, "category": category, "config_hash": config_hash(cfg), "git_commit": git_commit(),
              **kernel_provenance(), "device": str(run_on), "device_name": device_name(run_on)}
    print(f"device: {run_on} (setting {device!r})", flush=True)
    tracker = RecordingTracker()
    model = build_method(cfg, weights_dir).to(run_on)
    train = load_split(train_path)
    kwargs = {}
    if model.monitors_test and model.monitor_interval(model.params):
        if test_path is None:
            raise ValueError(f"{cfg['method']}: monitoring the test split while training needs it")
        kwargs["monitor"] = load_split(test_path)
    start = time.perf_counter()
    try:
        model.fit(train, tracker=tracker, **kwargs)
    except CollapseError as err:  # the method knows what collapsed, the runner where
        raise err.located(cfg["method"], cfg["impl"], category, {"training split": train_path}) from err
    fit_seconds = time.perf_counter() - start
    model.save(model_path)
    identity = {**params, "fit_seconds": fit_seconds, "image_size": cache_meta(train_path)["image_size"],
                "history": tracker.history}
    write_atomic(run_path, json.dumps(identity, indent=1, sort_keys=True, default=str))


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


def check_not_degenerate(prediction: Prediction, model: AnomalyMethod, identity: dict[str, Any],
                         files: dict[str, Any]) -> None:
    """Refuse a prediction whose image scores (N,) or pixel maps (N, H, W) are constant over the test split
    (``constant_output``): it would be reported as an AUROC of exactly 0.5.

    ``identity``: the run's run.json (``method``, ``impl``, ``category``); ``files``: ``{role: path}`` for
    the message.  Raises ``CollapseError`` with ``model.collapse_hint`` (each method states its own).
    """
    found = [f"its {what} are constant over the {len(prediction.scores)} test images (min {values.min():.6g}, "
             f"max {values.max():.6g})"
             for what, values in (("image scores", prediction.scores), ("pixel maps", prediction.maps))
             if constant_output(values)]
    if found:
        method = identity.get("method", model.name)
        raise CollapseError(" and ".join(found), model.collapse_hint, method, identity.get("impl", model.name),
                            identity.get("category"), files)


def evaluate_run(test_path: Path, model_path: Path, run_path: Path, out_dir: Path,
                 device: str = "cpu") -> dict[str, Any]:
    """Score the cached test split with the model fitted by ``fit_run``, on ``device`` (the config's
    ``device`` setting; recorded in metrics.json as ``device`` and ``device_name``); write metrics, scores
    and maps."""
    identity = json.loads(Path(run_path).read_text())
    method = identity["method"]
    run_on = resolve_device(device)
    model = method_class(identity["impl"]).load(model_path, device=run_on)
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
    check_not_degenerate(prediction, model, identity, {"model": model_path, "test split": test_path,
                                                       "training losses": f"{run_path} (history)"})
    metrics = compute_metrics(test.labels, prediction.scores, masks, prediction.maps)
    by_defect = per_defect(test.labels, test.defect_types, prediction.scores, masks, prediction.maps,
                           defect_kinds(identity["dataset_kind"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **metrics, **prediction.extra, **by_defect,
        "evaluation_resolution": test.image_size, "n_test": len(test), "n_anomalous": int(test.labels.sum()),
        "predict_seconds": predict_seconds, "fit_seconds": identity["fit_seconds"],
        "device": str(run_on), "device_name": device_name(run_on),
        **BACKBONES[identity["backbone"]].record(),
        **{k: identity[k] for k in ("dataset", "dataset_kind", "category", "method", "impl", "seed", "backbone",
                                    "config_hash", "git_commit", "cpu_isa", "cpu_capability", "preprocess")},
    }
    write_scores(out_dir / "scores.csv", test.ids, test.labels.tolist(), test.defect_types, prediction.scores)
    write_maps(out_dir / "maps.npz", prediction.maps, test.ids)
    record.update(file_digests(out_dir))  # what every reader checks (adbench.evaluation.integrity)
    _map_images(prediction, test, out_dir)
    write_atomic(out_dir / "metrics.json", json.dumps(record, indent=1, sort_keys=True))  # last: its presence
    # means the run folder is complete
    return record
