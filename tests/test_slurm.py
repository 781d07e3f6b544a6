"""Cluster execution: the CI config through ``--executor slurm`` with workflow/profiles/slurm, on a one-node
SLURM cluster started on this machine; ``sacct`` must list every job as COMPLETED and the tables must equal
a local run's.

What it needs, and skips with the reason without: Linux, root, and Debian's packages ``slurm-wlm``
(slurmctld, slurmd, sbatch, srun, sacct, ...), ``munge`` (SLURM's authentication), ``slurmdbd`` and
``mariadb-server``, installed here with apt-get when missing.  The last two are there because SLURM 22.05
keeps job records for ``sacct`` only through slurmdbd and its database (without them ``sacct`` answers
"Slurm accounting storage is disabled"), and the executor plugin reads job states with ``sacct``.

Everything listens on 127.0.0.1 (ports picked free) and lives in a scratch folder: the munge key and
socket, a private MariaDB, the SLURM configuration, state and logs.  One file goes elsewhere:
/etc/slurm/slurm.conf, a copy of the scratch configuration, because the plugin's job step calls ``srun``
with SLURM_CONF removed from its environment; it is written only where no other SLURM configuration is and
removed at the end.  Each daemon and job carries FOD_SLURM_TEST=<scratch folder> in its environment, and
teardown cancels the jobs, stops the daemons' process groups, then any process still carrying that mark.

The node advertises two GPUs backed by /dev/null and /dev/zero (``Flags=no_gpu_env``: no CUDA variables
are set) so that the profile's GPU request for fit_evaluate is scheduled and accounted as on a GPU cluster;
the jobs run on the CPU (config/ci.yaml sets device: cpu, and the SLURM run hides any GPU too), and the
tables are compared with the session's local run of the same config (the ``ci_run`` fixture).
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workflow_runs import seed_from_local_run, table_texts

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CI_CONFIG = ROOT / "config" / "ci.yaml"

PACKAGES = ("slurm-wlm", "munge", "slurmdbd", "mariadb-server")
# program -> the package that brings it
PROGRAMS = {
    "munged": "munge", "munge": "munge",
    "slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sbatch": "slurm-wlm", "srun": "slurm-wlm",
    "sacct": "slurm-wlm", "sacctmgr": "slurm-wlm", "sinfo": "slurm-wlm", "squeue": "slurm-wlm",
    "scancel": "slurm-wlm", "slurmdbd": "slurmdbd",
    "mariadbd": "mariadb-server", "mariadb-install-db": "mariadb-server", "mariadb": "mariadb-server",
}
APT_TIMEOUT = 900  # s, per apt-get call
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Written by fod-suite's tests/test_slurm.py for a one-node test cluster; removed when the test ends."
MARK = "FOD_SLURM_TEST"  # environment variable carried by every process the test starts
LOCK = Path(tempfile.gettempdir()) / "fod-suite-test-slurm.lock"
CLUSTER = "fodtest"
RUN_TIMEOUT = 1500  # s, for each of the two workflow runs (together 12 minutes here, on a loaded machine)

pytestmark = pytest.mark.slurm


def which(program: str) -> str | None:
    return shutil.which(program, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def read_tail(path: Path, n: int = 3000) -> str:
    try:
        return tail(path.read_text(errors="replace"), n)
    except OSError:
        return f"({path} not written)"


# --- installing the packages ------------------------------------------------------------------------------

@contextlib.contextmanager
def no_service_starts():
    """Keep the packages' install scripts from starting system-wide daemons (munge, slurmctld, MariaDB)
    with the system's configuration: a policy-rc.d that forbids it, only while apt-get runs and only where
    there is none."""
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# fod-suite tests/test_slurm.py: no service starts while it installs\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        yield
    finally:
        if created:
            policy.unlink(missing_ok=True)


def apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", *args], capture_output=True, text=True,
                          timeout=APT_TIMEOUT, env=env)


def install_packages() -> str | None:
    """Install what is missing; None when every program is there, else why it cannot be."""
    missing = sorted({package for program, package in PROGRAMS.items() if which(program) is None})
    if not missing:
        return None
    if which("apt-get") is None:
        return f"the SLURM test needs the Debian packages {', '.join(missing)} and there is no apt-get here"
    install = ("install", "-y", "--no-install-recommends", *PACKAGES)
    try:
        with no_service_starts():
            proc = apt_get(*install)
            if proc.returncode != 0:  # stale package lists: update once, then try again
                apt_get("update")
                proc = apt_get(*install)
    except subprocess.TimeoutExpired as err:
        return f"apt-get did not finish within {APT_TIMEOUT} s ({shlex.join(map(str, err.cmd))})"
    if proc.returncode != 0:
        return (f"apt-get install {' '.join(PACKAGES)} failed (exit code {proc.returncode}): "
                f"{tail(proc.stdout + proc.stderr, 600)}")
    still = sorted(program for program in PROGRAMS if which(program) is None)
    if still:
        return f"apt-get installed {' '.join(PACKAGES)} but {', '.join(still)} are still missing"
    return None


@pytest.fixture(scope="module")
def slurm_packages():
    """Skips the module's tests, with the reason, where SLURM cannot be installed or started here."""
    if not sys.platform.startswith("linux"):
        pytest.skip(f"the SLURM test runs on Linux only (this is {sys.platform})")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test must run as root: it installs slurm-wlm and munge with apt-get and starts "
                    "slurmctld, slurmd, slurmdbd and munged")
    reason = install_packages()
    if reason:
        pytest.skip(reason)
    if SYSTEM_CONF.exists() and not SYSTEM_CONF.read_text(errors="replace").startswith(MARKER):
        pytest.skip(f"{SYSTEM_CONF} exists (a real SLURM installation?): the test does not replace it")


