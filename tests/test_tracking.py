"""MLflow logging (adbench.evaluation.tracking): idempotent, crash-safe, and correct with many processes at once.

The run folders are fakes with the files ``fit_run`` / ``evaluate_run`` write (run.json, metrics.json,
map_*.png); every check reads the store back through ``MlflowClient``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from run_folders import write_result_files

from adbench.evaluation import tracking
from adbench.evaluation.integrity import TamperedRunError
from adbench.evaluation.tracking import log_runs

ROOT = Path(__file__).resolve().parent.parent
mlflow = pytest.importorskip("mlflow")
from mlflow.entities import ViewType  # noqa: E402

# A child process: logs its folders when told to go; optionally stalls inside logging (to be killed there).
CHILD = r'''
import json, sys, time
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
import mlflow
from adbench.evaluation import tracking

if spec.get("stall_after_batches"):
    original, calls = mlflow.MlflowClient.log_batch, []

    def log_batch(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == spec["stall_after_batches"]:  # metrics in, artifacts and FINISHED not yet
            Path(spec["stalled"]).touch()
            time.sleep(300)
        return result

    mlflow.MlflowClient.log_batch = log_batch
if spec.get("stall_in_schema"):  # stall inside a new store's last migration: its tables made, its revision not
    from alembic import command  # yet recorded (MLflow commits migration by migration), as a killed job left one
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils

    def upgrade_then_stall(engine):
        config = utils._get_alembic_config(str(engine.url))
        scripts = ScriptDirectory.from_config(config)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")
            command.stamp(config, scripts.get_revision(scripts.get_current_head()).down_revision, purge=True)
        Path(spec["stalled"]).touch()
        time.sleep(300)

    utils._upgrade_db = upgrade_then_stall
Path(spec["ready"]).touch()
deadline = time.monotonic() + 120
while spec.get("go") and not Path(spec["go"]).exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.02)
ids = tracking.log_runs([Path(p) for p in spec["folders"]], spec["uri"], spec["experiment"])
print(json.dumps(ids))
'''


def make_run(root: Path, category: str, method: str, seed: int = 0, dataset: str = "embedded",
             auroc: float = 0.9, params: dict | None = None, commit: str = "unknown") -> Path:
    """A run folder as fit_run + evaluate_run leave it (``params``: the method's, default ``{"k": 3}``; scores.csv
    with image AUROC ``auroc`` and maps.npz, their digests in metrics.json: ``run_folders.write_result_files``)."""
    folder = root / dataset / category / method / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"dataset": dataset, "dataset_kind": "embedded", "generator": {"seed": 0},
           "backbone": "tf_efficientnet_lite0", "image_size": 64, "method": method, "impl": method.split("_")[0],
           "params": {"k": 3} if params is None else params, "seed": seed}
    chash = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    identity = {**cfg, "category": category, "config_hash": chash, "git_commit": commit, "fit_seconds": 1.5,
                "history": [[0, {"loss": 1.0}], [1, {"loss": 0.5}], [2, {"loss": 0.25}]]}
    (folder / "run.json").write_text(json.dumps(identity, indent=1, sort_keys=True))
    metrics = {**write_result_files(folder, auroc), "image_ap": 0.8, "image_f1_max": 0.7, "pixel_auroc": 0.95,
               "pixel_ap": 0.4, "pixel_f1_max": 0.45, "pixel_aupro": 0.85, "evaluation_resolution": 64, "n_test": 20,
               "n_anomalous": 10, "predict_seconds": 0.25, "fit_seconds": 1.5, "dataset": dataset,
               "dataset_kind": "embedded", "category": category, "method": method, "seed": seed,
               "backbone": "tf_efficientnet_lite0", "config_hash": chash, "git_commit": commit,
               "defect_types": {"colour": {"kind": "hard_global", "n": 6, "image_auroc": 0.6, "pixel_auroc": 0.55},
                                "scratch": {"kind": "local", "n": 6, "image_auroc": 0.9, "pixel_auroc": 0.97}},
               "defect_kinds": {"local": {"types": ["scratch"], "n": 6, "image_auroc": 0.9, "pixel_auroc": 0.97}}}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    (folder / "map_scratch_000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + category.encode() + method.encode())
    return folder


def run_key(folder: Path) -> str:
    identity = json.loads((folder / "run.json").read_text())
    return f"{identity['dataset']}/{identity['category']}/{identity['method']}/seed{identity['seed']}"


def runs_by_key(client, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "", run_view_type=ViewType.ALL, max_results=1000)
    grouped: dict[str, list] = {}
    for run in runs:
        grouped.setdefault(run.data.tags["run_key"], []).append(run)
    return grouped


def cell_tags(folder: Path) -> dict[str, str]:
    """The tags a cell run of ``folder`` must carry, read from its files here (not by adbench.evaluation.tracking)."""
    identity = json.loads((folder / "run.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"kind": "cell", "run_key": run_key(folder), "dataset": identity["dataset"],
            "category": identity["category"], "method": identity["method"], "impl": identity["impl"],
            "variant": identity["params"].get("variant", "-"), "seed": str(identity["seed"]),
            "config_hash": identity["config_hash"], "git_commit": metrics["git_commit"],
            "metrics_sha": hashlib.sha256((folder / "metrics.json").read_bytes()).hexdigest(),
            "run_dir": str(folder)}


def assert_complete(client, run, folder: Path) -> None:
    """FINISHED, every numeric metric, the training curve, params and both artifacts."""
    assert run.info.status == "FINISHED"
    metrics = json.loads((folder / "metrics.json").read_text())
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {k: run.data.metrics[k] for k in numbers} == pytest.approx(numbers)
    nested = {f"{group}.{name}.{key}": float(value) for group in ("defect_types", "defect_kinds")
              for name, entry in metrics[group].items() for key, value in entry.items() if key not in ("kind", "types")}
    assert len(nested) == 9 and {k: run.data.metrics[k] for k in nested} == pytest.approx(nested)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 0.25]
    identity = json.loads((folder / "run.json").read_text())
    assert run.data.params["config_hash"] == identity["config_hash"] == run.data.tags["config_hash"]
    assert run.data.params["category"] == identity["category"]
    assert run.data.params["params"] == json.dumps(identity["params"], sort_keys=True)
    assert run.data.tags["run_key"] == run_key(folder)
    assert {k: run.data.tags.get(k) for k in cell_tags(folder)} == cell_tags(folder)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "maps"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "maps")] == ["maps/map_scratch_000.png"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the in-process tests (each uses its own experiment): ``(uri, client)``."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{db}"
    return uri, mlflow.MlflowClient(tracking_uri=uri)


def spawn(tmp_path: Path, name: str, spec: dict) -> subprocess.Popen:
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # as in a Snakemake job
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, str(script), str(spec_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_for(paths: list[Path], procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None and proc.returncode != 0:
                pytest.fail(f"child exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"children not ready after {seconds} s: {[p.name for p in paths if not p.exists()]}")
        time.sleep(0.05)


def kill_when_stalled(tmp_path: Path, spec: dict) -> None:
    """Spawn a child with ``spec`` (a ``stall_*`` option), SIGKILL its process group once it has stalled
    there, and check that the kill ended it."""
    stalled = tmp_path / "stalled"
    proc = spawn(tmp_path, "killed", {**spec, "ready": str(tmp_path / "ready"), "stalled": str(stalled)})
    try:
        wait_for([stalled], [proc], 120)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_group(proc)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_logging_the_same_folders_twice_returns_the_same_runs(store, tmp_path):
    uri, client = store
    folders = [make_run(tmp_path, "brick", "patchcore"), make_run(tmp_path, "brick", "fod", seed=1)]
    first = log_runs(folders, uri, "idempotence")
    assert set(first) == {"embedded/brick/patchcore/seed0", "embedded/brick/fod/seed1"}
    assert log_runs(folders, uri, "idempotence") == first
    assert log_runs(folders[1:], uri, "idempotence") == {"embedded/brick/fod/seed1": first["embedded/brick/fod/seed1"]}
    grouped = runs_by_key(client, "idempotence")
    assert {k: [r.info.run_id for r in v] for k, v in grouped.items()} == {k: [v] for k, v in first.items()}
    for folder in folders:
        assert_complete(client, grouped[run_key(folder)][0], folder)
    # new numbers for the same run: a new MLflow run, the old one kept as history
    changed = make_run(tmp_path, "brick", "patchcore", auroc=0.5)
    second = log_runs([changed], uri, "idempotence")["embedded/brick/patchcore/seed0"]
    assert second != first["embedded/brick/patchcore/seed0"]
    runs = runs_by_key(client, "idempotence")["embedded/brick/patchcore/seed0"]
    assert sorted(r.info.run_id for r in runs) == sorted([second, first["embedded/brick/patchcore/seed0"]])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert client.get_run(second).data.metrics["image_auroc"] == 0.5


@pytest.mark.parametrize("edit", ["metrics.json", "scores.csv"])
def test_a_hand_edited_run_is_refused_and_nothing_of_the_call_is_logged(store, tmp_path, edit):
    """The issue's edit (image AUROC 0.9 -> 0.999 in metrics.json), or a changed score in scores.csv, stops
    log_runs before the store is touched, naming the file (adbench.evaluation.integrity, as the tables check it)."""
    uri, client = store
    untouched, edited = make_run(tmp_path, "carpet", "patchcore"), make_run(tmp_path, "carpet", "fod")
    if edit == "metrics.json":
        record = json.loads((edited / "metrics.json").read_text())
        (edited / "metrics.json").write_text(json.dumps({**record, "image_auroc": 0.999}, indent=1, sort_keys=True))
        said = "its image_auroc 0.999 is not the AUROC of the scores in"
    else:
        text = (edited / "scores.csv").read_text()
        (edited / "scores.csv").write_text(text.replace(",0.0\n", ",-1.0\n", 1))
        said = f"{edited / 'scores.csv'} has SHA-256"
    with pytest.raises(TamperedRunError) as err:
        log_runs([untouched, edited], uri, f"tampered-{edit}")
    assert f"{edited / 'metrics.json'}: " in str(err.value) and said in str(err.value)
    assert str(untouched) not in str(err.value)
    assert client.get_experiment_by_name(f"tampered-{edit}") is None  # the store was not even opened for it


def test_a_run_left_running_by_a_killed_process_is_not_taken_as_logged(store, tmp_path):
    """What a SIGKILL between create_run and FINISHED leaves: a RUNNING run with the tags, no metrics."""
    uri, client = store
    folder = make_run(tmp_path, "coins", "cflow")
    exp_id = tracking._experiment_id(client, "killed", uri)
    sha = hashlib.sha256((folder / "metrics.json").read_bytes()).hexdigest()
    stale = client.create_run(exp_id, run_name=run_key(folder),
                              tags={"run_key": run_key(folder), "metrics_sha": sha, "run_dir": str(folder)})
    ids = log_runs([folder], uri, "killed")
    assert ids[run_key(folder)] != stale.info.run_id
    grouped = runs_by_key(client, "killed")[run_key(folder)]
    assert sorted(r.info.status for r in grouped) == ["FINISHED", "KILLED"]
    assert_complete(client, client.get_run(ids[run_key(folder)]), folder)
    old = client.get_run(stale.info.run_id)
    assert old.info.status == "KILLED" and old.info.end_time is not None
    assert "Interrupted" in old.data.tags["mlflow.note.content"]
    assert log_runs([folder], uri, "killed") == ids  # and nothing more to do


def test_an_error_while_logging_marks_the_run_failed(store, tmp_path, monkeypatch):
    uri, client = store
    folder = make_run(tmp_path, "coins", "mkd")

    def broken(self, run_id, local_path, artifact_path=None):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.MlflowClient, "log_artifact", broken)
        with pytest.raises(OSError, match="disk full"):
            log_runs([folder], uri, "errors")
    [failed] = runs_by_key(client, "errors")[run_key(folder)]
    assert failed.info.status == "FAILED"
    ids = log_runs([folder], uri, "errors")
    assert ids[run_key(folder)] != failed.info.run_id
    assert_complete(client, client.get_run(ids[run_key(folder)]), folder)
    assert client.get_run(failed.info.run_id).info.status == "FAILED"
    assert log_runs([folder], uri, "errors") == ids


def test_experiments_get_their_own_ids_and_artifact_folders(store, tmp_path):
    uri, client = store
    root = Path(uri.removeprefix("sqlite:///")).parent.resolve()
    first = tracking._experiment_id(client, "suite-one", uri)
    second = tracking._experiment_id(client, "suite two/b", uri)
    assert first != second
    assert tracking._experiment_id(client, "suite-one", uri) == first
    assert tracking._experiment_id(client, "suite two/b", uri) == second
    one, two = client.get_experiment(first), client.get_experiment(second)
    assert one.name == "suite-one" and two.name == "suite two/b"
    assert one.artifact_location == (root / "mlflow-artifacts" / "suite-one").as_uri()
    assert two.artifact_location.startswith((root / "mlflow-artifacts" / "suite_two_b-").as_uri())
    # runs land in their experiment and its artifact folder
    folder = make_run(tmp_path, "grass", "draem")
    for name, exp in (("suite-one", one), ("suite two/b", two)):
        run = client.get_run(log_runs([folder], uri, name)[run_key(folder)])
        assert run.info.experiment_id == exp.experiment_id
        assert run.info.artifact_uri.startswith(exp.artifact_location + "/")
    # a deleted experiment is restored rather than failing every create_run
    client.delete_experiment(second)
    assert tracking._experiment_id(client, "suite two/b", uri) == second
    assert client.get_experiment(second).lifecycle_stage == "active"


def test_locked_database_is_retried_a_bounded_number_of_times(monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(tracking, "LOCKED_BACKOFF_S", 0.001)
    locked = MlflowException(str(sqlite3.OperationalError("database is locked")), error_code="TEMPORARILY_UNAVAILABLE")
    calls = []

    def flaky(value):
        calls.append(value)
        if len(calls) < 3:
            raise locked
        return value

    assert tracking._retry(flaky, 7) == 7 and calls == [7, 7, 7]
    calls.clear()

    def always(value):
        calls.append(value)
        raise locked

    with pytest.raises(MlflowException, match="database is locked"):
        tracking._retry(always, 1)
    assert len(calls) == tracking.LOCKED_RETRIES + 1
    calls.clear()

    def other(value):
        calls.append(value)
        raise MlflowException("no such run")

    with pytest.raises(MlflowException, match="no such run"):
        tracking._retry(other, 1)
    assert calls == [1]  # only a locked database is retried
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = sqlite3.OperationalError("database is locked")
    assert tracking._is_locked(wrapped) and not tracking._is_locked(RuntimeError("locked out"))


def test_a_reader_holding_the_database_only_delays_logging(store, tmp_path):
    """As when ``mlflow ui`` reads the store while the workflow logs."""
    uri, client = store
    log_runs([make_run(tmp_path, "gravel", "patchcore")], uri, "reader")  # store and experiment exist
    reader = sqlite3.connect(uri.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM runs").fetchall()  # holds a shared lock until COMMIT
    commit = threading.Timer(1.0, reader.execute, ["COMMIT"])
    commit.start()
    try:
        folder = make_run(tmp_path, "gravel", "fod")
        ids = log_runs([folder], uri, "reader")
    finally:
        commit.cancel()
        commit.join()
        reader.close()
    assert_complete(client, client.get_run(ids[run_key(folder)]), folder)


def test_track_category_writes_mlflow_json_whole(store, tmp_path):
    from adbench.jobs import track_category

    uri, _ = store
    folders = [make_run(tmp_path, "tray", m) for m in ("patchcore", "fod")]
    out = tmp_path / "tray" / "mlflow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('{"stale": "x"}')
    track_category([str(f) for f in folders], uri, "track", str(out))
    assert json.loads(out.read_text()) == log_runs(folders, uri, "track")
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlflow.json"]  # no temporary left behind


def test_a_sigkill_inside_logging_leaves_nothing_taken_for_logged(tmp_path):
    """A real kill: the child logs 5 folders and is killed after the 3rd run's metrics, before its artifacts."""
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    folders = [make_run(tmp_path, "brick", m) for m in ("draem", "patchsvdd", "mkd", "patchcore", "cflow")]
    kill_when_stalled(tmp_path, {"uri": uri, "experiment": "kill", "folders": [str(f) for f in folders],
                                 "stall_after_batches": 3})
    client = mlflow.MlflowClient(tracking_uri=uri)
    before = {k: [r.info.status for r in v] for k, v in runs_by_key(client, "kill").items()}
    assert before == {run_key(folders[0]): ["FINISHED"], run_key(folders[1]): ["FINISHED"],
                      run_key(folders[2]): ["RUNNING"]}
    [stale] = runs_by_key(client, "kill")[run_key(folders[2])]
    assert stale.data.metrics  # killed inside logging: metrics in, no artifacts, not FINISHED

    ids = log_runs(folders, uri, "kill")  # the rerun (its lock was released by the kill)
    grouped = runs_by_key(client, "kill")
    assert set(grouped) == set(ids) == {run_key(f) for f in folders}
    for folder in folders:
        runs = grouped[run_key(folder)]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        assert [r.info.run_id for r in finished] == [ids[run_key(folder)]]
        assert_complete(client, finished[0], folder)
    assert sorted(r.info.status for r in grouped[run_key(folders[2])]) == ["FINISHED", "KILLED"]
    assert client.get_run(stale.info.run_id).info.status == "KILLED"
    assert log_runs(folders, uri, "kill") == ids


