"""A resident worker: the workflow's Python jobs run in processes forked from one that has already
imported torch and the suite, instead of each paying several seconds to start.

Every ``workflow/scripts/*.py`` starts with ``delegate(globals())``.  In the job's own process (the
*client*, started by Snakemake) that call connects to the worker of this environment (starting it when
there is none), hands over the job and waits; the worker forks a child, which takes the client's working
folder, environment, ``sys.path``, ``argv`` and umask, writes to the client's stdin/stdout/stderr (passed
over the socket), seeds the global random generators from the OS as a fresh process does, and runs the same script file; the
client exits with the child's exit code.  So a job's outputs, log, exit code and terminal output are what
they would be without the worker, and the numbers are identical (tests/test_worker.py; the SLURM test
compares a run without the worker with a local run through it).

* **Keyed by what imports read.**  A worker serves only clients whose Python, ``sys.path``, kernel pins
  (``adbench.methods.determinism.ISA_VARIABLES``), threading, CUDA and library-path
  variables, installed packages and suite source files (path, size, mtime) are the same as its own: any
  change starts another worker (``worker_key``).  A worker exits after ``IDLE_SECONDS`` without jobs.
* **Nothing outlives its job.**  The child watches the client's socket; when the client dies (Snakemake
  killed the job, or was killed) the child kills its own process group.  A child that dies without a
  status (the OOM killer) makes the client fail with a message.
* **Where it lives.**  ``<ADBENCH_WORKER_DIR or $TMPDIR/adbench-worker-<uid>>/<key>.sock``, with the
  worker's log (``<key>.log``: what it preloaded, each job it forked) beside it.
* **Off where it cannot help.**  ``ADBENCH_WORKER=0`` turns it off; it is off inside a SLURM job (one job
  per allocation: nothing to share, and processes must not outlive the allocation).  Without a worker (or
  when one cannot start: the reason is printed) the script runs in the client itself, as before.
* **Benchmarks.**  Snakemake's ``benchmark:`` files measure the client's process tree: the wall time
  (``s``) is the job's, but ``max_rss`` and ``cpu_time`` are the client's, not the child's.  The child
  prints its own peak RSS and CPU seconds at the end of the job's stderr (``worker:`` line); run with
  ``ADBENCH_WORKER=0`` for benchmark files that measure the jobs themselves.

This module imports only the standard library (the client must start fast); the worker imports
``preload_modules()`` once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import pickle
import resource
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

#: What the worker imports before it serves, besides every registered method's module (``preload_modules``):
#: what most jobs import.  A job imports the rest itself: pandas (which starts pyarrow's jemalloc thread,
#: so a fork would copy the allocator's state without it) and mlflow (which imports pandas).
#: scipy.stats (which the methods' module imports) alone took 0.7-1.1 s of every training job.
PRELOAD = ("torch", "torch._dynamo", "numpy", "scipy.ndimage", "scipy.stats", "PIL.Image", "matplotlib.figure",
           "tqdm", "snakemake.script", "adbench.jobs", "adbench.evaluation.evaluate", "adbench.methods.registry")
IDLE_SECONDS = 120  # a worker with no job for this long exits (ADBENCH_WORKER_IDLE overrides it)
START_SECONDS = 180  # how long a client waits for a new worker to listen
# Environment variables read when a library is imported (or that change which files are imported): a
# worker serves only clients that agree with it on every one of them.
KEY_VARIABLES = ("PATH", "PYTHONPATH", "PYTHONHASHSEED", "LD_LIBRARY_PATH", "LD_PRELOAD")
KEY_PREFIXES = ("ATEN_", "ONEDNN_", "DNNL_", "MKL_", "NPY_", "OMP_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "NVIDIA_",
                "TORCH", "PYTORCH_", "MALLOC_")
SOURCE_PACKAGES = ("adbench", "fod", "baselines")
_IN_WORKER = False  # True in a worker's child: delegate() then lets the script run
CHILD_MARK = "ADBENCH_WORKER_CHILD"  # set in a job's environment in the worker (its subprocesses never delegate)


def enabled() -> str | None:
    """None when jobs may use a worker, else why not."""
    if os.environ.get("ADBENCH_WORKER", "1") == "0":
        return "ADBENCH_WORKER=0"
    if "SLURM_JOB_ID" in os.environ:
        return "inside a SLURM job"
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "fork"):
        return "this platform has no Unix sockets or fork()"
    return None


def worker_key() -> str:
    """A digest of everything that decides what the worker's preloaded modules are (module docstring)."""
    root = Path(__file__).resolve().parent.parent
    sources = []
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            sources.append((str(path), stat.st_size, stat.st_mtime_ns))
    site = []  # the installed packages: an install or uninstall touches their folder
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")):
            with contextlib.suppress(OSError):
                site.append((entry, os.stat(entry).st_mtime_ns))
    env = sorted((k, v) for k, v in os.environ.items() if k in KEY_VARIABLES or k.startswith(KEY_PREFIXES))
    blob = json.dumps([sys.executable, sys.version, site, env, sources])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def worker_dir() -> Path:
    """Where the workers' sockets, locks and logs live (``ADBENCH_WORKER_DIR``, else a private temp folder)."""
    folder = Path(os.environ.get("ADBENCH_WORKER_DIR") or Path(tempfile.gettempdir()) / f"adbench-worker-{os.getuid()}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


# --- the client ---------------------------------------------------------------------------------------------

def delegate(script_globals: dict) -> None:
    """Run the calling script in the worker and exit with its exit code; return (so the script runs here)
    in the worker's child, and where the worker is off or cannot start (saying why on stderr)."""
    if _IN_WORKER or os.environ.get(CHILD_MARK) or enabled() is not None:
        return
    script = script_globals.get("__real_file__") or script_globals["__file__"]  # Snakemake's copy with its preamble
    try:
        conn = connect()
    except OSError as err:
        print(f"adbench worker: none could be started ({err}); running this job in its own process", file=sys.stderr)
        return
    with conn:
        request = {"script": str(script), "cwd": os.getcwd(), "env": dict(os.environ), "path": list(sys.path),
                   "argv": list(sys.argv), "umask": _umask()}
        fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
        request["fds"] = fds  # where the child puts the descriptors it receives
        payload = pickle.dumps(request)
        socket.send_fds(conn, [struct.pack("!I", len(payload))], fds)
        conn.sendall(payload)
        reply = _recv_exact(conn, 4)
    if reply is None:
        print("adbench worker: the job's process ended without an exit status (killed: by the OOM killer, or "
              "by a signal); rerun with ADBENCH_WORKER=0 to run the job in its own process", file=sys.stderr)
        sys.exit(1)
    sys.exit(struct.unpack("!i", reply)[0])


def connect() -> socket.socket:
    """A connection to the worker of this environment, started (under a lock, so only one starts) when
    there is none."""
    folder, key = worker_dir(), worker_key()
    path = folder / f"{key}.sock"
    with contextlib.suppress(OSError):
        return _connect(path)
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            return _connect(path)
        log = open(folder / f"{key}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "adbench.worker", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent)
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise OSError(f"the worker exited with code {proc.returncode} while starting; see {folder / f'{key}.log'}")
            with contextlib.suppress(OSError):
                return _connect(path)
            time.sleep(0.05)
        proc.kill()
        raise OSError(f"the worker did not listen within {START_SECONDS} s; see {folder / f'{key}.log'}")


def _connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --- the worker ---------------------------------------------------------------------------------------------

def preload_modules() -> tuple[str, ...]:
    """``PRELOAD`` and the module of every implementation in the method registry, in that order."""
    from adbench.methods.registry import IMPLEMENTATIONS

    return PRELOAD + tuple(dict.fromkeys(target.partition(":")[0] for target in IMPLEMENTATIONS.values()))


def serve(path: Path) -> None:
    """Import ``preload_modules()``, listen on ``path`` and fork a child per connection until idle for
    ``IDLE_SECONDS``."""
    modules = preload_modules()
    for module in modules:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    listener.bind(str(tmp))
    listener.listen(16)
    os.replace(tmp, path)  # clients see the socket only once it listens
    inode = path.stat().st_ino
    print(f"worker {os.getpid()} listening on {path} (preloaded {', '.join(modules)})", flush=True)
    idle = float(os.environ.get("ADBENCH_WORKER_IDLE", IDLE_SECONDS))
    children: set[int] = set()
    idle_since = time.monotonic()
    while True:
        ready, _, _ = select.select([listener], [], [], 1.0)
        children -= _reaped(children)
        if ready:
            conn, _ = listener.accept()
            pid = os.fork()
            if pid == 0:  # the job's process: it never returns to this loop
                code = 1
                try:
                    listener.close()
                    code = _child(conn)
                except BaseException:  # noqa: BLE001 - e.g. the job's folder is gone: the client reports it
                    traceback.print_exc()
                finally:
                    os._exit(code)
            conn.close()
            children.add(pid)
        if children or ready:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle or _replaced(path, inode):
            break
    with contextlib.suppress(OSError):
        if path.stat().st_ino == inode:
            path.unlink()
    print(f"worker {os.getpid()} exits (idle)", flush=True)


def _reaped(children: set[int]) -> set[int]:
    done = set()
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                done.add(pid)
    return done


def _replaced(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino != inode
    except OSError:
        return True


def _child(conn: socket.socket) -> int:
    """Take over one client's job (module docstring); returns the exit code after telling the client."""
    global _IN_WORKER
    _IN_WORKER = True
    os.setpgid(0, 0)  # this job's processes, killed together if the client goes
    msg, fds, _, _ = socket.recv_fds(conn, 4, 3)
    request = pickle.loads(_recv_exact(conn, struct.unpack("!I", msg)[0]))
    print(f"job {os.getpid()}: {request['script']} in {request['cwd']}", flush=True)  # to the worker's log
    for target in (0, 1, 2):
        if target not in request["fds"]:
            os.close(target)
    for target, fd in zip(request["fds"], fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    finished = threading.Event()
    threading.Thread(target=_die_with_client, args=(conn, finished), daemon=True).start()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[CHILD_MARK] = str(os.getpid())
    sys.path[:] = request["path"]
    sys.argv[:] = request["argv"]
    os.umask(request["umask"])
    _fresh_random_state()
    code = 0
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code is not None and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported as the script's own process would, then its exit code
        traceback.print_exc()
        code = 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"worker: job process {os.getpid()}: {usage.ru_utime + usage.ru_stime:.1f} CPU s, peak RSS "
          f"{usage.ru_maxrss / 1024:.0f} MiB (the benchmark file measures the client)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    finished.set()
    conn.sendall(struct.pack("!i", code))
    return code


def _die_with_client(conn: socket.socket, finished: threading.Event) -> None:
    """Kill this job (its whole process group) when the client's end of the socket closes first."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    if not finished.is_set():
        os.killpg(0, signal.SIGKILL)


def _fresh_random_state() -> None:
    """Seed torch's, numpy's and Python's global generators from the OS, as a fresh process does: no two
    jobs share the worker's state (a job that wants reproducible draws seeds them itself)."""
    import random

    import numpy as np
    import torch

    torch.seed()
    np.random.seed()
    random.seed()


if __name__ == "__main__":  # run as the module itself, so that a job's `delegate` sees _IN_WORKER
    from adbench.worker import serve as serve_module

    serve_module(Path(sys.argv[1]))
