"""MLflow logging for the workflow's runs.

One MLflow run per (dataset, category, method, seed): ``fit`` opens it (params, per-epoch training
losses), ``evaluate`` reopens it by id (metrics, ``metrics.json``, a few anomaly-map images).  Snakemake
runs jobs in parallel and SQLite answers "database is locked" under concurrent writers, so every write
holds an exclusive ``fcntl`` lock on a file beside the database.
"""
from __future__ import annotations

import fcntl
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


def _db_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


@contextmanager
def _locked(tracking_uri: str) -> Iterator[Any]:
    """Import mlflow, point it at ``tracking_uri`` and hold the store's write lock."""
    import mlflow

    db = _db_path(tracking_uri)
    lock_path = (db.parent if db else Path(".")) / ".mlflow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            mlflow.set_tracking_uri(tracking_uri)
            yield mlflow
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MlflowRun:
    """A handle on one MLflow run that can be reopened from another process by ``run_id``.

    Implements the ``Tracker`` protocol (``log_metrics``), so methods log training curves through it.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    @classmethod
    def create(cls, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any],
               tags: dict[str, str] | None = None) -> "MlflowRun":
        with _locked(tracking_uri) as mlflow:
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                db = _db_path(tracking_uri)
                artifacts = (db.parent.resolve() / "mlflow-artifacts").as_uri() if db else None
                exp_id = client.create_experiment(experiment, artifact_location=artifacts)
            else:
                exp_id = exp.experiment_id
            run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
            for key, value in params.items():
                client.log_param(run.info.run_id, key, value)
        return cls(tracking_uri, run.info.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        with _locked(self.tracking_uri) as mlflow:
            client = mlflow.MlflowClient()
            for key, value in metrics.items():
                client.log_metric(self.run_id, key, float(value), step=step or 0)

    def log_artifacts(self, paths: list[Path]) -> None:
        with _locked(self.tracking_uri) as mlflow:
            client = mlflow.MlflowClient()
            for path in paths:
                client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        with _locked(self.tracking_uri) as mlflow:
            mlflow.MlflowClient().set_terminated(self.run_id, status=status)