# --- the cluster ------------------------------------------------------------------------------------------

@dataclass
class Cluster:
    root: Path  # the scratch folder
    env: dict[str, str]  # for every command that talks to the cluster
    host: str
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], capture_output=True, text=True,
                              timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n"
                                 f"{tail(proc.stdout + proc.stderr)}\n{self.diagnostics()}")
        return proc

    def start(self, name: str, *cmd: str) -> None:
        log = self.root / "log" / f"{name}.out"
        with open(log, "w") as out:
            self.daemons[name] = subprocess.Popen([which(cmd[0]), *cmd[1:]], stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self.logs[name] = log

    def wait_for(self, what: str, ready, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                                         f"{self.diagnostics()}")
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                if ready():
                    return
            time.sleep(0.5)
        raise AssertionError(f"no {what} after {timeout} s:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        files = list(self.logs.items()) + [(p.name, p) for p in sorted((self.root / "log").glob("*.log"))]
        return "\n".join(f"--- {name}: {read_tail(path, 1500)}" for name, path in files)


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def slurm_conf(root: Path, host: str, ports: dict[str, int], munge_socket: Path) -> str:
    """A one-node cluster on 127.0.0.1.  The node advertises at least 2 CPUs and 16 GB
    (SlurmdParameters=config_overrides), so that the profile's largest requests (extract_features: 2 CPUs;
    fit_evaluate: 8 GB, 16 GB on a retry) fit on a small machine too; no cgroups, so nothing is enforced."""
    cpus = max(2, os.cpu_count() or 1)
    memory = max(16384, int(memory_mb() * 0.9))
    return f"""{MARKER}
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports['slurmdbd']}
AccountingStoragePass={munge_socket}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(cluster: Cluster) -> None:
    """Start every daemon (``cluster.daemons``, so that teardown finds them even after a failure)."""
    root, env = cluster.root, cluster.env
    host = cluster.host
    for folder in ("munge", "run", "log", "state", "spool", "db"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ports = dict(zip(("slurmctld", "slurmd", "slurmdbd", "mariadb"), free_ports(4)))

    # munge, with its own key and socket
    key = root / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    (root / "munge").chmod(0o700)
    munge_socket = root / "run" / "munge.socket"
    cluster.start("munged", "munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                  f"--pid-file={root / 'run' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                  f"--seed-file={root / 'munge' / 'seed'}", "--num-threads=10")
    cluster.wait_for("munge socket", lambda: munge_socket.exists() and subprocess.run(
        f"{which('munge')} -n -S {munge_socket} | {which('unmunge')} -S {munge_socket}", shell=True,
        capture_output=True, timeout=10).returncode == 0)

    # a private MariaDB for slurmdbd, on 127.0.0.1
    datadir, db_socket = root / "db" / "data", root / "run" / "mysqld.sock"
    install = subprocess.run([which("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}", "--user=root",
                              "--auth-root-authentication-method=socket", "--skip-test-db"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, tail(install.stdout + install.stderr)
    cluster.start("mariadbd", "mariadbd", "--no-defaults", f"--datadir={datadir}", "--user=root",
                  f"--socket={db_socket}", "--bind-address=127.0.0.1", f"--port={ports['mariadb']}",
                  f"--pid-file={root / 'run' / 'mysqld.pid'}", f"--log-error={root / 'log' / 'mariadb.log'}",
                  "--skip-name-resolve", "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900")

    def sql(statement: str) -> subprocess.CompletedProcess:
        return subprocess.run([which("mariadb"), "--no-defaults", f"--socket={db_socket}", "-u", "root", "-e",
                               statement], capture_output=True, text=True, timeout=20, env=env)

    cluster.wait_for("MariaDB", lambda: db_socket.exists() and sql("SELECT 1").returncode == 0)
    password = secrets.token_hex(16)
    made = sql(f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
               "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';")
    assert made.returncode == 0, made.stderr

    # the configuration: in the scratch folder, and its copy where the job steps' srun looks
    conf = slurm_conf(root, host, ports, munge_socket)
    (root / "slurm.conf").write_text(conf)
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null Flags=no_gpu_env\n"
                                    f"NodeName={host} Name=gpu File=/dev/zero Flags=no_gpu_env\n")
    dbd = root / "slurmdbd.conf"
    dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['slurmdbd']}
SlurmUser=root
LogFile={root}/log/slurmdbd.log
PidFile={root}/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mariadb']}
StorageUser=slurm
StoragePass={password}
StorageLoc=slurm_acct_db
""")
    dbd.chmod(0o600)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.write_text(conf)

    # accounting, then the controller and the node
    cluster.start("slurmdbd", "slurmdbd", "-D")
    cluster.wait_for("slurmdbd", lambda: cluster.run("sacctmgr", "-n", "-P", "list", "cluster", timeout=20,
                                                     check=False).returncode == 0)
    cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
    cluster.start("slurmctld", "slurmctld", "-D")
    cluster.start("slurmd", "slurmd", "-D", "-N", host)
    cluster.wait_for("idle node", lambda: cluster.run("sinfo", "-h", "-N", "-o", "%T", timeout=20,
                                                      check=False).stdout.split() == ["idle"])


def marks() -> dict[int, str]:
    """pid -> scratch folder, for every process a run of this test started (FOD_SLURM_TEST=<folder>)."""
    prefix = f"{MARK}=".encode()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(prefix) and int(pid) != os.getpid():
                    found[int(pid)] = item[len(prefix):].decode(errors="replace")
    return found


def marked_processes(root: Path) -> list[int]:
    """Processes started by this test run."""
    return [pid for pid, folder in marks().items() if folder == str(root)]


def remove_leftovers() -> None:
    """What an earlier run killed before its teardown left: its daemons and jobs (they carry its mark),
    its scratch folder and its copy of slurm.conf.  Called while holding the lock, so no other run is
    alive."""
    scratch = Path(tempfile.gettempdir())
    for pid, folder in marks().items():
        if Path(folder).parent == scratch and Path(folder).name.startswith("fod-slurm-"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for folder in scratch.glob("fod-slurm-*"):
        shutil.rmtree(folder, ignore_errors=True)
    if SYSTEM_CONF.exists() and SYSTEM_CONF.read_text(errors="replace").startswith(MARKER):
        SYSTEM_CONF.unlink()


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group of ``proc`` (its own session), SIGKILL after ``grace`` seconds.  Only
    while ``proc`` itself is alive, so that the group is certainly still its own; what it leaves behind
    carries the test's mark (``marked_processes``)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def stop_cluster(cluster: Cluster) -> None:
    with contextlib.suppress(Exception):
        jobs = cluster.run("squeue", "-h", "-o", "%i", timeout=20, check=False).stdout.split()
        if jobs:
            cluster.run("scancel", *jobs, timeout=20, check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and cluster.run("squeue", "-h", "-o", "%i", timeout=20,
                                                              check=False).stdout.split():
                time.sleep(1)
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
        if name in cluster.daemons:
            stop_group(cluster.daemons[name])
    for pid in marked_processes(cluster.root):  # job steps and anything else they started
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm_cluster(slurm_packages, tmp_path_factory):
    """A running one-node cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd), stopped and removed after
    the module's tests; one at a time on this machine."""
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + 1200
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another SLURM test held {LOCK} for 20 minutes")
                time.sleep(2)
        if SYSTEM_CONF.exists() and not SYSTEM_CONF.read_text(errors="replace").startswith(MARKER):
            pytest.skip(f"{SYSTEM_CONF} exists (a real SLURM installation?): the test does not replace it")
        remove_leftovers()
        root = Path(tempfile.mkdtemp(prefix="fod-slurm-"))  # short: socket paths are limited to 107 bytes
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), MARK: str(root)}
        env.pop("SLURM_JOB_ID", None)
        cluster = Cluster(root, env, socket.gethostname().split(".")[0])
        try:
            start_cluster(cluster)
            yield cluster
        finally:
            stop_cluster(cluster)
            if SYSTEM_CONF.exists() and SYSTEM_CONF.read_text(errors="replace").startswith(MARKER):
                SYSTEM_CONF.unlink()
            shutil.rmtree(root, ignore_errors=True)


# --- the workflow runs ------------------------------------------------------------------------------------

def snakemake_command(workdir: Path, *args: str) -> list[str]:
    # targets before --configfile, which takes every following word as a file
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args,
            "--configfile", str(CI_CONFIG)]