def test_a_sigkill_while_creating_the_store_leaves_no_store_behind(tmp_path):
    """A real kill inside a new store's last schema migration (every table there, its revision not recorded):
    the store's path stays free, so the next call makes a whole store and logs (a partial store at that path
    was refused by every later run: "Detected out-of-date database schema", seen in a killed CI run)."""
    db = tmp_path / "results" / "mlflow.db"
    uri = f"sqlite:///{db}"
    folder = make_run(tmp_path, "brick", "patchcore")
    kill_when_stalled(tmp_path, {"uri": uri, "experiment": "kill", "folders": [str(folder)], "stall_in_schema": True})
    assert not db.exists(), "a store killed while its schema was made took the store's name"

    ids = log_runs([folder], uri, "kill")
    [run] = runs_by_key(mlflow.MlflowClient(tracking_uri=uri), "kill")[run_key(folder)]
    assert run.info.run_id == ids[run_key(folder)]
    assert_complete(mlflow.MlflowClient(tracking_uri=uri), run, folder)
    assert [p.name for p in db.parent.iterdir() if p.name.startswith(".mlflow.db")] == []


def test_eight_processes_logging_at_once_into_a_new_store(tmp_path):
    """8 processes start logging together into a store that does not exist yet: 6 into one new
    experiment, 2 into another; processes 0 and 1 also both log one shared folder."""
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    experiments = ["suite-a"] * 6 + ["suite b"] * 2
    shared = make_run(tmp_path, "shared", "patchcore")
    plan = []
    for i, experiment in enumerate(experiments):
        folders = [make_run(tmp_path, f"cat{i}", m, seed=s) for m, s in (("patchcore", 0), ("fod", 0), ("fod", 1))]
        plan.append((experiment, folders + ([shared] if i < 2 else [])))
    go = tmp_path / "go"
    procs = [spawn(tmp_path, f"p{i}", {"uri": uri, "experiment": exp, "folders": [str(f) for f in folders],
                                        "ready": str(tmp_path / f"ready{i}"), "go": str(go)})
             for i, (exp, folders) in enumerate(plan)]
    try:
        wait_for([tmp_path / f"ready{i}" for i in range(len(procs))], procs, 120)
        go.touch()  # all at once
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            kill_group(proc)
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "database is locked" not in err and "was locked" not in err  # the lock serialised them
    returned = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    assert returned[0][run_key(shared)] == returned[1][run_key(shared)]  # logged once, found by the other

    client = mlflow.MlflowClient(tracking_uri=uri)
    root = (tmp_path / "results").resolve()
    for name in ("suite-a", "suite b"):
        matching = [e for e in client.search_experiments(view_type=ViewType.ALL) if e.name == name]
        assert len(matching) == 1
        assert matching[0].artifact_location.startswith((root / "mlflow-artifacts").as_uri() + "/")
        expected = {run_key(f): f for (exp, folders) in plan if exp == name for f in folders}
        grouped = runs_by_key(client, name)
        assert Counter({k: len(v) for k, v in grouped.items()}) == Counter({k: 1 for k in expected})
        for key, [run] in grouped.items():
            assert run.info.experiment_id == matching[0].experiment_id
            assert run.info.artifact_uri.startswith(matching[0].artifact_location + "/")
            assert_complete(client, run, expected[key])
    for (exp, folders), ids in zip(plan, returned):
        grouped = runs_by_key(client, exp)
        assert ids == {run_key(f): grouped[run_key(f)][0].info.run_id for f in folders}


