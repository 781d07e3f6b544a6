"""benchmarks/bench_run.py's report: summed job seconds per DAG stage from Snakemake's benchmark files, and
each setting's ratio to ``before`` (the workflow runs themselves take 40 minutes: README "Benchmarks")."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_run.py"
_spec = importlib.util.spec_from_file_location("bench_run", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _benchmark(work: Path, rule_path: str, seconds: float) -> None:
    path = work / "results" / "benchmarks" / rule_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t10\n")


def test_stage_seconds_sum_each_rules_jobs_into_its_stage(tmp_path):
    _benchmark(tmp_path, "fit_evaluate/embedded/brick/fod/seed0.tsv", 10.5)
    _benchmark(tmp_path, "fit_evaluate/embedded/coins/fod/seed0.tsv", 4.5)
    _benchmark(tmp_path, "extract_features/embedded/brick/train.tsv", 2.0)
    _benchmark(tmp_path, "significance.tsv", 3.0)
    _benchmark(tmp_path, "figures.tsv", 1.0)
    assert bench.stage_seconds(tmp_path) == {"features": 2.0, "methods": 15.0, "reporting": 4.0}


def test_the_report_gives_every_setting_and_its_ratio_to_before():
    runs = {"after": {"wall_s": 500.0, "stage_job_s": {"methods": 800.0, "data": 40.0}},
            "before": {"wall_s": 1000.0, "stage_job_s": {"methods": 1600.0, "data": 50.0}}}
    table = bench.markdown({"config": "config/config.yaml", "runs": runs, "tables_identical": True})
    assert "| whole run (wall) | 500 | 1,000 | 0.50 |" in table
    assert "| methods (summed job time) | 800 | 1,600 | 0.50 |" in table
    assert "| data (summed job time) | 40 | 50 | 0.80 |" in table
    only_after = bench.markdown({"config": "c", "runs": {"after": runs["after"]}, "tables_identical": True})
    assert "| whole run (wall) | 500 |" in only_after and "/ before" not in only_after
