"""The README's commands, really run: every command of its shell code blocks, and every command its prose
gives inline (`make bench`, `snakemake html_report`), runs as written, at a size a test can afford.

Where.  Each command runs in a scratch copy of the working tree (the tracked and the untracked, not ignored
files; ``.venv`` is the tests' environment, counted as installed; ``PYTHONPATH`` points at the copy), so
nothing is written into the repository.  A command that does work runs in a copy that already holds the
session's finished CI run (the ``ci_run`` fixture, ``snakemake all_tables --configfile config/ci.yaml``: its
``results/`` and ``.snakemake/`` copied in), i.e. in a clone after ``make run CONFIG=config/ci.yaml``.  It
must leave every file of the repository as it was, and every table and every cell's numbers as the CI run
made them.  README commands that make the same run (``snakemake all_tables`` at the CI size is the README's
``snakemake all_tables --configfile config/ci.yaml``) run once.

How.  Never with ``--help`` appended (argparse exits 0 after any flag): the README's own argument list runs,
so a misspelt flag fails (``test_a_misspelt_flag_fails_its_command``).  Commands run for real:

* ``snakemake``: a dry run (``-n``) as written; any other at the CI size, ``--configfile config/ci.yaml``
  appended unless it names a config file; the files it names are deleted first and must come back (with
  the CI run's numbers, as above);
* ``make X``, ``python ...``: as written, or in the tiny form ``TINY`` gives with its reason (``make run
  CONFIG=config/ci.yaml CORES=2``, ``make bench BENCH_ARGS=--quick``, a script's ``--quick``), which keeps
  every flag of the README's; every ``--out`` file (of the make recipe) must be written; ``--device cuda``
  where torch finds no CUDA device must stop with the message that says so; ``PLACEHOLDERS`` fills in
  ``<run>``-style words;
* ``mlflow ui``: started on the CI run's store, asked over HTTP for every current run of the experiment, then
  stopped.

``DRY_RUN_ONLY`` lists, each with its reason, the commands that only get their tool's own dry run
(``snakemake -n``; ``make -n -W pyproject.toml``, whose recipe's programs, scripts and modules must exist and
whose Snakemake commands are dry-run too; ``pytest --collect-only``; ``pip --dry-run``; conda's ``--dry-run``
where conda is installed).  ``NOT_COMMANDS`` lists inline spans that are not commands to run (templates,
program names).  A command no handler knows fails ``test_every_readme_command_has_a_handler`` and its own
test.
"""
from __future__ import annotations

import contextlib
import io
import json
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
INLINE = re.compile(r"`([^`]+)`")  # an inline code span of the prose (it may wrap onto the next line)
PROGRAMS = {"make", "python", "snakemake", "pip", "mlflow", "conda", "pytest"}  # what makes a span a command
SHELL_BUILTINS = {"command", "test", "[", "echo", "cd", "true", "false", "exit", ":", "export", "set"}
SHELL_OPERATORS = {"||", "&&", ";", "|", "{", "}", "(", ")"}
TIMEOUT = 600  # s, per subprocess
CI_CONFIG = "config/ci.yaml"
STAMP = ".venv/.installed"  # the Makefile's install stamp

# Commands that only get their tool's dry run, and why (README text, as `shlex.join` writes it).  A reason
# naming `tests/<file>.py::<test>` says which test runs the command (or its CI-sized form) for real; that test
# must exist (test_exceptions_name_readme_commands).
SLURM_REASON = ("needs a SLURM cluster (sbatch, sacct); its CI-sized form runs for real on a one-node cluster in "
                "tests/test_slurm.py::test_ci_config_runs_under_slurm_with_the_tables_of_a_local_run")