def current_runs(client, experiment: str, query: str = "") -> dict[str, str]:
    """``{run_key: run_id}`` of the runs the UI shows under the filter ``tags.current = 'true'``."""
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], " and ".join(["tags.current = 'true'"] + [query] * bool(query)))
    keys = [r.data.tags["run_key"] for r in found]
    assert len(keys) == len(set(keys)), f"two current runs of one cell: {sorted(keys)}"
    return {r.data.tags["run_key"]: r.info.run_id for r in found}


def test_cells_are_tagged_for_filtering_and_old_runs_get_the_tags(store, tmp_path):
    uri, client = store
    fod = make_run(tmp_path, "brick", "fod_patchwise_rec", seed=2, params={"variant": "paper", "epochs": 1},
                   commit="0123abc-dirty")
    patchcore = make_run(tmp_path, "brick", "patchcore")
    ids = log_runs([fod, patchcore], uri, "tags")
    for folder in (fod, patchcore):
        assert_complete(client, client.get_run(ids[run_key(folder)]), folder)
    assert cell_tags(fod)["variant"] == "paper" and cell_tags(patchcore)["variant"] == "-"
    assert client.get_run(ids[run_key(fod)]).data.tags["impl"] == "fod"
    exp_id = client.get_experiment_by_name("tags").experiment_id
    by = lambda query: sorted(r.info.run_id for r in client.search_runs([exp_id], query))  # noqa: E731
    assert by("tags.variant = 'paper' and tags.impl = 'fod' and tags.seed = '2'") == [ids[run_key(fod)]]
    assert by("tags.git_commit = '0123abc-dirty'") == [ids[run_key(fod)]]
    assert by("tags.variant = '-' and tags.category = 'brick'") == [ids[run_key(patchcore)]]
    assert current_runs(client, "tags") == ids
    # a run logged before these tags existed (run_key, metrics_sha, run_dir only) is reused and tagged
    older = make_run(tmp_path, "coins", "patchcore")
    sha = hashlib.sha256((older / "metrics.json").read_bytes()).hexdigest()
    old = client.create_run(exp_id, run_name=run_key(older),
                            tags={"run_key": run_key(older), "metrics_sha": sha, "run_dir": str(older)})
    client.set_terminated(old.info.run_id, status="FINISHED")
    assert log_runs([older], uri, "tags") == {run_key(older): old.info.run_id}
    tags = client.get_run(old.info.run_id).data.tags
    assert {k: tags.get(k) for k in cell_tags(older)} == cell_tags(older) and tags["current"] == "true"


