"""What the resident worker (adbench/worker.py) saves: the whole workflow from scratch, once with the worker
and once with every job in its own process (``ADBENCH_WORKER=0``), side by side in one session.

Each run goes into a scratch folder of its own (``--work``) with the same config; the worker run gets a
private worker folder, so its worker's start is part of the measurement.  Reports the wall time of each
run, the summed job wall time per stage (Snakemake's ``benchmark:`` files, column ``s``: the job's wall
time in both modes), the ratio worker / own process, and whether the two runs wrote identical tables.
Writes JSON to ``--out`` and a markdown table next to it (same name, ``.md``).

    python benchmarks/bench_worker.py --out results/benchmarks/worker.json            # the default config
    python benchmarks/bench_worker.py --configfile config/ci.yaml --out results/benchmarks/worker_ci.json

The default config takes about 25 minutes for both runs on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# rule -> stage of the DAG (README "What runs")
STAGES = {
    "generate_embedded": "data", "prepare_category": "data", "download_dataset": "data", "download_dtd": "data",
    "extract_features": "features", "fit_evaluate": "methods",
    "category_summary": "evaluation", "track_category": "evaluation",
    "table": "reporting", "significance": "reporting", "figures": "reporting", "html_report": "reporting",
    "track_all_tables": "reporting", "reproduction": "reporting",
}
MODES = {"worker": {"ADBENCH_WORKER": "1"}, "own_process": {"ADBENCH_WORKER": "0"}}


def run_workflow(work: Path, configfile: str | None, env: dict[str, str]) -> float:
    """The workflow's all_tables from scratch in ``work``; its wall time (s)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2",
           "all_tables"]
    if configfile:
        cmd += ["--configfile", str(Path(configfile).resolve())]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (work / "snakemake.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the workflow failed in {work}; see {work / 'snakemake.out'}")
    return seconds


def stage_seconds(work: Path) -> dict[str, float]:
    """Summed job wall time (s) per stage, from the run's benchmark files."""
    totals: dict[str, float] = defaultdict(float)
    bench = work / "results" / "benchmarks"
    for path in bench.rglob("*.tsv"):
        rule = path.relative_to(bench).parts[0].removesuffix(".tsv")
        with open(path) as handle:
            totals[STAGES.get(rule, rule)] += float(next(csv.DictReader(handle, delimiter="\t"))["s"])
    return dict(sorted(totals.items()))


def tables(work: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((work / "results" / "tables").iterdir())}


def markdown(report: dict) -> str:
    w, o = report["runs"]["worker"], report["runs"]["own_process"]
    lines = [
        "# The resident worker: the workflow from scratch with it and without it (same session, 2 cores)",
        "",
        f"Config: {report['config']}; tables identical: {report['tables_identical']}.",
        "",
        "| | with the worker (s) | every job in its own process (s) | ratio |",
        "|---|---:|---:|---:|",
        f"| whole run (wall) | {w['wall_s']:.0f} | {o['wall_s']:.0f} | {report['ratio_wall']:.2f} |",
    ]
    for stage in sorted(set(w["stage_job_s"]) | set(o["stage_job_s"])):
        a, b = w["stage_job_s"].get(stage, 0.0), o["stage_job_s"].get(stage, 0.0)
        lines.append(f"| {stage} (summed job time) | {a:.0f} | {b:.0f} | {a / b if b else float('nan'):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", help="a config to lay over config/config.yaml (default: none, the default run)")
    p.add_argument("--work", default="build/bench_worker", help="scratch folder for the two runs")
    p.add_argument("--out", default="results/benchmarks/worker.json")
    a = p.parse_args()
    work = Path(a.work).resolve()
    runs = {}
    for mode, extra in MODES.items():
        env = {**os.environ, **extra, "ADBENCH_WORKER_DIR": str(work / "workers")}
        wall = run_workflow(work / mode, a.configfile, env)
        runs[mode] = {"wall_s": wall, "stage_job_s": stage_seconds(work / mode)}
        print(f"{mode}: {wall:.0f} s", flush=True)
    same = tables(work / "worker") == tables(work / "own_process")
    report = {"config": a.configfile or "config/config.yaml", "cores": 2, "runs": runs, "tables_identical": same,
              "ratio_wall": runs["worker"]["wall_s"] / runs["own_process"]["wall_s"]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if not same:
        raise SystemExit("the two runs wrote different tables: the worker changed a number")


if __name__ == "__main__":
    main()