DRY_RUN_ONLY: dict[str, str] = {
    "make test": "runs the whole suite, this test included: it would recurse",
    "make test TEST_WORKERS=0": "runs the whole suite in one process, this test included: it would recurse",
    "make install": "(re)installs the environment the tests run in (.venv)",
    "make reference": (
        "a fresh pinned run of the CI config in build/reference (about 3 min: the ci_run fixture's run again), "
        "then `python -m adbench.operations.golden write`; tests/test_golden.py::"
        "test_the_ci_run_reproduces_its_golden_files_exactly compares ci_run with the files it writes"),
    "make reference-default": "a fresh run of the default config (as long as make run, about 9 min)",
    "make reseeding": "five runs of the CI config (seeds 0-4), about 15 min",
    "make reseeding METHODS=patchsvdd": (
        "one method's fits with seeds 0-4, a few minutes; tests/test_determinism.py::"
        "test_remeasuring_one_method_replaces_only_its_rows_in_place checks what it targets and writes"),
    "python benchmarks/bench_run.py --out results/benchmarks/run.json": (
        "three from-scratch runs of the default config, about 40 min; that the worker changes no number is run "
        "for real by tests/test_workflow.py::test_rerunning_one_category_reruns_only_its_jobs_and_reproduces_its_"
        "numbers; that flushing subnormals changed none was checked against both golden files when it came in "
        "(adbench/methods/determinism.py), and the script itself stops when its runs' tables differ"),
    "pip install -e .": ("installs into the environment the tests run in: even with --prefix, pip first "
                         "uninstalls that environment's fod-suite"),
    "conda env create -f environment.yml": "needs conda and its package channels; with conda here: --dry-run",
    "snakemake --cores 2 --forceall results/embedded/brick/summary.csv": (
        "its CI-sized form (these words with --configfile config/ci.yaml, on the finished CI run) runs for real "
        "in tests/test_workflow.py::test_rerunning_one_category_reruns_only_its_jobs_and_reproduces_its_numbers "
        "(every brick job again, about 1.5 min): not run twice"),
    "snakemake all_tables --workflow-profile workflow/profiles/slurm": SLURM_REASON,
    "snakemake all_tables --workflow-profile workflow/profiles/slurm --configfile config/ci.yaml": SLURM_REASON,
    "python -m pytest -m slurm": ("the SLURM test (several minutes), in a second pytest session that runs the CI config "
                                  "again: collected only"),
    "python -m pytest -m 'not slurm'": "runs the whole suite but the SLURM test, this test included: it would recurse",
}

# Inline code spans that start like a command but are not one to run as written.
NOT_COMMANDS: dict[str, str] = {
    "make PYTHON=/path/to/python3.11 ...": "a template: the reader's own python3.11 and make goal",
    "snakemake 'download_<name>'": ("a template: <name> is a dataset with a url: (none in the shipped configs; "
                                    "tests/test_download.py downloads from a loopback server)"),
    "mlflow ui": "names the program of the code block's `mlflow ui --backend-store-uri ...`",
    "mlflow server": "names the program tests/test_mlflow_server.py starts",
    ".venv/bin/python -m snakemake": "what the SLURM jobs run on the compute nodes",
    "pytest -ra": "names pytest's option that prints skip reasons (make test's pytest has it: pyproject.toml)",
}

# README command -> the tiny form the test runs instead, and why.  A tiny form keeps every flag of the
# README's command (test_tiny_forms_keep_every_flag), so a misspelt one still fails.
TINY: dict[str, tuple[str, str]] = {
    "make run": ("make run CONFIG=config/ci.yaml CORES=2",
                 "the default config takes 11.5 min; this is the CI config, the ci_run fixture's command"),
    "ADBENCH_WORKER=0 make run": ("ADBENCH_WORKER=0 make run CONFIG=config/ci.yaml CORES=2",
                                  "the default config without the resident worker takes 15 min; this is the CI config"),
    "make bench": ("make bench BENCH_ARGS=--quick", "about 7 min at full size"),
    "make estimate": ("make estimate 'BENCH_ARGS=--quick --methods patchcore,mkd'",
                      "measures every method at the paper's network sizes and 256 px first (many minutes; even "
                      "at --quick's 64 px, DRAEM's and FOD's paper widths take a minute): two methods, one trained"),
    "python benchmarks/bench_isa_cost.py": ("python benchmarks/bench_isa_cost.py --quick",
                                            "every method 3 times under each kernel setting, about 8 min"),
    "python benchmarks/bench_devices.py --device cuda --out results/benchmarks/devices.json": (
        "python benchmarks/bench_devices.py --device cuda --out results/benchmarks/devices.json --quick",
        "60 images at 256 px, 3 epochs of every method"),
    "python benchmarks/bench_devices.py --device cuda --budget paper --out results/benchmarks/devices_cuda.json": (
        "python benchmarks/bench_devices.py --device cuda --budget paper --out results/benchmarks/devices_cuda.json "
        "--quick", "every method at the paper's network sizes, 60 images at 256 px, 3 epochs"),
    "python -m adbench.operations.golden check --results results --reference results/reference/default": (
        "python -m adbench.operations.golden check --results results --reference results/reference/ci --config config/ci.yaml",
        "needs a finished default run (make run, 11.5 min): the same check of the finished CI run against the "
        "CI config's golden files"),
}
# Placeholders of the README's commands -> what they stand for in the scratch copy with the CI run.
PLACEHOLDERS = {
    "<run>": ".",  # a finished run's folder: the copy itself
    "<k>": "0",  # the seed that run used
}


@dataclass(frozen=True)
class Command:
    text: str  # the command without its comment, continuation lines joined
    words: tuple[str, ...]
    comment: str
    line: int  # README line where it starts
    inline: bool = False  # from an inline code span of the prose, not a code block

    def __str__(self) -> str:
        return self.text


