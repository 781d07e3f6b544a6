"""MLflow logging of the workflow's runs, one category at a time.

``fit`` and ``evaluate`` write everything to files in the run folder (``run.json`` with the params and
the per-epoch training losses, ``metrics.json``, ``map_*.png``); the ``track_category`` rule then logs
every run of a category in one process.  Opening MLflow's SQLite store costs seconds per process (schema
checks), so this keeps it out of the 100+ fit/evaluate jobs, and SQLite's "database is locked" under
concurrent writers is avoided by an exclusive ``fcntl`` lock held while logging.

Each MLflow run carries the tags ``run_key`` (``<dataset>/<category>/<method>/seed<k>``) and
``metrics_sha`` (SHA-256 of its metrics.json): logging the same files twice reuses the run, while a rerun
that changed the numbers gets a new MLflow run, so history is kept.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def git_commit() -> str:
    """The checkout's HEAD commit (with ``-dirty`` when there are uncommitted changes), or ``unknown``."""
    repo = Path(__file__).resolve().parent.parent  # the code's checkout, whatever the working directory
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.strip() + ("-dirty" if dirty.strip() else "")


class RecordingTracker:
    """A ``Tracker`` that keeps what a method logs during ``fit``: ``history`` = [(step, {name: value})]."""

    def __init__(self) -> None:
        self.history: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.history.append((step, {k: float(v) for k, v in metrics.items()}))


def _db_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


@contextmanager
def _store(tracking_uri: str) -> Iterator[Any]:
    """An ``MlflowClient`` on ``tracking_uri`` while holding the store's write lock."""
    import mlflow

    db = _db_path(tracking_uri)
    lock_path = (db.parent if db else Path(".")) / ".mlflow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield mlflow.MlflowClient(tracking_uri=tracking_uri)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = _db_path(tracking_uri)
    artifacts = (db.parent.resolve() / "mlflow-artifacts").as_uri() if db else None
    return client.create_experiment(name, artifact_location=artifacts)


def _flat(params: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v) for k, v in params.items()}


def log_runs(run_dirs: list[Path], tracking_uri: str, experiment: str) -> dict[str, str]:
    """Log each run folder (``run.json`` + ``metrics.json`` + ``map_*.png``) as one MLflow run.

    Returns ``{run_key: mlflow_run_id}``.
    """
    from mlflow.entities import Metric, Param, RunTag

    ids = {}
    with _store(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        for folder in map(Path, run_dirs):
            identity = json.loads((folder / "run.json").read_text())
            metrics_bytes = (folder / "metrics.json").read_bytes()
            metrics = json.loads(metrics_bytes)
            key = f"{identity['dataset']}/{identity['category']}/{identity['method']}/seed{identity['seed']}"
            sha = hashlib.sha256(metrics_bytes).hexdigest()
            found = client.search_runs([exp_id], f"tags.run_key = '{key}' and tags.metrics_sha = '{sha}'")
            if found:
                ids[key] = found[0].info.run_id
                continue
            run = client.create_run(exp_id, run_name=key, tags={"run_key": key, "metrics_sha": sha,
                                                                 "run_dir": str(folder)})
            run_id = run.info.run_id
            params = {k: v for k, v in identity.items() if k != "history"}
            numbers = [Metric(k, float(v), 0, 0) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
            curves = [Metric(name, value, 0, step or 0) for step, values in identity.get("history", [])
                      for name, value in values.items()]
            client.log_batch(run_id, metrics=numbers + curves,
                             params=[Param(k, v) for k, v in _flat(params).items()],
                             tags=[RunTag("config_hash", str(identity["config_hash"]))])
            client.log_artifact(run_id, str(folder / "metrics.json"))
            for png in sorted(folder.glob("map_*.png")):
                client.log_artifact(run_id, str(png), artifact_path="maps")
            client.set_terminated(run_id, status="FINISHED")
            ids[key] = run_id
    return ids
