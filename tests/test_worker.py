"""The resident worker (adbench/worker.py): a script that calls ``delegate(globals())`` runs in a process
forked from the worker, with the client's folder, environment, argv and standard streams, and the client
exits with its exit code; a killed client takes its job with it; other kernel pins get another worker.
(That the workflow's numbers are identical with and without it: test_workflow.py's rerun test.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from adbench.methods.determinism import ISA_VARIABLES
from adbench.methods.registry import IMPLEMENTATIONS

SCRIPT = """\
from adbench.worker import delegate
delegate(globals())
import json, os, sys
loaded = sorted(sys.modules)  # before this job imports anything more
import torch
print("out:" + json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
                           "x": os.environ.get("X"), "threads": torch.get_num_threads(),
                           "draw": torch.rand(1).item(), "loaded": loaded}), flush=True)
print("err: to stderr", file=sys.stderr)
action = os.environ.get("ACTION", "")
if action == "fail":
    raise ValueError("the job failed on purpose")
if action == "sleep":
    open(os.environ["PIDFILE"], "w").write(str(os.getpid()))
    import time; time.sleep(60)
if action == "die":
    os.kill(os.getpid(), 9)
sys.exit(int(os.environ.get("CODE", "0")))
"""


@pytest.fixture()
def worker_env(tmp_path):
    """An environment with a private worker folder; every worker started from it is killed afterwards."""
    folder = tmp_path / "workers"
    env = {**os.environ, "ADBENCH_WORKER_DIR": str(folder), "ADBENCH_WORKER_IDLE": "30"}
    for name in ("ADBENCH_WORKER", "ADBENCH_WORKER_CHILD", *ISA_VARIABLES):  # a test may have pinned this process
        env.pop(name, None)
    yield env
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(str(folder) in part for part in cmd):
            proc.kill()


def run_script(tmp_path: Path, env: dict, *args: str, **extra: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, **extra}, timeout=300)
    lines = [line[4:] for line in proc.stdout.splitlines() if line.startswith("out:")]
    return proc, json.loads(lines[0]) if lines else None


def worker_pids(folder: Path) -> set[int]:
    pids = set()
    for log in folder.glob("*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("worker ") and "listening" in line:
                pids.add(int(line.split()[1]))
    return pids


def test_a_job_runs_in_a_fork_of_the_worker_as_it_would_in_its_own_process(tmp_path, worker_env):
    first, seen = run_script(tmp_path, worker_env, "--flag", "a b", X="one")
    assert first.returncode == 0, first.stderr
    assert seen["cwd"] == str(tmp_path) and seen["argv"] == ["--flag", "a b"] and seen["x"] == "one"
    assert "err: to stderr" in first.stderr  # the client's own stderr
    workers = worker_pids(Path(worker_env["ADBENCH_WORKER_DIR"]))
    assert len(workers) == 1 and seen["ppid"] in workers  # forked from the worker, not the client's process
    second, again = run_script(tmp_path, worker_env, X="two")
    assert second.returncode == 0 and again["x"] == "two" and again["ppid"] == seen["ppid"]
    assert again["pid"] != seen["pid"] and again["draw"] != seen["draw"]  # each job its own random state
    # What the jobs would import is already there: scipy.stats (0.7 s) and every registered method's module.
    methods = {target.partition(":")[0] for target in IMPLEMENTATIONS.values()}
    assert {"torch", "scipy.stats", "matplotlib.figure"} | methods <= set(seen["loaded"])


def test_exit_codes_and_tracebacks_reach_the_client(tmp_path, worker_env):
    proc, _ = run_script(tmp_path, worker_env, CODE="3")
    assert proc.returncode == 3
    proc, _ = run_script(tmp_path, worker_env, ACTION="fail")
    assert proc.returncode == 1 and "ValueError: the job failed on purpose" in proc.stderr
    proc, _ = run_script(tmp_path, worker_env, ACTION="die")
    assert proc.returncode == 1 and "ended without an exit status" in proc.stderr


def test_a_killed_client_takes_its_job_with_it(tmp_path, worker_env):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    pidfile = tmp_path / "job.pid"
    client = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**worker_env, "ACTION": "sleep", "PIDFILE": str(pidfile)})
    deadline = time.monotonic() + 120
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and client.poll() is None, "the job never started"
        time.sleep(0.1)
    job = int(pidfile.read_text())
    assert job != client.pid
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(job) and psutil.Process(job).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"job {job} outlived its killed client"
        time.sleep(0.1)


def test_another_kernel_pin_gets_another_worker_and_off_means_in_process(tmp_path, worker_env):
    _, native = run_script(tmp_path, worker_env)
    _, pinned = run_script(tmp_path, worker_env, ATEN_CPU_CAPABILITY="avx2")
    assert native["ppid"] != pinned["ppid"]
    assert len(worker_pids(Path(worker_env["ADBENCH_WORKER_DIR"]))) == 2
    for off in ({"ADBENCH_WORKER": "0"}, {"SLURM_JOB_ID": "1"}):
        proc = subprocess.Popen([sys.executable, str(tmp_path / "job.py")], cwd=tmp_path, stdout=subprocess.PIPE,
                                text=True, env={**worker_env, **off})
        out, _ = proc.communicate(timeout=120)
        assert json.loads(out.splitlines()[0][4:])["pid"] == proc.pid, off  # ran in the client itself


def test_a_worker_that_cannot_start_leaves_the_job_in_its_own_process(tmp_path, worker_env):
    folder = tmp_path / ("x" * 120)  # a socket path longer than AF_UNIX allows: no worker can listen there
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**worker_env, "ADBENCH_WORKER_DIR": str(folder)})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[0][4:])["pid"] == proc.pid
    assert "none could be started" in err and "running this job in its own process" in err


def test_an_idle_worker_exits_and_removes_its_socket(tmp_path, worker_env):
    env = {**worker_env, "ADBENCH_WORKER_IDLE": "1"}
    proc, seen = run_script(tmp_path, env)
    assert proc.returncode == 0
    deadline = time.monotonic() + 30
    while psutil.pid_exists(seen["ppid"]) and psutil.Process(seen["ppid"]).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the worker did not exit when idle"
        time.sleep(0.2)
    assert not list(Path(env["ADBENCH_WORKER_DIR"]).glob("*.sock"))
