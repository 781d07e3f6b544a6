"""The MLflow store as a user sees it: ``mlflow server`` on the workflow's SQLite store, read through the
REST API only (urllib + JSON), the way the UI reads it.

Both tests share ``check_store``: every cell's current run with its tags and metrics (compared with the
run folders' own files), the parent run with its artifacts (compared byte for byte with the local files)
and its children.  One builds a store here from fake run folders (fast); the other reads the store of the
session's CI workflow run (``ci_run``), where the workflow called ``log_parent`` and wrote
``results/mlflow_parent.json`` = ``{"run_id": ..., "experiment": ...}``.

The experiments' artifact roots are absolute ``file:`` URIs (``<db folder>/mlflow-artifacts/<experiment>``,
see adbench.evaluation.tracking), which the server lists and serves directly; ``--artifacts-destination`` points at
the same folder, for experiments the server itself would create.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("mlflow")
from test_tracking import fake_outputs, make_run  # noqa: E402

from adbench.evaluation.tracking import log_parent, log_runs  # noqa: E402

SERVER_START_S = 120  # a cold start takes ~15 s on an idle 2-core machine
STOP_GRACE_S = 10


def group_members(pgid: int) -> list[str]:
    """Processes of process group ``pgid`` not yet dead (zombies excluded): ``"pid state command"``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(f"{stat.parent.name} {state} {text[text.index('(') + 1:text.rindex(')')]}")
    return alive


def stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group led by ``proc``, SIGKILL to what is left after ``grace`` seconds; then
    assert that no process of the group survives."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while (proc.poll() is None or group_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is not None and not group_members(proc.pid):
            break
    assert proc.poll() is not None and not group_members(proc.pid), \
        f"mlflow server's process group survived SIGKILL: {group_members(proc.pid)}"


@contextmanager
def mlflow_server(db: Path, log: Path) -> Iterator[str]:
    """``mlflow server`` on the SQLite store ``db`` in its own process group; yields its base URL.

    Job execution (a consumer process per job queue) is switched off: only the tracking API is needed.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--artifacts-destination", (db.parent / "mlflow-artifacts").resolve().as_uri()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:  # not listening yet (URLError and timeouts are OSErrors)
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                what = (f"exited with {proc.returncode}" if proc.poll() is not None
                        else f"did not answer {base}/health within {SERVER_START_S} s")
                pytest.fail(f"mlflow server {what}; its log ({log}):\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.25)
        yield base
    finally:
        stop_group(proc)


def rest(base: str, endpoint: str, body: dict | None = None, **query: str) -> dict[str, Any]:
    """One call of MLflow's REST API (``/api/2.0/mlflow/<endpoint>``): GET with ``query``, or POST ``body``."""
    url = f"{base}/api/2.0/mlflow/{endpoint}" + ("?" + urllib.parse.urlencode(query) if query else "")
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        pytest.fail(f"{url} {json.dumps(body)}: HTTP {err.code} {err.read()[:2000]!r}")


def search(base: str, exp_id: str, query: str) -> list[dict[str, Any]]:
    """Every run of ``exp_id`` matching the filter ``query`` (``runs/search``, all pages)."""
    runs, token = [], None
    while True:
        page = rest(base, "runs/search", {"experiment_ids": [exp_id], "filter": query, "max_results": 500,
                                          **({"page_token": token} if token else {})})
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def artifact_sizes(base: str, run_id: str, path: str = "") -> dict[str, int]:
    """``{artifact path: size in bytes}`` of every file of the run (``artifacts/list``, recursively)."""
    listing = rest(base, "artifacts/list", run_id=run_id, **({"path": path} if path else {}))
    files = {}
    for item in listing.get("files", []):
        files.update(artifact_sizes(base, run_id, item["path"]) if item.get("is_dir")
                     else {item["path"]: int(item["file_size"])})
    return files


def artifact_bytes(base: str, run_id: str, path: str) -> bytes:
    query = urllib.parse.urlencode({"run_id": run_id, "path": path})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=60) as answer:
        return answer.read()