@dataclass
class Run:
    work: Path
    proc: subprocess.Popen
    log: Path

    def wait(self, timeout: float = RUN_TIMEOUT) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(self.proc, grace=5)
            raise AssertionError(f"the run in {self.work} did not finish within {timeout} s:\n"
                                 f"{read_tail(self.log)}") from None
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_group(self.proc, grace=5)


def start_run(work: Path, cmd: list[str], env: dict[str, str]) -> Run:
    log = work.parent / f"{work.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    return Run(work, proc, log)


def cpu_only(env: dict[str, str]) -> dict[str, str]:
    """Both runs on the CPU, also on a host with a GPU (config `device: auto` would pick it)."""
    return {**env, "CUDA_VISIBLE_DEVICES": ""}


def planned_jobs(output: str) -> collections.Counter:
    """The 'Job stats' table Snakemake prints: rule -> number of jobs."""
    block = re.search(r"^Job stats:\n(.*?)^total\s+\d+", output, re.M | re.S)
    assert block, f"no job stats in the output:\n{tail(output)}"
    return collections.Counter({name: int(count) for name, count in
                                re.findall(r"^(\w+)\s+(\d+)\s*$", block.group(1), re.M)})


def sacct_jobs(cluster: Cluster, run_id: str, since: str) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "State", "ExitCode", "Comment", "AllocTRES", "NodeList", "Partition"]
    proc = cluster.run("sacct", "-n", "-P", "-X", "-a", "-S", since, f"--name={run_id}",
                       f"--format={','.join(fields)}")
    return [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]