def test_a_rerun_supersedes_the_cells_previous_run(store, tmp_path):
    uri, client = store
    other = log_runs([make_run(tmp_path, "tile", "fod")], uri, "supersede")
    key = "embedded/tile/patchcore/seed0"
    first = log_runs([make_run(tmp_path, "tile", "patchcore", auroc=0.9)], uri, "supersede")[key]
    assert "superseded_by" not in client.get_run(first).data.tags
    second = log_runs([make_run(tmp_path, "tile", "patchcore", auroc=0.5)], uri, "supersede")[key]
    assert second != first
    assert current_runs(client, "supersede") == {**other, key: second}
    old = client.get_run(first).data.tags
    assert (old["current"], old["superseded_by"]) == ("false", second)
    assert client.get_run(first).info.status == "FINISHED"  # kept as history
    assert log_runs([make_run(tmp_path, "tile", "patchcore", auroc=0.5)], uri, "supersede")[key] == second
    # back to the first numbers: that run is reused and current again, the other superseded by it
    assert log_runs([make_run(tmp_path, "tile", "patchcore", auroc=0.9)], uri, "supersede")[key] == first
    assert current_runs(client, "supersede") == {**other, key: first}
    assert "superseded_by" not in client.get_run(first).data.tags
    assert client.get_run(second).data.tags["superseded_by"] == first
    assert len(runs_by_key(client, "supersede")[key]) == 2