def program_name(word: str) -> str:
    """`.venv/bin/snakemake` -> snakemake, `python3.11` -> python, `pip3` -> pip."""
    name = Path(word).name
    return "python" if re.fullmatch(r"python[\d.]*", name) else "pip" if re.fullmatch(r"pip[\d.]*", name) else name


def split_assignments(words: tuple[str, ...]) -> tuple[dict[str, str], tuple[str, ...]]:
    """`A=1 B=2 prog args` -> ({A: 1, B: 2}, (prog, args...))."""
    env = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, _, value = words[0].partition("=")
        env[key] = value
        words = words[1:]
    return env, words


def block_commands(text: str) -> list[Command]:
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
                comment = line.partition(" #")[2].strip() if "#" in line else ""
                commands.append(Command(shlex.join(words), tuple(words), comment, start))
            start = None
    return commands


def inline_spans(text: str) -> list[Command]:
    """Every inline code span of the prose that starts like a command of this project (a program of
    ``PROGRAMS`` and at least one argument), in order."""
    prose = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # code blocks blanked, lines kept
    spans = []
    for match in INLINE.finditer(prose):
        if "\n\n" in match.group(1):  # a stray backtick across paragraphs
            continue
        try:
            words = tuple(shlex.split(" ".join(match.group(1).split())))
        except ValueError:
            continue
        program = split_assignments(words)[1][:1]
        if len(words) >= 2 and program and program_name(program[0]) in PROGRAMS:
            spans.append(Command(shlex.join(words), words, "", text.count("\n", 0, match.start()) + 1, inline=True))
    return spans


def readme_commands(text: str) -> list[Command]:
    """The code blocks' commands, then the inline ones that are commands (not in ``NOT_COMMANDS``) and not
    already in a code block; each text once."""
    commands, seen = [], set()
    for command in block_commands(text) + [c for c in inline_spans(text) if c.text not in NOT_COMMANDS]:
        if command.text not in seen:
            seen.add(command.text)
            commands.append(command)
    return commands


COMMANDS = readme_commands(README.read_text())


# --- scratch copies of the working tree -------------------------------------------------------------------

def _working_tree_files() -> list[str] | None:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted({p for p in out.decode().split("\0") if p})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The repository as a user has it before any run (no results, no .snakemake), with .venv installed.
    Nothing runs in it: each test works in a copy of it (``fresh_copy``, ``finished_copy``)."""
    dest = tmp_path_factory.mktemp("readme") / "repo"
    files = _working_tree_files()
    if files is None:  # not a git checkout: everything but what runs and installs create

        def generated(folder: str, names: list[str]) -> set[str]:
            made = {".git", ".venv", ".snakemake", "build", "__pycache__", ".pytest_cache"}
            results = Path(folder) == ROOT / "results"  # its committed part: the paper's numbers, the references
            return {n for n in names if n in made or n.endswith(".egg-info") or results and n not in (
                "paper", "reference")}

        shutil.copytree(ROOT, dest, symlinks=True, ignore=generated)
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


def fresh_copy(pristine: Path, dest: Path) -> Path:
    shutil.copytree(pristine, dest, symlinks=True)
    return dest


def finished_copy(pristine: Path, ci_run: Path, dest: Path) -> Path:
    """A fresh copy holding the CI run's results and Snakemake's records of it (modification times kept)."""
    fresh_copy(pristine, dest)
    for name in ("results", ".snakemake"):
        shutil.copytree(ci_run / name, dest / name, symlinks=True, dirs_exist_ok=True)
    return dest


def environment(cwd: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``env``, the copy's code first on ``PYTHONPATH``."""
    full = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # `make test`'s
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [full.get("PYTHONPATH")])])
    return full


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd`` (``environment``)."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=environment(cwd, env))
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


def option_values(words: list[str] | tuple[str, ...], flag: str) -> list[str]:
    """The values of every `flag VALUE` / `flag=VALUE` in ``words``."""
    values = [b for a, b in zip(words, words[1:]) if a == flag]
    return values + [w.partition("=")[2] for w in words if w.startswith(flag + "=")]


# --- snakemake --------------------------------------------------------------------------------------------

def parse_snakemake(args: list[str]):
    """Snakemake's own parse of ``args``; an error (a misspelt flag) fails the test with its message."""
    from snakemake.cli import get_argument_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return get_argument_parser().parse_args(args)
    except SystemExit:
        raise AssertionError(f"snakemake rejects {shlex.join(args)}:\n{err.getvalue()}") from None


def is_file_target(target: str) -> bool:
    return "/" in target or "." in target


