"""The README's commands work as written: every command line of its shell code blocks is exercised.

Each command runs in a scratch copy of the working tree (the tracked and the untracked, not ignored files),
so nothing is written into the repository, and as far as it can run in a test:

* ``snakemake ...``: as written plus ``-n`` (a dry run), which must plan every target named (``--report F``
  needs a finished run: it is left out here, and ``tests/test_evidence.py`` builds it on the CI run);
* ``make X``: ``make -n X`` (the venv counts as installed); every command it prints must name a program
  that exists, its ``snakemake`` commands are dry-run and its Python commands run with ``--help``;
* ``python ...`` (a module or a script): with ``--help`` appended;
* ``pip install ...``: with ``--dry-run``;
* ``mlflow ui ...``: started, answered over HTTP on 127.0.0.1, then stopped;
* ``conda env create -f F``: F must parse and pin what pyproject.toml pins; created with ``--dry-run``
  only where conda is installed (skipped otherwise, with the reason).

A command no handler knows fails ``test_every_readme_command_has_a_handler`` and its own test: add a way
to test it to ``HANDLERS`` below.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the environment the README's commands run in (.venv/bin)
SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "zsh"}
FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL_BUILTINS = {"command", "test", "[", "echo", "cd", "true", "false", "exit", ":", "export", "set"}
TIMEOUT = 300  # s, per subprocess: a dry run takes about 5 s here


@dataclass(frozen=True)
class Command:
    text: str  # the command without its comment, continuation lines joined
    words: tuple[str, ...]
    comment: str
    line: int  # README line where it starts

    def __str__(self) -> str:
        return self.text


def readme_commands(text: str) -> list[Command]:
    """Every command line of the shell code blocks, in order."""
    commands = []
    for block in FENCE.finditer(text):
        if block.group(1).lower() not in SHELL_LANGUAGES:
            continue
        first_line = text.count("\n", 0, block.start(2)) + 1
        pending, start = "", None
        for offset, raw in enumerate(block.group(2).splitlines()):
            if start is None:
                start = first_line + offset
            if raw.rstrip().endswith("\\"):  # a continuation line
                pending += raw.rstrip()[:-1] + " "
                continue
            line, pending = pending + raw, ""
            words = shlex.split(line, comments=True)
            if words:
                code = shlex.join(words)
                comment = line.partition(" #")[2].strip() if "#" in line else ""
                commands.append(Command(code, tuple(words), comment, start))
            start = None
    return commands


COMMANDS = readme_commands(README.read_text())


# --- a scratch copy of the working tree -------------------------------------------------------------------

def _working_tree_files() -> list[str] | None:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({p for p in out.decode().split("\0") if p})


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The repository as a user has it before any run (no results, no .snakemake), with .venv installed."""
    dest = tmp_path_factory.mktemp("readme") / "repo"
    files = _working_tree_files()
    if files is None:  # not a git checkout: everything but what runs and installs create
        shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", ".snakemake", "build", "__pycache__", "*.egg-info", ".pytest_cache", "mlflow*",
            "data", "features", "embedded", "weights", "tables", "logs", "benchmarks"))
    else:
        for name in files:
            src, dst = ROOT / name, dest / name
            if not os.path.lexists(src):  # deleted in the working tree, not yet in the index
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                shutil.copy2(src, dst)  # keeps modification times: make sees the venv as up to date
    (dest / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return dest


def run(cmd: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    proc.output = proc.stdout + proc.stderr
    return proc


def tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def program(name: str, cwd: Path) -> str:
    """The executable the README means by `name`: a path as given, else the environment's, else PATH's."""
    if "/" in name:
        path = cwd / name
        assert path.is_file() and os.access(path, os.X_OK), f"{name} does not exist (or is not executable)"
        return str(path)
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert found, f"{name!r} is neither in {BIN} nor on PATH"
    return str(found)


def split_assignments(words: tuple[str, ...]) -> tuple[dict[str, str], tuple[str, ...]]:
    """`A=1 B=2 prog args` -> ({A: 1, B: 2}, (prog, args...))."""
    env = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, _, value = words[0].partition("=")
        env[key] = value
        words = words[1:]
    return env, words


# --- one handler per kind of command ----------------------------------------------------------------------

def exercise_snakemake(words: tuple[str, ...], cwd: Path, env: dict[str, str]) -> None:
    """As written, as a dry run; every target must be planned."""
    from snakemake.cli import get_argument_parser

    args = list(words[1:])
    parsed = get_argument_parser().parse_args(args)
    bad = [str(f) for f in parsed.configfile or [] if not (cwd / f).is_file()]
    assert not bad, (f"--configfile swallowed {bad}: Snakemake 9 reads every word after --configfile as a "
                     "config file, so name targets before it")
    if parsed.report:  # reads a finished run's outputs: tests/test_evidence.py builds it on the CI run;
        i = args.index("--report")  # here its targets must plan
        del args[i:i + 2]
    if not parsed.dryrun:
        args.insert(0, "-n")
    proc = run([program(words[0], cwd), *args], cwd, env={**os.environ, **env})
    assert proc.returncode == 0, tail(proc.output)
    for target in parsed.targets:
        if "/" in target or "." in target:  # a file: it is some job's output
            assert re.search(rf"^\s+output: .*\b{re.escape(target)}\b", proc.output, re.M), (
                f"the dry run does not produce {target}:\n{tail(proc.output)}")
        else:  # a rule: one job of it in the job stats
            assert re.search(rf"^{re.escape(target)}\s+\d+\s*$", proc.output, re.M), (
                f"the dry run plans no {target} job:\n{tail(proc.output)}")
    if parsed.targets or not (parsed.unlock or parsed.cleanup_metadata or parsed.list_rules):
        assert "This was a dry-run" in proc.output, tail(proc.output)


def exercise_python(words: tuple[str, ...], cwd: Path, env: dict[str, str]) -> None:
    """A module or script: it must exist and answer --help (running it could take long)."""
    args = list(words[1:])
    if args[:1] == ["-m"]:
        assert len(args) > 1, "python -m without a module"
    else:
        assert args and (cwd / args[0]).is_file(), f"no script {args[:1]} in the repository"
    proc = run([program(words[0], cwd), *args, "--help"], cwd, env={**os.environ, **env})
    assert proc.returncode == 0 and "usage" in proc.output.lower(), tail(proc.output)


def exercise_make(words: tuple[str, ...], cwd: Path, env: dict[str, str]) -> None:
    """`make -n`: the recipe it prints must only call programs that exist; snakemake/python ones are run."""
    stamp = ".venv/.installed"  # the Makefile's install stamp: the venv is installed (see pip install)
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # `make test`'s
    proc = run(["make", "-n", "-o", stamp, *words[1:]], cwd, env={**outer, **env})
    assert proc.returncode == 0, tail(proc.output)
    lines = [line for line in proc.stdout.splitlines() if line.strip() and not line.startswith("make")]
    assert lines, f"`{shlex.join(words)}` runs nothing:\n{proc.output}"
    for line in lines:
        inner_env, inner = split_assignments(tuple(shlex.split(line)))
        name = Path(inner[0]).name
        if inner[0] in SHELL_BUILTINS:
            continue
        program(inner[0], cwd)
        if name == "snakemake":
            exercise_snakemake(inner, cwd, {**env, **inner_env})
        elif re.fullmatch(r"python[\d.]*", name):
            exercise_python(inner, cwd, {**env, **inner_env})


def exercise_pip_install(words: tuple[str, ...], cwd: Path, env: dict[str, str]) -> None:
    """With --dry-run, in this environment (which is offline-capable here: pip.conf's local wheels)."""
    proc = run([sys.executable, "-m", "pip", *words[1:], "--dry-run"], cwd, env={**os.environ, **env})
    assert proc.returncode == 0, tail(proc.output)
    if "." in words or "-e." in words:
        assert re.search(r"^Would install .*fod-suite", proc.stdout, re.M), tail(proc.output)


def exercise_conda_env_create(words: tuple[str, ...], cwd: Path, env: dict[str, str]) -> None:
    """The environment file must parse and pin what pyproject.toml pins; conda itself only if installed."""
    args = list(words[3:])
    flag = next(f for f in ("-f", "--file") if f in args)
    spec = yaml.safe_load((cwd / args[args.index(flag) + 1]).read_text())
    assert spec.get("name"), "the environment needs a name (conda activate <name>)"
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))

    def normalise(requirement: str) -> str:
        return re.sub(r"[-_.]+", "-", requirement.lower().replace(" ", ""))

    project = tomllib.loads((cwd / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {normalise(r) for r in pip if not r.startswith("-e")} == {normalise(r) for r in project}
    assert "-e ." in pip, "the environment installs the suite itself"
    conda = shutil.which("conda")
    if conda is None:
        pytest.skip(f"conda is not installed here: checked only that {args[args.index(flag) + 1]} parses "
                    "and pins what pyproject.toml pins")
    proc = run([conda, *words[1:], "--dry-run", "--name", "fod-suite-readme-check"], cwd,
               env={**os.environ, **env})
    assert proc.returncode == 0, tail(proc.output)


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exercise_mlflow_ui(words: tuple[str, ...], cwd: Path, env: dict[str, str], comment: str = "",
                       wait_s: float = 90) -> None:
    """Started on 127.0.0.1 (on a free port if the README's is taken), answered over HTTP, then stopped."""
    args = list(words[2:])
    port_flag = next((f for f in ("--port", "-p") if f in args), None)
    port = int(args[args.index(port_flag) + 1]) if port_flag else 5000  # mlflow's default
    promised = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)", comment)
    if promised:
        assert int(promised.group(1)) == port, f"the README points to port {promised.group(1)}, mlflow uses {port}"
    for flag in ("--host", "-h"):
        assert flag not in args, "the README's mlflow ui listens beyond 127.0.0.1"
    if not _port_is_free(port):  # something else runs there: the same command on another port
        port = _free_port()
        if port_flag:
            args[args.index(port_flag) + 1] = str(port)
        else:
            args += ["--port", str(port)]
    log = cwd / f"mlflow-ui-{port}.log"
    with open(log, "w") as out:
        server = subprocess.Popen([program(words[0], cwd), "ui", *args], cwd=cwd, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env})
    try:
        deadline, status = time.monotonic() + wait_s, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status = response.status
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert status == 200, (f"mlflow ui gave {status} (exit code {server.poll()}) after "
                               f"{wait_s} s:\n{tail(log.read_text())}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass


Handler = Callable[..., None]
# The command's first words -> how to exercise it.  The longest matching key wins; the program is matched
# by its name (`.venv/bin/snakemake` is `snakemake`, `python3.11` is `python`).
HANDLERS: dict[tuple[str, ...], Handler] = {
    ("snakemake",): exercise_snakemake,
    ("make",): exercise_make,
    ("python",): exercise_python,
    ("pip", "install"): exercise_pip_install,
    ("conda", "env", "create"): exercise_conda_env_create,
    ("mlflow", "ui"): exercise_mlflow_ui,
}


def handler_for(words: tuple[str, ...]) -> Handler | None:
    if not words:
        return None
    name = Path(words[0]).name
    name = "python" if re.fullmatch(r"python[\d.]*", name) else "pip" if re.fullmatch(r"pip[\d.]*", name) else name
    key = (name, *words[1:])
    matches = [k for k in HANDLERS if key[:len(k)] == k]
    return HANDLERS[max(matches, key=len)] if matches else None


# --- the tests --------------------------------------------------------------------------------------------

def test_commands_are_extracted_from_the_shell_blocks():
    text = "x\n```sh\nmake run   # all of it\nsnakemake a \\\n  --cores 2  # two\n\n# only a comment\n```\n" \
           "```python\nimport os\n```\n"
    found = readme_commands(text)
    assert [c.words for c in found] == [("make", "run"), ("snakemake", "a", "--cores", "2")]
    assert found[0].comment == "all of it" and found[1].line == 4


def test_commands_are_dispatched_by_their_first_words():
    assert handler_for((".venv/bin/snakemake", "-n")) is exercise_snakemake
    assert handler_for(("python3.11", "-m", "pytest")) is exercise_python
    assert handler_for(("pip3", "install", "-e", ".")) is exercise_pip_install
    for unknown in (("docker", "run", "x"), ("pip", "download", "."), ("mlflow", "server"), ("conda", "install")):
        assert handler_for(unknown) is None, unknown  # its README test fails and asks for a handler


def test_every_readme_command_has_a_handler():
    assert COMMANDS, "no shell code block in README.md"
    unknown = [f"line {c.line}: {c}" for c in COMMANDS if handler_for(_command_words(c)) is None]
    assert not unknown, "add a way to test this README command (HANDLERS in tests/test_readme.py): " + \
        "; ".join(unknown)
    texts = {c.text for c in COMMANDS}
    assert {"make run", "make test"} <= texts  # the extraction still finds the two commands


def _command_words(command: Command) -> tuple[str, ...]:
    return split_assignments(command.words)[1]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.text for c in COMMANDS])
def test_readme_command_works_as_written(command: Command, checkout: Path):
    env, words = split_assignments(command.words)
    handler = handler_for(words)
    if handler is None:
        pytest.fail(f"add a way to test this README command (README.md line {command.line}): {command}")
    if handler is exercise_mlflow_ui:
        handler(words, checkout, env, comment=command.comment)
    else:
        handler(words, checkout, env)
