"""MLflow logging of the workflow's runs, one category at a time.

``fit`` and ``evaluate`` write everything to files in the run folder (``run.json`` with the params and
the per-epoch training losses, ``metrics.json``, ``map_*.png``); the ``track_category`` rule then logs
every run of a category in one process.  Opening MLflow's SQLite store costs seconds per process (schema
checks), so this keeps it out of the 100+ fit/evaluate jobs, and SQLite's "database is locked" under
concurrent writers is avoided by an exclusive ``fcntl`` lock held while opening the store (first-time schema
and experiment creation included) and logging; a store call that still meets a locked database (a reader
such as ``mlflow ui`` holding it past SQLite's busy timeout) is retried with a bounded backoff.

Each MLflow run carries the tags ``run_key`` (``<dataset>/<category>/<method>/seed<k>``) and
``metrics_sha`` (SHA-256 of its metrics.json): logging the same files twice reuses the run, while a rerun
that changed the numbers gets a new MLflow run, so history is kept.  Only a FINISHED run counts as logged,
and a run is marked FINISHED last, after its metrics, params and artifacts: a run that a killed process
left RUNNING is marked KILLED by the next ``log_runs`` (which holds the lock, so no live writer owns it) and
logged again, and an error while logging marks the run FAILED before it propagates.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

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


T = TypeVar("T")
LOCKED_RETRIES = 6  # attempts after the first, each after SQLite's own busy timeout (20 s in MLflow 3)
LOCKED_BACKOFF_S = 0.5  # first pause; doubles each attempt, capped at 8 s, with jitter


def _is_locked(err: BaseException) -> bool:
    """True for SQLite's "database is locked" / "database table is locked", however MLflow wraps it."""
    for _ in range(8):  # the error and the ones it was raised from
        if err is None:
            return False
        if re.search(r"database (table )?is locked", str(err), flags=re.IGNORECASE):
            return True
        err = err.__cause__ or err.__context__
    return False