class Crash(BaseException):
    """A process dying at this point (nothing in adbench.evaluation.tracking handles it)."""


@pytest.mark.parametrize("where", ["before the new run is current", "before the old run is un-marked"])
def test_a_crash_while_moving_current_is_repaired_by_the_next_call(store, tmp_path, monkeypatch, where):
    uri, client = store
    experiment = "crash-" + where.split()[2]  # new / old
    key = "embedded/wood/patchcore/seed0"
    first = log_runs([make_run(tmp_path, "wood", "patchcore", auroc=0.9)], uri, experiment)[key]
    set_tag, log_batch = mlflow.MlflowClient.set_tag, mlflow.MlflowClient.log_batch

    def crashing_set_tag(self, run_id, k, v, *args, **kwargs):
        if where.startswith("before the new") and (k, v) == ("current", "true"):
            raise Crash
        return set_tag(self, run_id, k, v, *args, **kwargs)

    def crashing_log_batch(self, run_id, *args, tags=(), **kwargs):
        if where.startswith("before the old") and ("current", "false") in [(t.key, t.value) for t in tags]:
            raise Crash
        return log_batch(self, run_id, *args, tags=tags, **kwargs)

    changed = make_run(tmp_path, "wood", "patchcore", auroc=0.4)
    with monkeypatch.context() as patch:
        patch.setattr(mlflow.MlflowClient, "set_tag", crashing_set_tag)
        patch.setattr(mlflow.MlflowClient, "log_batch", crashing_log_batch)
        with pytest.raises(Crash):
            log_runs([changed], uri, experiment)
    [new] = [r for r in runs_by_key(client, experiment)[key] if r.info.run_id != first]
    assert new.info.status == "FINISHED"  # complete: the crash came after FINISHED
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    left = sorted(r.info.run_id for r in client.search_runs([exp_id], "tags.current = 'true'"))
    assert left == ([first] if where.startswith("before the new") else sorted([first, new.info.run_id]))
    assert log_runs([changed], uri, experiment) == {key: new.info.run_id}  # the repair: no new run
    assert current_runs(client, experiment) == {key: new.info.run_id}
    assert client.get_run(first).data.tags["superseded_by"] == new.info.run_id
    assert len(runs_by_key(client, experiment)[key]) == 2
    assert_complete(client, client.get_run(new.info.run_id), changed)