def rule_of(comment: str) -> str:
    """The plugin submits each job with --comment rule_<rule>[_wildcards_<values>]."""
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)
    assert match, f"unexpected job comment {comment!r}"
    return match.group(1)


# The category the SLURM run computes itself; the local run's other categories are copied in (their data,
# features and fits, with their times), so the cluster run redoes half the CI config's work, not all of it.
ON_CLUSTER = "brick"
# The Snakefile's localrules: seconds of bookkeeping each, run where snakemake runs.
LOCAL_RULES = ("category_summary", "track_category", "table", "track_all_tables", "html_report", "reproduction")


def test_ci_config_runs_under_slurm_with_the_tables_of_a_local_run(ci_run, slurm_cluster, tmp_path_factory):
    """The CI config through `--executor slurm` and the slurm workflow profile, on a copy of the local run
    holding every category but ``ON_CLUSTER``: every job of the plan (that category's feature extraction and
    fits, the significance tests and the figures) but the bookkeeping ``LOCAL_RULES`` (summaries, tables,
    MLflow, report) ran as a SLURM job (sacct: COMPLETED, exit code 0),
    training jobs with the profile's GPU and the extraction jobs with 2 CPUs, the kernels pinned as in the
    local run, and the tables equal the local run's."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 120))
    work = tmp_path_factory.mktemp("slurm")
    seed_from_local_run(ci_run, work, redo=ON_CLUSTER)
    cmd = snakemake_command(work, "--workflow-profile", str(PROFILE),
                            "--slurm-init-seconds-before-status-checks", "2",  # short jobs: check often
                            "all_tables")
    run = start_run(work, cmd, cpu_only(slurm_cluster.env))
    try:
        output = run.wait()
    finally:
        run.stop()
    assert run.proc.returncode == 0, f"{tail(output, 6000)}\n{slurm_cluster.diagnostics()}"
    assert f"workflow specific profile {PROFILE}" in output
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)

    # every job of the plan ran under SLURM and completed, except the Snakefile's localrules (the bookkeeping
    # jobs and the target), which Snakemake ran on this host and printed as "localrule"
    planned = planned_jobs(output)
    local = collections.Counter(re.findall(r"^localrule (\w+):$", output, re.M))
    assert local == {rule: planned[rule] for rule in LOCAL_RULES + ("all_tables",)}, (local, planned)
    expected = planned - local
    assert all(expected[rule] for rule in ("extract_features", "fit_evaluate", "significance", "figures")), expected
    assert all(f"category={ON_CLUSTER}" in line for line in output.splitlines()
               if "wildcards:" in line and "category=" in line and "method=" in line), "a copied fit ran again"
    deadline = time.monotonic() + 60  # the controller sends job records to slurmdbd asynchronously
    while True:
        jobs = sacct_jobs(slurm_cluster, run_id, since)
        if sum(expected.values()) <= len(jobs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    table = "\n".join("|".join(job.values()) for job in jobs)
    assert collections.Counter(rule_of(job["Comment"]) for job in jobs) == expected, table
    assert all(job["State"] == "COMPLETED" and job["ExitCode"] == "0:0" for job in jobs), table
    assert {job["NodeList"] for job in jobs} == {slurm_cluster.host}, table
    for job in jobs:
        rule, tres = rule_of(job["Comment"]), job["AllocTRES"]
        assert ("gres/gpu=1" in tres) == (rule == "fit_evaluate"), f"{rule}: {tres}"
        assert f"cpu={2 if rule == 'extract_features' else 1}" in tres.split(","), f"{rule}: {tres}"

    # the SLURM jobs re-read the Snakefile, which pins the CPU kernels: the runs record the same ones
    cells = sorted((ci_run / "results").glob("*/*/*/seed*/metrics.json"))
    assert cells
    for metrics in cells:
        local = json.loads(metrics.read_text())
        remote = json.loads((work / metrics.relative_to(ci_run)).read_text())
        kernels = ("cpu_isa", "cpu_capability")
        assert [remote[k] for k in kernels] == [local[k] for k in kernels], metrics.relative_to(ci_run)
    assert table_texts(work) == table_texts(ci_run)
    print(f"{len(jobs)} SLURM jobs COMPLETED (sacct) on the one-node cluster {CLUSTER}; tables equal the local run's")
