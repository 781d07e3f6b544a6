"""What the workflow's three speed switches save: the whole workflow from scratch under each setting, one
after the other in one session (issue 19).

* ``after``: the default, every job in a fork of the resident worker (``adbench/worker.py``) with subnormal
  floats flushed to zero (``adbench.methods.determinism.flush_denormals``) and freed memory kept for reuse
  (``adbench.methods.malloc``);
* ``system_malloc``: the worker, subnormals flushed, glibc's own malloc settings (``ADBENCH_MALLOC=system``);
* ``no_flush``: the worker, subnormals kept (``ADBENCH_FLUSH_DENORMAL=0``), freed memory kept;
* ``before``: every job in its own process with subnormals kept and glibc's malloc settings
  (``ADBENCH_WORKER=0 ADBENCH_FLUSH_DENORMAL=0 ADBENCH_MALLOC=system``), how the workflow ran before any existed.

Each run goes into a scratch folder of its own (``--work``) with the same config; worker runs get a
private worker folder each, so the start of their worker is part of the measurement.  Reports the wall time of each
run, the summed job wall time per stage (Snakemake's ``benchmark:`` files, column ``s``: the job's wall
time in every mode), each mode's ratio to the baseline (``before`` when it ran, else the last mode run),
and whether all runs wrote identical tables.
Writes JSON to ``--out`` and a markdown table next to it (same name, ``.md``).

    python benchmarks/bench_run.py --out results/benchmarks/run.json            # the default config
    python benchmarks/bench_run.py --configfile config/ci.yaml --modes after before --out results/benchmarks/run_ci.json

The default config takes about 45 minutes for the four runs on 2 cores.
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
MODES = {
    "after": {"ADBENCH_WORKER": "1", "ADBENCH_FLUSH_DENORMAL": "1", "ADBENCH_MALLOC": "retain"},
    "system_malloc": {"ADBENCH_WORKER": "1", "ADBENCH_FLUSH_DENORMAL": "1", "ADBENCH_MALLOC": "system"},
    "no_flush": {"ADBENCH_WORKER": "1", "ADBENCH_FLUSH_DENORMAL": "0", "ADBENCH_MALLOC": "retain"},
    "before": {"ADBENCH_WORKER": "0", "ADBENCH_FLUSH_DENORMAL": "0", "ADBENCH_MALLOC": "system"},
}
COLUMNS = {"after": "worker, flushed, memory kept (default)", "system_malloc": "worker, flushed, glibc malloc",
           "no_flush": "worker, subnormals kept", "before": "own process per job, subnormals kept, glibc malloc"}


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
    runs = report["runs"]
    modes = list(runs)
    baseline = "before" if "before" in runs else modes[-1]
    base = runs[baseline] if len(modes) > 1 else None
    lines = [
        "# The workflow from scratch under each speed setting (one after the other, one session, 2 cores)",
        "",
        f"Config: {report['config']}; tables identical across the runs: {report['tables_identical']}.",
        "",
        "| | " + " | ".join(f"{COLUMNS[m]} (s)" for m in modes) + (" | " + " | ".join(
            f"{m} / {baseline}" for m in modes if m != baseline) if base else "") + " |",
        "|---|" + "---:|" * (len(modes) + (len(modes) - 1 if base else 0)),
    ]

    def row(label: str, values: list[float], reference: float | None) -> str:
        ratios = [f"{v / reference:.2f}" if reference else "n/a" for m, v in zip(modes, values) if m != baseline]
        return f"| {label} | " + " | ".join(f"{v:,.0f}" for v in values) + (
            " | " + " | ".join(ratios) if base else "") + " |"

    lines.append(row("whole run (wall)", [runs[m]["wall_s"] for m in modes], base and base["wall_s"]))
    for stage in sorted({s for m in modes for s in runs[m]["stage_job_s"]}):
        values = [runs[m]["stage_job_s"].get(stage, 0.0) for m in modes]
        lines.append(row(f"{stage} (summed job time)", values, base and base["stage_job_s"].get(stage)))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", help="a config to lay over config/config.yaml (default: none, the default run)")
    p.add_argument("--work", default="build/bench_run", help="scratch folder for the runs")
    p.add_argument("--out", default="results/benchmarks/run.json")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="which settings to run")
    a = p.parse_args()
    work = Path(a.work).resolve()
    runs = {}
    for mode in a.modes:
        extra = MODES[mode]
        env = {**os.environ, **extra, "ADBENCH_WORKER_DIR": str(work / f"workers-{mode}")}  # a fresh worker per mode
        wall = run_workflow(work / mode, a.configfile, env)
        runs[mode] = {"wall_s": wall, "stage_job_s": stage_seconds(work / mode)}
        print(f"{mode}: {wall:.0f} s", flush=True)
    same = all(tables(work / mode) == tables(work / a.modes[0]) for mode in a.modes)
    report = {"config": a.configfile or "config/config.yaml", "cores": 2, "runs": runs, "tables_identical": same}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if not same:
        raise SystemExit("the runs wrote different tables: a speed setting changed a number")


if __name__ == "__main__":
    main()