def fake_outputs(results: Path) -> None:
    """What all_tables leaves for the parent run, in small: tables/table2.{csv,md}, figures/heatmap.png and
    figures/curves/roc.png."""
    (results / "tables").mkdir(parents=True)
    (results / "tables" / "table2.csv").write_text("category,fod\ntray,0.9\n")
    (results / "tables" / "table2.md").write_text("| category | fod |\n")
    (results / "figures" / "curves").mkdir(parents=True)
    (results / "figures" / "heatmap.png").write_bytes(b"\x89PNG heatmap")
    (results / "figures" / "curves" / "roc.png").write_bytes(b"\x89PNG roc")


def artifact_tree(client, run_id: str, path: str | None = None) -> dict[str, int]:
    """``{artifact path: size in bytes}`` of every file of the run, read back through MLflow."""
    files = {}
    for item in client.list_artifacts(run_id, path):
        files.update(artifact_tree(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return files


def test_log_parent_nests_the_cells_and_logs_the_tables_and_figures(store, tmp_path, monkeypatch):
    uri, client = store
    folders = [make_run(tmp_path, c, m) for c in ("tray", "cloth") for m in ("patchcore", "fod")]
    ids = log_runs(folders, uri, "parent")
    fake_outputs(tmp_path)
    (tmp_path / "summary-draft.txt").write_text("4 cells\n")
    artifacts = {"tables": tmp_path / "tables", "figures": tmp_path / "figures",
                 "report/summary.txt": tmp_path / "summary-draft.txt"}
    local = {"tables/table2.csv": "tables/table2.csv", "tables/table2.md": "tables/table2.md",
             "figures/heatmap.png": "figures/heatmap.png", "figures/curves/roc.png": "figures/curves/roc.png",
             "report/summary.txt": "summary-draft.txt"}
    parent = tracking.log_parent(uri, "parent", ids, artifacts, "all_tables", {"configfile": "ci.yaml",
                                 "methods": ["patchcore", "fod"]}, {"git_commit": "0123abc"})
    run = client.get_run(parent)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "all_tables")
    assert run.data.params == {"configfile": "ci.yaml", "methods": '["patchcore", "fod"]'}
    assert {k: run.data.tags[k] for k in ("kind", "current", "git_commit")} == {
        "kind": "parent", "current": "true", "git_commit": "0123abc"}
    tree = artifact_tree(client, parent)
    assert tree.pop("cell_runs.json") > 0
    assert tree == {k: (tmp_path / v).stat().st_size for k, v in local.items()}
    stored = Path(run.info.artifact_uri.removeprefix("file://"))
    assert all((stored / k).read_bytes() == (tmp_path / v).read_bytes() for k, v in local.items())
    assert json.loads((stored / "cell_runs.json").read_text()) == ids
    exp_id = run.info.experiment_id

    def children(parent_id: str) -> list[str]:
        return sorted(r.info.run_id for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'"))

    assert children(parent) == sorted(ids.values())

    # the same inputs: the same parent; a changed table: a new parent, the first one kept as history
    assert tracking.log_parent(uri, "parent", ids, artifacts, "all_tables", {}, {}) == parent
    (tmp_path / "tables" / "table2.csv").write_text("category,fod\ntray,0.8\n")
    second = tracking.log_parent(uri, "parent", ids, artifacts, "all_tables", {}, {})
    assert second != parent and children(second) == sorted(ids.values()) and children(parent) == []
    assert client.get_run(second).data.tags["artifacts_sha"] != run.data.tags["artifacts_sha"]
    assert (client.get_run(parent).data.tags["current"], client.get_run(parent).data.tags["superseded_by"]) == (
        "false", second)
    # a rerun cell (new run id) makes a new parent too
    rerun = log_runs([make_run(tmp_path, "tray", "fod", auroc=0.3)], uri, "parent")
    third = tracking.log_parent(uri, "parent", {**ids, **rerun}, artifacts, "all_tables", {}, {})
    assert third != second and children(third) == sorted({**ids, **rerun}.values())

    # killed while nesting: the next call moves the cells back under the parent it reuses
    set_tag = mlflow.MlflowClient.set_tag

    def crash_after_one_cell(self, run_id, key, value, *args, **kwargs):
        set_tag(self, run_id, key, value, *args, **kwargs)
        if key == "mlflow.parentRunId":
            raise Crash

    (tmp_path / "tables" / "table2.md").write_text("| changed |\n")
    with monkeypatch.context() as patch:
        patch.setattr(mlflow.MlflowClient, "set_tag", crash_after_one_cell)
        with pytest.raises(Crash):
            tracking.log_parent(uri, "parent", {**ids, **rerun}, artifacts, "all_tables", {}, {})
    (tmp_path / "tables" / "table2.md").write_text("| category | fod |\n")
    assert len(children(third)) == len(ids) - 1
    assert tracking.log_parent(uri, "parent", {**ids, **rerun}, artifacts, "all_tables", {}, {}) == third
    assert children(third) == sorted({**ids, **rerun}.values())
    assert [r.info.run_id for r in client.search_runs([exp_id], "tags.kind = 'parent' and tags.current = 'true'")
            ] == [third]


def test_log_parent_refuses_bad_input_naming_it(store, tmp_path):
    uri, _ = store
    ids = log_runs([make_run(tmp_path, "leather", "patchcore")], uri, "parent-bad")
    table = tmp_path / "table2.csv"
    table.write_text("x\n")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        tracking.log_parent(uri, "parent-bad", ids, {"tables/t.csv": tmp_path / "missing.csv"}, "p", {}, {})
    with pytest.raises(ValueError, match=r"'\.\./t\.csv'.*relative path"):
        tracking.log_parent(uri, "parent-bad", ids, {"../t.csv": table}, "p", {}, {})
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.csv").write_text("y\n")
    with pytest.raises(ValueError, match=r"\['tables/t\.csv'\] given twice"):
        tracking.log_parent(uri, "parent-bad", ids, {"tables/t.csv": table, "tables": tmp_path / "tables"}, "p", {}, {})
    with pytest.raises(ValueError, match="relative path"):
        tracking.log_parent(uri, "parent-bad", ids, {".": tmp_path / "tables"}, "p", {}, {})
    with pytest.raises(ValueError, match="no MLflow run 'nope'"):
        tracking.log_parent(uri, "parent-bad", {"embedded/leather/patchcore/seed0": "nope"}, {}, "p", {}, {})
    with pytest.raises(ValueError, match="embedded/leather/fod/seed0"):
        tracking.log_parent(uri, "parent-bad", {"embedded/leather/fod/seed0": next(iter(ids.values()))}, {},
                            "p", {}, {})


def test_a_store_that_is_not_sqlite_is_named_with_its_fix(tmp_path):
    from adbench.evaluation.tracking import store_problem

    db = tmp_path / "mlflow.db"
    assert store_problem(f"sqlite:///{db}") is None  # not there yet: MLflow creates it
    db.write_bytes(b"")
    assert store_problem(f"sqlite:///{db}") is None  # empty: SQLite initialises it
    db.write_text("<html>not a database</html>")
    problem = store_problem(f"sqlite:///{db}")
    assert problem and str(db) in problem and f"mv {db} {db}.broken" in problem and "mlflow.tracking_uri" in problem
    sqlite3.connect(db.with_name("real.db")).execute("create table t (x)").connection.commit()
    assert store_problem(f"sqlite:///{db.with_name('real.db')}") is None
    assert store_problem("http://127.0.0.1:5000") is None


def test_a_broken_store_turns_tracking_off_and_leaves_the_tables_in_the_plan(tmp_path):
    """An mlflow.db that is not SQLite used to stop the run with SQLAlchemy's traceback before the tables."""
    from workflow_runs import snakemake

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mlflow.db").write_text("not a database\n")
    proc = snakemake(tmp_path, "-n", "all_tables")
    assert proc.returncode == 0, proc.output[-3000:]
    assert "MLflow tracking is off for this run: results/mlflow.db" in proc.output
    assert "track_category" not in proc.stdout and "track_all_tables" not in proc.stdout
    assert re.search(r"^table\s+\d+$", proc.stdout, flags=re.M), proc.stdout[-3000:]