def exercise_snakemake(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False, **_) -> None:
    """A dry run (``-n``, in the command or for a ``DRY_RUN_ONLY`` one): every target must be planned.
    Otherwise for real (on the finished CI run, at its size: ``invocation``): the files it names are deleted
    first and must come back, a report must be written."""
    args = list(words[1:])
    parsed = parse_snakemake(args)
    bad = [str(f) for f in parsed.configfile or [] if not (cwd / f).is_file()]
    assert not bad, (f"--configfile swallowed {bad}: Snakemake 9 reads every word after --configfile as a "
                     "config file, so name targets before it")
    if parsed.dryrun or dry:
        dry_run_snakemake(words, args, parsed, cwd, env)
        return
    files = [t for t in parsed.targets if is_file_target(t)]
    for target in files:  # what the command names must be made again, not found
        (cwd / target).unlink(missing_ok=True)
    proc = run([program(words[0], cwd), *args], cwd, env)
    assert proc.returncode == 0, tail(proc.output)
    for target in files:
        assert (cwd / target).is_file(), f"{target} was not made:\n{tail(proc.output)}"
    if parsed.report:
        report = cwd / parsed.report
        assert report.is_file() and report.stat().st_size > 10_000, f"no report at {parsed.report}"


def forces_jobs(parsed) -> bool:
    return bool(parsed.forceall or parsed.force or parsed.forcerun)


def numbers(record: dict) -> dict:
    """The numbers of a JSON record, without timings (``*_seconds``): what a rerun must reproduce."""
    return {k: numbers(v) if isinstance(v, dict) else v for k, v in record.items()
            if (isinstance(v, dict) or isinstance(v, (int, float)) and not isinstance(v, bool))
            and not k.endswith("_seconds")}


def run_numbers(repo: Path) -> dict[str, object]:
    """What a finished run in ``repo`` reports: every table's text, every cell's numbers (``metrics.json``)."""
    results = repo / "results"
    found: dict[str, object] = {str(p.relative_to(repo)): p.read_text() for p in sorted(results.glob("tables/*"))}
    found.update({str(p.relative_to(repo)): numbers(json.loads(p.read_text()))
                  for p in sorted(results.glob("*/*/*/seed*/metrics.json"))})
    return found


def dry_run_snakemake(words: tuple[str, ...], args: list[str], parsed, cwd: Path, env: dict[str, str]) -> None:
    if parsed.report:  # reads a finished run's outputs: here its targets must plan
        i = args.index("--report")
        del args[i:i + 2]
    if not parsed.dryrun:
        args.insert(0, "-n")
    proc = run([program(words[0], cwd), *args], cwd, env)
    assert proc.returncode == 0, tail(proc.output)
    for target in parsed.targets:
        if is_file_target(target):  # a file: it is some job's output
            assert re.search(rf"^\s+output: .*\b{re.escape(target)}\b", proc.output, re.M), (
                f"the dry run does not produce {target}:\n{tail(proc.output)}")
        else:  # a rule: one job of it in the job stats
            assert re.search(rf"^{re.escape(target)}\s+\d+\s*$", proc.output, re.M), (
                f"the dry run plans no {target} job:\n{tail(proc.output)}")
    if parsed.targets or not (parsed.unlock or parsed.cleanup_metadata or parsed.list_rules):
        assert "This was a dry-run" in proc.output, tail(proc.output)


# --- make -------------------------------------------------------------------------------------------------

