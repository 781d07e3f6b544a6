"""MLflow logging of the workflow's runs, one category at a time, and one parent run per ``all_tables``.

``fit`` and ``evaluate`` write everything to files in the run folder (``run.json`` with the params and
the per-epoch training losses, ``metrics.json``, ``map_*.png``); the ``track_category`` rule then logs
every run of a category in one process.  Opening MLflow's SQLite store costs seconds per process (schema
checks), so this keeps it out of the 100+ fit/evaluate jobs, and SQLite's "database is locked" under
concurrent writers is avoided by an exclusive ``fcntl`` lock held while opening the store (first-time schema
and experiment creation included) and logging; a store call that still meets a locked database (a reader
such as ``mlflow ui`` holding it past SQLite's busy timeout) is retried with a bounded backoff.

Cell runs (``log_runs``, one per run folder) carry the tags the MLflow UI filters and compares by:
``kind`` = ``cell``, ``run_key`` (``<dataset>/<category>/<method>/seed<k>``), ``dataset``, ``category``,
``method``, ``impl``, ``variant`` (FOD's ``params.variant``, ``-`` for other methods), ``seed``,
``config_hash``, ``git_commit``, ``metrics_sha`` (SHA-256 of metrics.json), ``run_dir`` and ``current``.
Logging the same files twice reuses the run, while a rerun that changed the numbers gets a new MLflow run,
so history is kept; of the runs of one ``run_key``, the one logged or reused last is ``current=true`` and
every other is ``current=false`` with ``superseded_by=<run id>``.  In the UI, ``tags.current = 'true'``
shows the latest numbers of every cell (and the latest parent run of each name, its cells nested under it).

Crash safety.  A new store gets its name only once its schema is complete (``_create_store``).  Only a
FINISHED run counts as logged, and a run is marked FINISHED after its metrics, params and artifacts: a
run that a killed process left RUNNING is marked KILLED by the next call (which holds the lock, so no live
writer owns it) and logged again, and an error while logging marks the run FAILED
before it propagates.  ``current`` moves only after FINISHED, in this order: the new run is marked current,
then the others un-marked; a crash in between leaves two current runs of a cell (never none), which the
next ``log_runs`` of that cell repairs, since it reuses the FINISHED run and finishes the move.

``log_parent`` logs one parent run per ``all_tables`` execution (tables and figures as artifacts) and
nests the cell runs it was made from under it (their ``mlflow.parentRunId`` tag), with the same discipline.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, TypeVar

from adbench import ROOT
from adbench.evaluation.integrity import read_metrics

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def git_commit() -> str:
    """The checkout's HEAD commit (with ``-dirty`` when there are uncommitted changes), or ``unknown``."""
    repo = ROOT  # the code's checkout, whatever the working directory
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


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def store_problem(tracking_uri: str) -> str | None:
    """Why the SQLite store of ``tracking_uri`` cannot be used, with the fix; ``None`` when it can (or does
    not exist yet, or is not a file store).  Read before any job starts (workflow/rules/common.smk), so a
    broken store turns tracking off with this message instead of stopping the tables with SQLAlchemy's."""
    db = _db_path(tracking_uri)
    if db is None or not db.exists() or db.stat().st_size == 0:
        return None
    with open(db, "rb") as handle:
        head = handle.read(len(SQLITE_HEADER))
    if head == SQLITE_HEADER:
        return None
    return (f"MLflow tracking is off for this run: {db} (mlflow.tracking_uri) is not an SQLite database (it starts "
            f"with {head!r}); the tables, figures and report are written without it.  To log the runs, move the "
            f"file aside (mv {db} {db}.broken) and run snakemake again, or set mlflow.tracking_uri to another store")


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
            print(f"adbench.evaluation.tracking: the database was locked ({getattr(call, '__name__', call)}); "
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
            _create_store(tracking_uri)
            yield _retry(mlflow.MlflowClient, tracking_uri=tracking_uri)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_store(tracking_uri: str) -> None:
    """Make a new SQLite store whole before it gets its name (the caller holds the store's lock).

    MLflow creates a store's schema in dozens of migrations, each committed on its own, so a process killed
    among them (a job killed with the workflow) left a store at an intermediate schema that every later run
    refused ("Detected out-of-date database schema").  Here the schema is made in ``.<name>.creating`` next
    to the store, checked at MLflow's latest revision, and renamed into place, so the store's path holds a
    complete schema or nothing; a partial file of a killed creation is replaced.  MLflow's own steps for a
    fresh database (``mlflow.store.db.utils``, MLflow 3), on an engine of this function's own that is closed
    before the rename.
    """
    db = _db_path(tracking_uri)
    if db is None or db.exists():
        return
    from mlflow.store.db import utils

    partial = db.with_name(f".{db.name}.creating")
    for leftover in (partial, partial.with_name(partial.name + "-journal")):
        leftover.unlink(missing_ok=True)
    engine = utils.create_sqlalchemy_engine_with_retry(f"sqlite:///{partial}")
    try:
        utils._initialize_tables(engine)
        utils._verify_schema(engine)
    finally:
        engine.dispose()
    os.replace(partial, db)


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
        print(f"adbench.evaluation.tracking: restoring the deleted MLflow experiment {name!r} to log into it",
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


def _series(client: Any, exp_id: str, query: str) -> list[Any]:
    """Every run matching ``query`` (one cell's runs, or one name's parent runs).  Those still RUNNING are
    marked KILLED: a call killed while logging them left them so (a live writer cannot exist, since the
    caller holds the store's lock); the returned entries keep the status they were found with."""
    runs = _search_all(client, exp_id, query)
    for run in runs:
        if run.info.status == "RUNNING":
            _retry(client.set_tag, run.info.run_id, "mlflow.note.content",
                   "Interrupted while being logged (incomplete); logged again as a new run.")
            _retry(client.set_terminated, run.info.run_id, status="KILLED")
    return runs


@contextmanager
def _finishing(client: Any, run_id: str) -> Iterator[None]:
    """Mark ``run_id`` FINISHED after the body has logged everything (FINISHED means complete), or FAILED
    (KILLED on Ctrl-C) when the body raises, before the error propagates."""
    try:
        yield
        _retry(client.set_terminated, run_id, status="FINISHED")
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            _retry(client.set_terminated, run_id, status=status)
        except Exception as mark_err:  # keep the original error; the next call ignores this run anyway
            err.add_note(f"(marking MLflow run {run_id} {status} also failed: {mark_err!r})")
        raise


def _make_current(client: Any, run_id: str, series: list[Any]) -> None:
    """Tag the FINISHED run ``run_id`` ``current=true``, then every other run of ``series`` (the runs of
    its cell, or the parent runs of its name, as found before) ``current=false`` + ``superseded_by=run_id``,
    writing only what differs.  In this order a crash in between leaves two current runs, never none, and
    the next call (which reuses ``run_id``) finishes the move."""
    from mlflow.entities import RunTag

    tags = next((run.data.tags for run in series if run.info.run_id == run_id), {})
    if tags.get("current") != "true":
        _retry(client.set_tag, run_id, "current", "true")
    if "superseded_by" in tags:  # current again (e.g. a rerun back to its numbers)
        _retry(client.delete_tag, run_id, "superseded_by")
    for run in series:
        if run.info.run_id != run_id and run.data.tags.get("current") != "false":
            _retry(client.log_batch, run.info.run_id,
                   tags=[RunTag("current", "false"), RunTag("superseded_by", run_id)])


def _numbers(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of ``record`` (a metrics.json), nested groups as ``<group>.<name>.<metric>`` (e.g.
    ``defect_types.colour.pixel_auroc``): MLflow metrics compare across runs."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _cell_tags(folder: Path, identity: dict[str, Any], metrics: dict[str, Any], sha: str) -> dict[str, str]:
    """The tags of a cell run, from its run.json (``identity``) and metrics.json (``metrics``)."""
    variant = (identity.get("params") or {}).get("variant", "-")
    return {
        "kind": "cell",
        "run_key": f"{identity['dataset']}/{identity['category']}/{identity['method']}/seed{identity['seed']}",
        **{k: str(identity[k]) for k in ("dataset", "category", "method", "seed", "config_hash")},
        "impl": str(identity.get("impl", identity["method"])),
        "variant": str(variant),
        "git_commit": str(metrics.get("git_commit", identity.get("git_commit", "unknown"))),
        "metrics_sha": sha,
        "run_dir": str(folder),
    }


def _log_run(client: Any, exp_id: str, folder: Path) -> tuple[str, str]:
    """Log one run folder unless a FINISHED run with the same key and metrics exists, and make that run its
    cell's current one; ``(run_key, run_id)``."""
    from mlflow.entities import Metric, Param, RunTag

    identity = json.loads((folder / "run.json").read_text())
    metrics_bytes = (folder / "metrics.json").read_bytes()
    metrics = json.loads(metrics_bytes)
    tags = _cell_tags(folder, identity, metrics, hashlib.sha256(metrics_bytes).hexdigest())
    key = tags["run_key"]
    series = _series(client, exp_id, f"tags.run_key = '{key}'")
    same = [run for run in series
            if run.info.status == "FINISHED" and run.data.tags.get("metrics_sha") == tags["metrics_sha"]]
    if same:
        run = max(same, key=lambda r: (r.data.tags.get("current") == "true", r.info.start_time))
        run_id = run.info.run_id
        missing = [RunTag(k, v) for k, v in tags.items() if k not in run.data.tags]  # logged by an older version
        if missing:
            _retry(client.log_batch, run_id, tags=missing)
    else:
        run_id = _retry(client.create_run, exp_id, run_name=key, tags={**tags, "current": "false"}).info.run_id
        with _finishing(client, run_id):
            params = {k: v for k, v in identity.items() if k != "history"}
            numbers = [Metric(k, v, 0, 0) for k, v in _numbers(metrics).items()]
            curves = [Metric(name, value, 0, step or 0) for step, values in identity.get("history", [])
                      for name, value in values.items()]
            _retry(client.log_batch, run_id, metrics=numbers + curves,
                   params=[Param(k, v) for k, v in _flat(params).items()])
            _retry(client.log_artifact, run_id, str(folder / "metrics.json"))
            for png in sorted(folder.glob("map_*.png")):
                _retry(client.log_artifact, run_id, str(png), artifact_path="maps")
    _make_current(client, run_id, series)
    return key, run_id


def log_runs(run_dirs: list[Path], tracking_uri: str, experiment: str) -> dict[str, str]:
    """Log each run folder (``run.json`` + ``metrics.json`` + ``map_*.png``) as one MLflow run.

    Returns ``{run_key: mlflow_run_id}``: the FINISHED run with these exact metrics, logged now or before,
    now its cell's ``current`` run.

    Every folder is checked before the store is opened (``adbench.evaluation.integrity.read_metrics``, as the tables
    do): one whose scores.csv or maps.npz differs from the digests its metrics.json records, or whose
    image AUROC is not that of its scores.csv, raises ``TamperedRunError`` naming it, and nothing is logged.
    """
    read_metrics([Path(folder) / "metrics.json" for folder in run_dirs])
    ids = {}
    with _store(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        for folder in map(Path, run_dirs):
            key, run_id = _log_run(client, exp_id, folder)
            ids[key] = run_id
    return ids


CELL_LIST = "cell_runs.json"  # the parent run's artifact {run_key: run_id}: which cells it was made from
PARENT_TAGS = {"kind", "current", "superseded_by", "artifacts_sha", "cells_sha"}  # set by log_parent


def _artifact_files(artifacts: dict[str, str | Path]) -> dict[str, Path]:
    """``{artifact path: local file}`` from ``log_parent``'s ``artifacts``: a folder is expanded to every
    file below it, at ``<artifact path>/<its path below the folder>``."""
    files: dict[str, Path] = {}
    for name, local in artifacts.items():
        where = PurePosixPath(name)
        if where.is_absolute() or not where.parts or ".." in where.parts:
            raise ValueError(f"log_parent: artifact path {name!r} (for {local}) must be a relative path inside "
                             "the run, without '..', e.g. 'tables/table2.csv' or 'figures'")
        local = Path(local)
        if local.is_dir():
            found = {str(where / f.relative_to(local).as_posix()): f for f in sorted(local.rglob("*")) if f.is_file()}
        elif local.is_file():
            found = {str(where): local}
        else:
            raise FileNotFoundError(f"log_parent: artifact {name!r}: {local} does not exist; write it first, or "
                                    "leave it out of artifacts")
        twice = sorted(files.keys() & found.keys() | found.keys() & {CELL_LIST})
        if twice:
            raise ValueError(f"log_parent: artifact paths {twice} given twice (again from {local}; "
                             f"{CELL_LIST} is log_parent's own): give each file one artifact path")
        files.update(found)
    return files


def _files_sha(files: dict[str, Path]) -> str:
    """SHA-256 over the sorted (artifact path, SHA-256 of the file's bytes) pairs."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\t{hashlib.sha256(files[name].read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def _cell_runs(client: Any, exp_id: str, cell_run_ids: dict[str, str]) -> list[Any]:
    """The runs of ``cell_run_ids``, each checked to be a FINISHED cell run of its key in experiment
    ``exp_id``."""
    from mlflow.exceptions import MlflowException

    runs = []
    for key, run_id in sorted(cell_run_ids.items()):
        try:
            run = _retry(client.get_run, run_id)
        except MlflowException as err:
            raise ValueError(f"log_parent: cell {key!r}: no MLflow run {run_id!r} ({err.error_code}); pass the "
                             "ids that log_runs returned (the categories' mlflow.json)") from None
        found = (run.info.experiment_id, run.data.tags.get("run_key"), run.info.status)
        if found != (exp_id, key, "FINISHED"):
            raise ValueError(f"log_parent: cell {key!r}: MLflow run {run_id} has (experiment id, run_key, status) "
                             f"= {found}, expected {(exp_id, key, 'FINISHED')}; pass the ids that log_runs "
                             "returned for this experiment (the categories' mlflow.json)")
        runs.append(run)
    return runs


def _nest(client: Any, parent_id: str, cells: list[Any]) -> None:
    """Set ``mlflow.parentRunId`` (the tag the MLflow UI nests runs by) on every cell run not yet under
    ``parent_id``; a cell has one parent, so one reused by a later parent moves under that one."""
    for run in cells:
        if run.data.tags.get("mlflow.parentRunId") != parent_id:
            _retry(client.set_tag, run.info.run_id, "mlflow.parentRunId", parent_id)


def log_parent(tracking_uri: str, experiment: str, cell_run_ids: dict[str, str],
               artifacts: dict[str, str | Path], name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Log one ``all_tables`` execution as a parent run with every cell run nested under it; its run id.

    ``cell_run_ids``: ``{run_key: run_id}`` as ``log_runs`` returned it (the union of the categories'
    ``mlflow.json``); each must be a FINISHED cell run of that key in ``experiment``.
    ``artifacts``: ``{artifact path: local file or folder}``; a file is logged at its artifact path
    (``{"tables/table2.csv": results/tables/table2.csv}``), a folder's files at the artifact path joined
    with their path below the folder (``{"figures": results/figures}`` gives ``figures/heatmap.png``, ...).
    The run also gets ``cell_runs.json`` (``cell_run_ids``), params ``params`` (dicts and lists as JSON)
    and the tags ``tags`` plus ``kind=parent``, ``artifacts_sha`` (SHA-256 over the sorted artifact paths
    and their files' SHA-256), ``cells_sha`` (SHA-256 of ``cell_run_ids``) and ``current``.

    Each call is a new parent run named ``name`` (the history is kept; the latest of a name is
    ``current=true``), except when the latest FINISHED parent of that name has the same ``artifacts_sha``
    and ``cells_sha``: that one is reused as it is (its params and tags are not updated) and its id
    returned.  The parent is marked FINISHED after its artifacts and the nesting; a parent left RUNNING by
    a killed call is marked KILLED by the next one, which also moves the cells back under the parent it
    logs or reuses.
    """
    from mlflow.entities import Param

    if "'" in name:
        raise ValueError(f"log_parent: name {name!r} must not contain a quote (it goes into a search filter)")
    if not cell_run_ids:
        raise ValueError(f"log_parent: no cell runs for {name!r}; pass the ids that log_runs returned")
    if PARENT_TAGS & tags.keys():
        raise ValueError(f"log_parent: tags {sorted(PARENT_TAGS & tags.keys())} are set by log_parent itself; "
                         "rename them")
    files = _artifact_files(artifacts)
    own = {"kind": "parent", "artifacts_sha": _files_sha(files),
           "cells_sha": hashlib.sha256(json.dumps(cell_run_ids, sort_keys=True).encode()).hexdigest()}
    with _store(tracking_uri) as client:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        cells = _cell_runs(client, exp_id, cell_run_ids)
        series = _series(client, exp_id, f"tags.kind = 'parent' and attributes.run_name = '{name}'")
        latest = max((run for run in series if run.info.status == "FINISHED"), key=lambda r: r.info.start_time,
                     default=None)
        if latest is not None and all(latest.data.tags.get(k) == own[k] for k in ("artifacts_sha", "cells_sha")):
            run_id = latest.info.run_id
            _nest(client, run_id, cells)  # cells a killed later parent took over come back
        else:
            run_id = _retry(client.create_run, exp_id, run_name=name,
                            tags={**{k: str(v) for k, v in tags.items()}, **own, "current": "false"}).info.run_id
            with _finishing(client, run_id), tempfile.TemporaryDirectory() as staging:
                _retry(client.log_batch, run_id, params=[Param(k, v) for k, v in _flat(params).items()])
                for where, local in files.items():  # the artifact tree, copied, logged in one call
                    (Path(staging) / where).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(local, Path(staging) / where)
                (Path(staging) / CELL_LIST).write_text(json.dumps(cell_run_ids, indent=1, sort_keys=True))
                _retry(client.log_artifacts, run_id, staging)
                _nest(client, run_id, cells)
        _make_current(client, run_id, series)
    return run_id