def _retry(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, again after a pause while it fails because the SQLite database is locked.

    Each store call is one transaction that SQLite rolls back when it cannot get its lock, so repeating it
    is safe (``log_batch`` skips metrics already logged; the same param value may be logged twice).
    """
    pause = LOCKED_BACKOFF_S
    for attempt in range(LOCKED_RETRIES + 1):
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if attempt == LOCKED_RETRIES or not _is_locked(err):
                raise
            wait = pause * random.uniform(1.0, 1.5)
            print(f"adbench.tracking: the database was locked ({getattr(call, '__name__', call)}); "
                  f"retry {attempt + 1}/{LOCKED_RETRIES} in {wait:.1f} s", file=sys.stderr)
            time.sleep(wait)
            pause = min(2 * pause, 8.0)
    raise AssertionError("unreachable")


def _lock_path(tracking_uri: str) -> Path:
    db = _db_path(tracking_uri)
    return (db.parent if db else Path(".")) / ".mlflow.lock"


@contextmanager
def _store(tracking_uri: str) -> Iterator[Any]:
    """An ``MlflowClient`` on ``tracking_uri`` while holding the store's write lock.

    The client is created under the lock: on a new store it creates the schema and the default
    experiment, which concurrent processes must not do at the same time.
    """
    import mlflow

    lock_path = _lock_path(tracking_uri)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield _retry(mlflow.MlflowClient, tracking_uri=tracking_uri)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _artifact_location(tracking_uri: str, name: str) -> str | None:
    """``<store folder>/mlflow-artifacts/<experiment>`` for a SQLite store (``None``: MLflow's default).

    One folder per experiment; a name that is not a plain file name gets a hash so that distinct names
    never share a folder.
    """
    db = _db_path(tracking_uri)
    if db is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    if folder != name:
        folder += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return (db.parent.resolve() / "mlflow-artifacts" / folder).as_uri()


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created (with its own artifact folder) when missing, restored when
    deleted (MLflow cannot log runs into a deleted experiment)."""
    from mlflow.exceptions import MlflowException

    exp = _retry(client.get_experiment_by_name, name)
    if exp is None:
        try:
            return _retry(client.create_experiment, name, artifact_location=_artifact_location(tracking_uri, name))
        except MlflowException as err:  # created meanwhile by a writer that does not take the lock
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = _retry(client.get_experiment_by_name, name)
    if exp.lifecycle_stage == "deleted":
        print(f"adbench.tracking: restoring the deleted MLflow experiment {name!r} to log into it",
              file=sys.stderr)
        _retry(client.restore_experiment, exp.experiment_id)
    return exp.experiment_id


def _flat(params: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v) for k, v in params.items()}


def _search_all(client: Any, exp_id: str, query: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = _retry(client.search_runs, [exp_id], query, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _end_interrupted(client: Any, exp_id: str, key: str) -> list[str]:
    """Mark KILLED the runs of ``key`` still RUNNING: a ``log_runs`` killed while logging them left them so
    (a live one cannot exist, since the caller holds the store's lock).  Returns their ids."""
    stale = _search_all(client, exp_id, f"tags.run_key = '{key}' and attributes.status = 'RUNNING'")
    for run in stale:
        _retry(client.set_tag, run.info.run_id, "mlflow.note.content",
               "Interrupted while being logged (incomplete); logged again as a new run.")
        _retry(client.set_terminated, run.info.run_id, status="KILLED")
    return [run.info.run_id for run in stale]


def _log_run(client: Any, exp_id: str, folder: Path) -> tuple[str, str]:
    """Log one run folder unless a FINISHED run with the same key and metrics exists; ``(run_key, run_id)``."""
    from mlflow.entities import Metric, Param, RunTag

    identity = json.loads((folder / "run.json").read_text())
    metrics_bytes = (folder / "metrics.json").read_bytes()
    metrics = json.loads(metrics_bytes)
    key = f"{identity['dataset']}/{identity['category']}/{identity['method']}/seed{identity['seed']}"
    sha = hashlib.sha256(metrics_bytes).hexdigest()
    _end_interrupted(client, exp_id, key)
    found = _retry(client.search_runs, [exp_id], f"tags.run_key = '{key}' and tags.metrics_sha = '{sha}' "
                   "and attributes.status = 'FINISHED'", max_results=1)
    if found:
        return key, found[0].info.run_id
    run = _retry(client.create_run, exp_id, run_name=key, tags={"run_key": key, "metrics_sha": sha,
                                                                  "run_dir": str(folder)})
    run_id = run.info.run_id
    try:
        params = {k: v for k, v in identity.items() if k != "history"}
        numbers = [Metric(k, float(v), 0, 0) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        curves = [Metric(name, value, 0, step or 0) for step, values in identity.get("history", [])
                  for name, value in values.items()]
        _retry(client.log_batch, run_id, metrics=numbers + curves,
               params=[Param(k, v) for k, v in _flat(params).items()],
               tags=[RunTag("config_hash", str(identity["config_hash"]))])
        _retry(client.log_artifact, run_id, str(folder / "metrics.json"))
        for png in sorted(folder.glob("map_*.png")):
            _retry(client.log_artifact, run_id, str(png), artifact_path="maps")
        _retry(client.set_terminated, run_id, status="FINISHED")  # last: FINISHED means complete
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            _retry(client.set_terminated, run_id, status=status)
        except Exception as mark_err:  # keep the original error; the next log_runs ignores this run anyway
            err.add_note(f"(marking MLflow run {run_id} {status} also failed: {mark_err!r})")
        raise
    return key, run_id


def log_runs(run_dirs: list[Path], tracking_uri: str, experiment: str) -> dict[str, str]:
    """Log each run folder (``run.json`` + ``metrics.json`` + ``map_*.png``) as one MLflow run.

    Returns ``{run_key: mlflow_run_id}``: the FINISHED run with these exact metrics, logged now or before.
    """
    ids = {}
    with _store(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        for folder in map(Path, run_dirs):
            key, run_id = _log_run(client, exp_id, folder)
            ids[key] = run_id
    return ids