def shell_commands(line: str) -> list[tuple[str, ...]]:
    """The simple commands of a shell line (``a || b; c``), redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current, skip = [], [], False
    for token in lexer:
        if skip:
            skip = False
        elif token in SHELL_OPERATORS:
            commands.append(tuple(current))
            current = []
        elif token and set(token) <= set("<>&"):  # a redirection: drop it and its target
            skip = True
        else:
            current.append(token)
    return [c for c in commands + [tuple(current)] if c]


def exercise_make(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False, **_) -> None:
    """`make -n` first: its recipe's programs must exist; a dry run (with the install step shown: ``-W
    pyproject.toml``) also dry-runs its Snakemake commands and finds its scripts and modules.  Otherwise for
    real, the venv counted as installed; every ``--out`` file of the recipe must be written."""
    args = list(words[1:])
    flags = ["-W", "pyproject.toml"] if dry else ["-o", STAMP]  # a real run never reinstalls the environment
    plan = run(["make", "-n", *flags, *args], cwd, env)
    assert plan.returncode == 0, tail(plan.output)
    lines = [line for line in plan.stdout.splitlines() if line.strip() and not line.startswith("make")]
    assert lines, f"`{shlex.join(words)}` runs nothing:\n{plan.output}"
    recipe = [c for line in lines for c in shell_commands(line)]
    for command in recipe:
        inner_env, inner = split_assignments(command)
        if not inner or inner[0] in SHELL_BUILTINS:
            continue
        program(inner[0], cwd)
        if dry and program_name(inner[0]) == "snakemake":
            exercise_snakemake(inner, cwd, {**env, **inner_env}, dry=True)
        elif dry and program_name(inner[0]) == "python":
            exercise_python(inner, cwd, {**env, **inner_env}, dry=True)
    if dry:
        return
    proc = run(["make", *flags, *args], cwd, env)
    assert proc.returncode == 0, tail(proc.output)
    outs = [out for command in recipe for out in option_values(command, "--out")]
    missing = [out for out in outs if not (cwd / out).is_file()]
    assert not missing, f"`{shlex.join(words)}` did not write {missing}:\n{tail(proc.output)}"


# --- python -----------------------------------------------------------------------------------------------

def module_exists(module: str, cwd: Path) -> bool:
    proc = run([sys.executable, "-c", "import importlib.util, sys; "
                "sys.exit(importlib.util.find_spec(sys.argv[1]) is None)", module], cwd)
    return proc.returncode == 0


def exercise_python(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False, **_) -> None:
    """A module or script: it must exist; unless ``dry`` it runs and must write every ``--out`` file (or,
    asked for CUDA where torch finds none, stop saying so)."""
    args = list(words[1:])
    if args[:1] == ["-m"]:
        assert len(args) > 1, "python -m without a module"
        assert module_exists(args[1], cwd), f"no module {args[1]} (python -m {args[1]})"
    else:
        assert args and (cwd / args[0]).is_file(), f"no script {args[:1]} in the repository"
    if dry:
        return
    proc = run([program(words[0], cwd), *args], cwd, env)
    if any(d.startswith("cuda") for d in option_values(args, "--device")) and not cuda_available():
        assert proc.returncode != 0 and "finds no CUDA device" in proc.output, (
            f"asked for CUDA on a machine without it, `{shlex.join(words)}` should stop saying so:\n"
            f"{tail(proc.output)}")
        return
    assert proc.returncode == 0, tail(proc.output)
    missing = [out for out in option_values(args, "--out") if not (cwd / out).is_file()]
    assert not missing, f"`{shlex.join(words)}` did not write {missing}:\n{tail(proc.output)}"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def exercise_pytest(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False, **_) -> None:
    """Collected only (``--collect-only``): it must select at least one test."""
    assert dry, "`python -m pytest` runs the suite, this test included: list it in DRY_RUN_ONLY"
    proc = run([program(words[0], cwd), *words[1:], "--collect-only", "-q"], cwd, env)
    assert proc.returncode == 0, tail(proc.output)
    assert re.search(r"^\S+::\S+", proc.stdout, re.M), f"`{shlex.join(words)}` selects no test:\n{tail(proc.output)}"


# --- pip, conda -------------------------------------------------------------------------------------------

def exercise_pip_install(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False, **_) -> None:
    """With --dry-run, in this environment (which is offline-capable here: pip.conf's local wheels)."""
    assert dry, "`pip install` would change the environment the tests run in: list it in DRY_RUN_ONLY"
    proc = run([sys.executable, "-m", "pip", *words[1:], "--dry-run"], cwd, env)
    assert proc.returncode == 0, tail(proc.output)
    if "." in words or "-e." in words:
        assert re.search(r"^Would install .*fod-suite", proc.stdout, re.M), tail(proc.output)


def exercise_conda_env_create(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False,
                              **_) -> None:
    """The environment file must parse and pin what pyproject.toml pins; conda itself only if installed."""
    assert dry, "`conda env create` needs conda and its channels: list it in DRY_RUN_ONLY"
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
    proc = run([conda, *words[1:], "--dry-run", "--name", "fod-suite-readme-check"], cwd, env)
    assert proc.returncode == 0, tail(proc.output)


# --- mlflow ui --------------------------------------------------------------------------------------------

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


def _api(port: int, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def exercise_mlflow_ui(words: tuple[str, ...], cwd: Path, env: dict[str, str], dry: bool = False,
                       comment: str = "", wait_s: float = 90) -> None:
    """Started on 127.0.0.1 (on a free port if the README's is taken) in the finished CI run; the page and
    the API must answer, and the API must list one current run per cell of the run.  Then stopped."""
    assert not dry, "`mlflow ui` has no dry run"
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
                                  stderr=subprocess.STDOUT, start_new_session=True, env=environment(cwd, env))
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
        config = yaml.safe_load((cwd / "config" / "config.yaml").read_text())
        name = config["mlflow"]["experiment"]
        experiment = _api(port, f"experiments/get-by-name?experiment_name={name}")["experiment"]
        runs = _api(port, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                          "filter": "tags.current = 'true'", "max_results": 1000}).get("runs", [])
        keys = {tag["value"] for r in runs for tag in r["data"].get("tags", []) if tag["key"] == "run_key"}
        cells = {str(p.parent.relative_to(cwd / "results")) for p in (cwd / "results").glob("*/*/*/seed*/metrics.json")}
        assert cells and keys == cells, f"mlflow ui lists {sorted(keys)}; the run has {sorted(cells)}"
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        except ProcessLookupError:
            pass


