"""Running the workflow from tests: the command line, a run in a scratch folder, the tables it wrote."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def snakemake_command(workdir: Path, *args: str, ci: bool = True, configs: tuple[Path, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2"]
    cmd += list(args)  # targets before --configfile, which takes every following word as a file
    files = ([ROOT / "config" / "ci.yaml"] if ci else []) + list(configs)
    if files:
        cmd += ["--configfile", *map(str, files)]
    return cmd


def snakemake(workdir: Path, *args: str, ci: bool = True, configs: tuple[Path, ...] = (),
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_command(workdir, *args, ci=ci, configs=configs), capture_output=True,
                          text=True, cwd=workdir, env=env)
    proc.output = proc.stdout + proc.stderr  # Snakemake prints errors to either
    return proc


def table_texts(work: Path) -> dict[str, str]:
    """Every table file the run wrote, as text (the values at their printed precision)."""
    return {p.name: p.read_text() for p in sorted((work / "results" / "tables").iterdir())}


def seed_from_local_run(ci_run: Path, work: Path, redo: str) -> None:
    """Copy into ``work`` what the local CI run made that a second run need not redo: the generated data of
    every category, and the features and run folders of every category but ``redo`` (mtimes kept, so
    Snakemake takes them as up to date and runs ``redo``'s extraction and fits, then every summary, table
    and figure)."""
    results = ci_run / "results"
    shutil.copytree(results / "data", work / "results" / "data")
    for folder in (results / "features").glob("*/*"):
        if folder.name != redo:
            shutil.copytree(folder, work / folder.relative_to(ci_run))
    for run in results.glob("*/*/*/seed*"):
        if run.parent.parent.name != redo and run.parent.parent.parent.name not in ("data", "features"):
            shutil.copytree(run, work / run.relative_to(ci_run))