def expected_cell_tags(folder: Path) -> dict[str, str]:
    """The tags a cell run of ``folder`` carries, read from its run.json and metrics.json here."""
    identity = json.loads((folder / "run.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"kind": "cell", "current": "true",
            "run_key": f"{identity['dataset']}/{identity['category']}/{identity['method']}/seed{identity['seed']}",
            **{k: str(identity[k]) for k in ("dataset", "category", "method", "impl", "seed", "config_hash")},
            "variant": str(identity["params"].get("variant", "-")), "git_commit": metrics["git_commit"],
            "metrics_sha": hashlib.sha256((folder / "metrics.json").read_bytes()).hexdigest()}


def check_store(base: str, experiment: str, parent_id: str, cell_ids: dict[str, str], folders: dict[str, Path],
                workdir: Path, artifacts: dict[str, Path]) -> dict[str, int]:
    """Through the server at ``base``: the current cell runs of ``experiment`` are exactly ``cell_ids``
    (``{run_key: run_id}``), each with the tags and metrics of its folder (``folders[run_key]``; its
    ``run_dir`` tag relative to ``workdir`` or absolute) and nested under ``parent_id``, whose children are
    exactly these runs and whose artifacts include ``artifacts`` (``{artifact path: local file}``, same
    bytes) and ``cell_runs.json`` = ``cell_ids``.  Returns the parent's ``{artifact path: size}``."""
    exp_id = rest(base, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    current = search(base, exp_id, "tags.kind = 'cell' and tags.current = 'true'")
    by_key = {tags(run)["run_key"]: run for run in current}
    assert len(by_key) == len(current), "two current runs of one cell"
    assert {k: run["info"]["run_id"] for k, run in by_key.items()} == cell_ids
    for key, run in by_key.items():
        folder, found = folders[key], tags(run)
        assert run["info"]["status"] == "FINISHED", key
        assert {k: found.get(k) for k in expected_cell_tags(folder)} == expected_cell_tags(folder)
        assert (workdir / found["run_dir"]).resolve() == folder.resolve()
        assert found["mlflow.parentRunId"] == parent_id, key
        metrics = json.loads((folder / "metrics.json").read_text())
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        logged = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert {k: logged.get(k) for k in numbers} == pytest.approx(numbers), key

    children = search(base, exp_id, f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(run["info"]["run_id"] for run in children) == sorted(cell_ids.values())
    parent = rest(base, "runs/get", run_id=parent_id)["run"]
    assert parent["info"]["status"] == "FINISHED"
    assert {k: tags(parent).get(k) for k in ("kind", "current")} == {"kind": "parent", "current": "true"}
    assert parent_id in {run["info"]["run_id"] for run in search(base, exp_id, "tags.current = 'true'")}
    sizes = artifact_sizes(base, parent_id)
    assert {k: sizes.get(k) for k in artifacts} == {k: local.stat().st_size for k, local in artifacts.items()}
    for path, local in artifacts.items():
        assert artifact_bytes(base, parent_id, path) == local.read_bytes(), path
    assert json.loads(artifact_bytes(base, parent_id, "cell_runs.json")) == cell_ids
    return sizes


def test_a_store_built_here_read_through_the_server(tmp_path):
    """Fake run folders (a rerun among them, so the current filter matters) + log_parent, then the server."""
    results = tmp_path / "results"
    uri, experiment = f"sqlite:///{results / 'mlflow.db'}", "fod-suite"
    log_runs([make_run(results, "brick", "patchcore", auroc=0.5)], uri, experiment)  # superseded below
    folders = [make_run(results, c, m, params=p) for c in ("brick", "coins")
               for m, p in (("patchcore", None), ("fod", {"variant": "official", "epochs": 1}))]
    ids = {}
    for category in ("brick", "coins"):  # as the track_category jobs do
        ids.update(log_runs([f for f in folders if f.parent.parent.name == category], uri, experiment))
    fake_outputs(results)
    parent = log_parent(uri, experiment, ids, {"tables": results / "tables", "figures": results / "figures"},
                        "all_tables", {"configfile": "config/ci.yaml"}, {"git_commit": "unknown"})
    artifacts = {p.relative_to(results).as_posix(): p for p in sorted(results.glob("[tf]*/**/*")) if p.is_file()}
    assert len(artifacts) == 4

    with mlflow_server(results / "mlflow.db", tmp_path / "server.log") as base:
        sizes = check_store(base, experiment, parent, ids, {k: results / k for k in ids}, tmp_path, artifacts)
        exp_id = rest(base, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
        [old] = search(base, exp_id, "tags.current = 'false'")
        assert (tags(old)["run_key"], tags(old)["superseded_by"]) == ("embedded/brick/patchcore/seed0",
                                                                     ids["embedded/brick/patchcore/seed0"])
    assert set(sizes) == set(artifacts) | {"cell_runs.json"}


def test_the_ci_workflow_store_read_through_the_server(ci_run, tmp_path):
    """The store of a real ``snakemake all_tables --configfile config/ci.yaml`` run."""
    results = ci_run / "results"
    parent = json.loads((results / "mlflow_parent.json").read_text())
    ids = {}
    for listing in sorted(results.glob("*/*/mlflow.json")):  # <dataset>/<category>/mlflow.json
        ids.update(json.loads(listing.read_text()))
    assert ids
    tables = {f"tables/{p.relative_to(results / 'tables').as_posix()}": p
              for p in sorted((results / "tables").rglob("*")) if p.is_file()}
    assert tables
    with mlflow_server(results / "mlflow.db", tmp_path / "server.log") as base:
        check_store(base, parent["experiment"], parent["run_id"], ids, {k: results / k for k in ids}, ci_run,
                    tables)