# --- dispatch ---------------------------------------------------------------------------------------------

Handler = Callable[..., None]
# The command's first words -> how to exercise it.  The longest matching key wins; the program is matched
# by its name (`.venv/bin/snakemake` is `snakemake`, `python3.11` is `python`).
HANDLERS: dict[tuple[str, ...], Handler] = {
    ("snakemake",): exercise_snakemake,
    ("make",): exercise_make,
    ("python",): exercise_python,
    ("python", "-m", "pytest"): exercise_pytest,
    ("pip", "install"): exercise_pip_install,
    ("conda", "env", "create"): exercise_conda_env_create,
    ("mlflow", "ui"): exercise_mlflow_ui,
}


def handler_for(words: tuple[str, ...]) -> Handler | None:
    if not words:
        return None
    key = (program_name(words[0]), *words[1:])
    matches = [k for k in HANDLERS if key[:len(k)] == k]
    return HANDLERS[max(matches, key=len)] if matches else None


def fill_placeholders(words: tuple[str, ...]) -> tuple[str, ...]:
    filled = []
    for word in words:
        for placeholder, value in PLACEHOLDERS.items():
            word = word.replace(placeholder, value)
        assert not re.search(r"<[^>]+>", word), (
            f"{word!r}: add what it stands for to PLACEHOLDERS (or the command to NOT_COMMANDS)")
        filled.append(word)
    return tuple(filled)


def changed_files(pristine: Path, copy: Path) -> list[str]:
    """The repository's files (those of ``pristine``) that differ in ``copy`` or are gone from it."""
    changed = []
    for folder, dirs, files in os.walk(pristine):  # does not follow the .venv link
        for name in files:
            rel = Path(folder, name).relative_to(pristine)
            if not (copy / rel).is_file() or (copy / rel).read_bytes() != (pristine / rel).read_bytes():
                changed.append(str(rel))
    return sorted(changed)


# --- the tests --------------------------------------------------------------------------------------------

def test_commands_are_extracted_from_the_shell_blocks_and_the_prose():
    text = ("x `make bench` and `snakemake\nhtml_report`, `snakemake` alone, `results/x.csv`, `mlflow server`\n"
            "```sh\nmake run   # all of it\nsnakemake a \\\n  --cores 2  # two\n\n# only a comment\n```\n"
            "```python\nimport os\n```\nthen `make run` again\n")
    assert [(c.words, c.line) for c in block_commands(text)] == [
        (("make", "run"), 4), (("snakemake", "a", "--cores", "2"), 5)]
    assert [(c.text, c.line) for c in inline_spans(text)] == [
        ("make bench", 1), ("snakemake html_report", 1), ("mlflow server", 2), ("make run", 13)]
    found = readme_commands(text)  # code blocks first, each text once, no NOT_COMMANDS
    assert [c.text for c in found] == ["make run", "snakemake a --cores 2", "make bench", "snakemake html_report"]
    assert found[0].comment == "all of it" and not found[1].inline and found[3].inline


def test_commands_are_dispatched_by_their_first_words():
    assert handler_for((".venv/bin/snakemake", "-n")) is exercise_snakemake
    assert handler_for(("python3.11", "-m", "pytest")) is exercise_pytest
    assert handler_for(("python3.11", "-m", "adbench.operations.estimate")) is exercise_python
    assert handler_for(("pip3", "install", "-e", ".")) is exercise_pip_install
    for unknown in (("docker", "run", "x"), ("pip", "download", "."), ("mlflow", "server"), ("conda", "install")):
        assert handler_for(unknown) is None, unknown  # its README test fails and asks for a handler


def test_shell_lines_of_a_recipe_split_into_commands():
    assert shell_commands("test -f a.json || .venv/bin/python b.py --out a.json") == [
        ("test", "-f", "a.json"), (".venv/bin/python", "b.py", "--out", "a.json")]
    assert shell_commands("command -v py >/dev/null || { echo 'no py'; exit 1; }") == [
        ("command", "-v", "py"), ("echo", "no py"), ("exit", "1")]


def test_every_readme_command_has_a_handler():
    assert COMMANDS, "no shell code block in README.md"
    unknown = [f"line {c.line}: {c}" for c in COMMANDS if handler_for(split_assignments(c.words)[1]) is None]
    assert not unknown, "add a way to test this README command (HANDLERS in tests/test_readme.py): " + \
        "; ".join(unknown)
    texts = {c.text for c in COMMANDS}
    assert {"make run", "make test"} <= texts  # the extraction still finds the two commands


