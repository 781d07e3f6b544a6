"""End to end: the Snakemake workflow on config/ci.yaml in a scratch directory, as `make test` runs it."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from adbench.regression import compare

ROOT = Path(__file__).resolve().parent.parent
METRICS = {
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}


def snakemake(workdir: Path, *args: str, ci: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "2"]
    cmd += list(args)  # targets before --configfile, which takes every following word as a file
    if ci:
        cmd += ["--configfile", str(ROOT / "config" / "ci.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    proc.output = proc.stdout + proc.stderr  # Snakemake prints errors to either
    return proc


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("workflow")
    proc = snakemake(work, "all_tables")
    assert proc.returncode == 0, proc.output[-4000:]
    return work


def test_all_tables_writes_table2_with_every_category(ci_run):
    table = pd.read_csv(ci_run / "results" / "tables" / "table2.csv", index_col=0)
    assert list(table.index) == ["brick", "coins", "mean"]
    assert table.loc["mean", "patchcore"] == pytest.approx(table.loc[["brick", "coins"], "patchcore"].mean(), abs=1e-4)
    assert list(table.columns) == ["draem", "patchsvdd", "mkd", "patchcore", "cflow", "fod"]  # the paper's order
    assert "| **mean** |" in (ci_run / "results" / "tables" / "table2.md").read_text()
    table4 = pd.read_csv(ci_run / "results" / "tables" / "table4.csv", index_col=0)
    assert list(table4.index) == ["patchwise_rec", "full"]
    assert table4.loc["full", "embedded"] == pytest.approx(table.loc["mean", "fod"], abs=1e-4)
    assert table4.loc["full", "paper:mvtec_ad"] == pytest.approx(0.992)


def test_each_run_writes_traceable_metrics_and_per_image_scores(ci_run):
    run = ci_run / "results" / "embedded" / "brick" / "patchcore" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert METRICS <= set(metrics) and all(0 <= metrics[k] <= 1 for k in METRICS)
    assert metrics["evaluation_resolution"] == 64
    assert re.fullmatch(r"[0-9a-f]{12}", metrics["config_hash"])
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", metrics["git_commit"])
    scores = pd.read_csv(run / "scores.csv")
    assert list(scores.columns) == ["id", "label", "defect_type", "score"]
    assert len(scores) == metrics["n_test"] and scores.label.sum() == metrics["n_anomalous"]
    assert (ci_run / "results" / "benchmarks" / "fit_evaluate" / "embedded" / "brick" / "patchcore" / "seed0.tsv").exists()


def test_runs_are_logged_to_mlflow(ci_run):
    """Each run is one MLflow run: params with the config hash, every metric, training curves, artifacts."""
    category = ci_run / "results" / "embedded" / "coins"
    ids = json.loads((category / "mlflow.json").read_text())
    assert set(ids) == {f"embedded/coins/{m}/seed0" for m in ("patchcore", "cflow", "mkd", "draem", "patchsvdd",
                                                              "fod", "fod_patchwise_rec")}
    metrics = json.loads((category / "fod" / "seed0" / "metrics.json").read_text())
    run_id = ids["embedded/coins/fod/seed0"]
    db = sqlite3.connect(ci_run / "results" / "mlflow.db")
    params = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
    logged = dict(db.execute("select key, value from latest_metrics where run_uuid = ?", (run_id,)))
    status = db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()[0]
    assert {"method", "dataset", "category", "seed", "backbone", "image_size", "config_hash", "git_commit"} <= set(params)
    assert params["config_hash"] == metrics["config_hash"] and params["category"] == "coins"
    assert logged["image_auroc"] == pytest.approx(metrics["image_auroc"])
    assert "rec" in logged  # FOD's per-epoch training loss
    assert status == "FINISHED"
    artifacts = ci_run / "results" / "mlflow-artifacts"
    assert list(artifacts.rglob("metrics.json")) and list(artifacts.rglob("map_*.png"))


def test_logging_the_same_runs_again_creates_no_duplicates(ci_run):
    from adbench.tracking import log_runs

    folder = ci_run / "results" / "embedded" / "coins" / "patchcore" / "seed0"
    uri = f"sqlite:///{ci_run / 'results' / 'mlflow.db'}"
    first = log_runs([folder], uri, "fod-suite")
    assert log_runs([folder], uri, "fod-suite") == first
    assert first == {k: v for k, v in json.loads((folder.parent.parent / "mlflow.json").read_text()).items()
                     if k in first}


def test_reported_aurocs_do_not_regress(ci_run):
    """CI's gate: the committed reference AUROCs for config/ci.yaml (results/reference/ci.csv)."""
    table = compare(ROOT / "results" / "reference" / "ci.csv", ci_run / "results")
    assert len(table) >= 4
    assert not table.status.isin(["REGRESSED", "MISSING"]).any(), table.to_string()


def test_rerunning_one_category_reruns_only_its_jobs_and_reproduces_its_numbers(ci_run):
    target = "results/embedded/brick/summary.csv"
    plan = snakemake(ci_run, "-n", "--forceall", target)
    assert plan.returncode == 0, plan.output[-2000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", plan.stdout, flags=re.M)
    assert jobs and all("coins" not in body for _, body in jobs)
    methods = 7  # config/ci.yaml's run.methods
    assert sorted(name for name, _ in jobs) == sorted(
        ["generate_embedded", "extract_features", "extract_features", "track_category", "category_summary"]
        + ["fit_evaluate"] * methods)
    before = (ci_run / "results" / "embedded" / "brick" / "patchcore" / "seed0" / "scores.csv").read_text()
    rerun = snakemake(ci_run, "--forceall", target)
    assert rerun.returncode == 0, rerun.output[-2000:]
    after = (ci_run / "results" / "embedded" / "brick" / "patchcore" / "seed0" / "scores.csv").read_text()
    assert after == before  # same config and seed -> same per-image scores


def test_dry_run_of_the_default_config(tmp_path):
    proc = snakemake(tmp_path, "-n", "all_tables", ci=False)
    assert proc.returncode == 0, proc.output[-2000:]
    assert re.search(r"Using workflow specific profile \S*profiles/default", proc.output)  # without a flag
    for category in ("brick", "grass", "gravel", "coins", "tray"):
        assert f"results/embedded/{category}/patchcore/seed0/metrics.json" in proc.stdout


def test_bad_config_fails_at_once_with_the_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {datasets: [embedded], methods: [nosuch], seeds: [0]}\n")
    proc = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(bad), ci=False)
    assert proc.returncode != 0 and "run.methods names 'nosuch'" in proc.output
    paper = tmp_path / "b6.yaml"
    paper.write_text("backbone: {name: tf_efficientnet_b6}\n")
    proc = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(paper), ci=False)
    assert proc.returncode != 0 and "tf_efficientnet_b6.safetensors" in proc.output
