"""Running the workflow from tests: the command line, a run in a scratch folder, the tables it wrote."""
from __future__ import annotations

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