def test_exceptions_name_readme_commands():
    """No stale exception: each names what the README says, and a test that a reason cites exists."""
    text = README.read_text()
    texts = {c.text for c in COMMANDS}
    for name, table in (("DRY_RUN_ONLY", DRY_RUN_ONLY), ("TINY", TINY)):
        assert not set(table) - texts, f"{name}: not in the README (any more): {sorted(set(table) - texts)}"
    assert not set(DRY_RUN_ONLY) & set(TINY), "a command is either dry-run only or run in a tiny form"
    spans = {c.text for c in inline_spans(text)}
    assert not set(NOT_COMMANDS) - spans, f"NOT_COMMANDS: not in the README (any more): {set(NOT_COMMANDS) - spans}"
    assert not set(NOT_COMMANDS) & {c.text for c in block_commands(text)}, "a code block's command is a command"
    assert all(p in text for p in PLACEHOLDERS), "PLACEHOLDERS: not in the README (any more)"
    for reason in DRY_RUN_ONLY.values():
        for path, name in re.findall(r"(tests/\w+\.py)::(\w+)", reason):
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path} has no test {name}"


def test_a_changed_repository_file_or_number_is_seen(tmp_path):
    """The checks every command's run ends with: repository files compared with the pristine copy, and the
    run's numbers (tables, metrics.json without timings) compared with the CI run's."""
    pristine, copy = tmp_path / "pristine", tmp_path / "copy"
    for root in (pristine, copy):
        (root / "results" / "tables").mkdir(parents=True)
        (root / "a.txt").write_text("a")
        (root / "b.txt").write_text("b")
    (copy / "a.txt").write_text("A")
    (copy / "b.txt").unlink()
    (copy / "new.txt").write_text("made by a run: not a repository file")
    assert changed_files(pristine, copy) == ["a.txt", "b.txt"]
    cell = copy / "results" / "embedded" / "brick" / "patchcore" / "seed0" / "metrics.json"
    cell.parent.mkdir(parents=True)
    record = {"image_auroc": 0.75, "fit_seconds": 1.0, "git_commit": "x", "defect_types": {"hole": {"n": 3}}}
    cell.write_text(json.dumps(record))
    before = run_numbers(copy)
    assert before["results/embedded/brick/patchcore/seed0/metrics.json"] == {
        "image_auroc": 0.75, "defect_types": {"hole": {"n": 3}}}
    cell.write_text(json.dumps({**record, "fit_seconds": 2.0, "git_commit": "y"}))  # a rerun: the same numbers
    assert run_numbers(copy) == before
    cell.write_text(json.dumps({**record, "defect_types": {"hole": {"n": 4}}}))
    assert run_numbers(copy) != before


def test_tiny_forms_keep_every_flag():
    """A tiny form is the README's command plus arguments (or with a value swapped): the same program and
    goal or script, and every flag, so a misspelt flag of the README still fails."""
    for text, (tiny, reason) in TINY.items():
        readme, small = shlex.split(text), shlex.split(tiny)
        assert reason and small[:2] == readme[:2], text
        assert [w for w in readme if w.startswith("-")] == [w for w in small if w.startswith("-")][:len(
            [w for w in readme if w.startswith("-")])], f"{tiny!r} drops or reorders a flag of {text!r}"


def test_the_readme_ci_commands_are_what_the_ci_run_fixture_runs(pristine):
    """`snakemake all_tables --cores 2 --configfile config/ci.yaml` and `make run`'s tiny form run what the
    ``ci_run`` fixture runs (the same targets, config files, cores), so its finished run is their effect (their
    real runs, on a copy of it, must leave its numbers and tables as they are)."""
    from workflow_runs import snakemake_command

    def signature(args: list[str]) -> tuple:
        parsed = parse_snakemake(args)
        files = tuple(str(Path(f).resolve().relative_to(ROOT)) if Path(f).is_absolute() else str(f)
                      for f in parsed.configfile or [])
        return tuple(parsed.targets), files, parsed.config, str(parsed.cores), forces_jobs(parsed)

    fixture = snakemake_command(Path("work"), "all_tables")
    expected = signature(fixture[fixture.index("snakemake") + 1:])
    readme = [c for c in COMMANDS if program_name(c.words[0]) == "snakemake"
              and signature(list(c.words[1:])) == expected]
    assert readme, f"no README command runs what ci_run runs ({shlex.join(fixture)})"
    plan = run(["make", "-n", "-o", STAMP, *shlex.split(TINY["make run"][0])[1:]], pristine)
    line = next(line for line in plan.stdout.splitlines() if "snakemake" in line)
    assert signature(shlex.split(line)[1:]) == expected, line


@pytest.mark.parametrize("words", [
    ("snakemake", "all_tables", "--cores", "2", "--configfle", "config/ci.yaml"),
    ("snakemake", "-n", "all_tables", "--workflow-profle", "workflow/profiles/slurm"),  # (a prefix would pass)
    ("python", "-m", "adbench.operations.estimate", "--confg", "config/paper.yaml"),
    ("make", "bnch"),
    ("python", "-m", "pytest", "-m", "slurm", "--markr"),
    ("mlflow", "ui", "--backend-store-url", "sqlite:///results/mlflow.db"),
], ids=shlex.join)
def test_a_misspelt_flag_fails_its_command(words, pristine, tmp_path):
    """The handlers run the README's argument list itself: a misspelt flag (or make goal) fails the test."""
    cwd = fresh_copy(pristine, tmp_path / "repo")
    handler = handler_for(words)
    with pytest.raises(AssertionError) as failure:
        handler(words, cwd, {}, dry=handler is exercise_pytest)
    assert re.search(r"configfle|workflow-profle|confg|bnch|markr|backend-store-url", str(failure.value)), (
        f"failed, but not over the misspelt word:\n{failure.value}")


@dataclass(frozen=True)
class Invocation:
    """What the test runs for a README command: its words after ``TINY``, ``PLACEHOLDERS`` and the CI size
    (a Snakemake command that names no config file gets ``--configfile config/ci.yaml``; a Snakemake dry run
    is written ``snakemake -n ...``), the variables it sets, and whether it is a dry run."""

    words: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    dry: bool


def invocation(command: Command) -> Invocation:
    dry = command.text in DRY_RUN_ONLY
    words = tuple(shlex.split(TINY[command.text][0])) if command.text in TINY else command.words
    env, words = split_assignments(fill_placeholders(words))
    if program_name(words[0]) == "snakemake":
        parsed = parse_snakemake(list(words[1:]))
        if dry or parsed.dryrun:
            dry, words = True, (words[0], "-n", *(w for w in words[1:] if w not in ("-n", "--dry-run", "--dryrun")))
        elif not parsed.configfile:
            words += ("--configfile", CI_CONFIG)
    return Invocation(words, tuple(sorted(env.items())), dry)


def distinct_runs(commands: list[Command]) -> list[tuple[Command, ...]]:
    """The commands grouped by what runs for them (``snakemake all_tables`` at the CI size is the README's
    ``snakemake all_tables --configfile config/ci.yaml``): each group runs once.  A command whose
    invocation cannot be made (a misspelt Snakemake flag, an unknown placeholder) stays alone and fails."""
    groups: dict[object, list[Command]] = {}
    for command in commands:
        try:
            key = invocation(command)
        except AssertionError:
            key = command.text
        groups.setdefault(key, []).append(command)
    return [tuple(group) for group in groups.values()]


RUNS = distinct_runs(COMMANDS)


def test_commands_that_run_alike_run_once():
    """Two README commands share a run only when the test would run exactly the same for both."""
    runs = distinct_runs([Command("snakemake all_tables", ("snakemake", "all_tables"), "", 1),
                          Command("x", ("snakemake", "all_tables", "--configfile", "config/ci.yaml"), "", 2),
                          Command("y", ("snakemake", "all_tables", "--cores", "2"), "", 3),
                          Command("z", ("snakemake", "all_tables", "-n"), "", 4),
                          Command("w", ("snakemake", "-n", "all_tables"), "", 5)])
    assert [[c.line for c in group] for group in runs] == [[1, 2], [3], [4, 5]]
    assert sum(len(group) for group in RUNS) == len(COMMANDS)


@pytest.mark.parametrize("commands", RUNS, ids=[group[0].text for group in RUNS])
def test_readme_command_works_as_written(commands: tuple[Command, ...], pristine: Path, tmp_path: Path, request):
    first = commands[0]
    where = "README.md line " + ", ".join(str(c.line) for c in commands)
    handler = handler_for(split_assignments(first.words)[1])
    if handler is None:
        pytest.fail(f"add a way to test this README command ({where}): {first}")
    run_ = invocation(first)
    if run_.dry:
        cwd = fresh_copy(pristine, tmp_path / "repo")
    else:
        cwd = finished_copy(pristine, request.getfixturevalue("ci_run"), tmp_path / "repo")
    before = run_numbers(cwd)
    handler(run_.words, cwd, dict(run_.env), dry=run_.dry, comment=first.comment)
    after = run_numbers(cwd)
    moved = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not moved, f"`{shlex.join(run_.words)}` changed what the CI run reports ({where}): {moved}"
    changed = changed_files(pristine, cwd)
    assert not changed, f"`{shlex.join(run_.words)}` changed files of the repository ({where}): {changed}"
