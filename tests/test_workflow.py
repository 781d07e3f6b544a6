"""End to end: the Snakemake workflow on config/ci.yaml in a scratch directory, as `make test` runs it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from adbench.methods.determinism import ISA_VARIABLES, isa_environment
from adbench.operations.golden import cell_key, expected_cells
from adbench.operations.reseeding import compare
from adbench.methods.runs import load_config
from workflow_runs import ROOT, seed_from_local_run, snakemake, snakemake_command, table_texts

CI = load_config(ROOT / "config" / "ci.yaml")
PAPER_ORDER = ["draem", "patchsvdd", "mkd", "patchcore", "cflow", "fod", "fod_paper"]  # the paper's Table 2
METRICS = {
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}


def test_all_tables_writes_table2_with_every_category(ci_run):
    table = pd.read_csv(ci_run / "results" / "tables" / "table2.csv", index_col=0)
    assert list(table.index) == ["brick", "coins", "mean"]
    assert table.loc["mean", "patchcore"] == pytest.approx(table.loc[["brick", "coins"], "patchcore"].mean(), abs=1e-4)
    ours = [c for c in table.columns if ":" not in c]
    assert ours == CI["tables"]["table2"]["methods"]  # by default run.methods without the ablations, in order
    assert ours[:len(PAPER_ORDER)] == PAPER_ORDER  # the paper's order
    # fod ran seeds 0 and 1 (config/ci.yaml): mean and std over them, from the runs' metrics.json
    runs = [json.loads((ci_run / f"results/embedded/brick/fod/seed{s}/metrics.json").read_text()) for s in (0, 1)]
    values = [r["image_auroc"] for r in runs]
    assert table.loc["brick", "fod"] == pytest.approx(sum(values) / 2, abs=1e-4)
    assert table.loc["brick", "fod:std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-4)
    assert table.loc["brick", "fod:seeds"] == 2 and table.loc["brick", "patchcore:seeds"] == 1
    # the authors' best-epoch-on-test selection stands beside it (one epoch here: the same number)
    assert table.loc["brick", "best_on_test:fod"] == pytest.approx(
        sum(r["best_on_test_image_auroc"] for r in runs) / 2, abs=1e-4)
    assert "best_on_test:patchcore" not in table
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
    # the checkpoint the features came from: timm tag, file and the SHA-256 it was checked against
    assert (metrics["backbone_tag"], metrics["backbone_file"]) == ("tf_efficientnet_lite0", "efficientnet-lite0-57934424.pth")
    assert re.fullmatch(r"[0-9a-f]{64}", metrics["backbone_sha256"])
    assert "backbone `tf_efficientnet_lite0` (`efficientnet-lite0-57934424.pth`)" in (
        ci_run / "results" / "tables" / "table2.md").read_text()
    scores = pd.read_csv(run / "scores.csv")
    assert list(scores.columns) == ["id", "label", "defect_type", "score"]
    assert len(scores) == metrics["n_test"] and scores.label.sum() == metrics["n_anomalous"]
    assert (ci_run / "results" / "benchmarks" / "fit_evaluate" / "embedded" / "brick" / "patchcore" / "seed0.tsv").exists()


def test_runs_are_logged_to_mlflow(ci_run):
    """Each run is one MLflow run: params with the config hash, every metric, training curves, artifacts."""
    category = ci_run / "results" / "embedded" / "coins"
    ids = json.loads((category / "mlflow.json").read_text())
    assert set(ids) == {cell_key(*cell) for cell in expected_cells(CI) if cell[1] == "coins"}
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


def test_logging_the_same_runs_again_creates_no_duplicates(ci_run, tmp_path):
    from adbench.evaluation.tracking import log_runs

    folder = ci_run / "results" / "embedded" / "coins" / "patchcore" / "seed0"
    shutil.copy(ci_run / "results" / "mlflow.db", tmp_path / "mlflow.db")  # the other pytest workers read ci_run's
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = log_runs([folder], uri, "fod-suite")
    assert log_runs([folder], uri, "fod-suite") == first
    assert first == {k: v for k, v in json.loads((folder.parent.parent / "mlflow.json").read_text()).items()
                     if k in first}


def test_seed0_stays_within_its_reseeding_spread(ci_run):
    """The reseeding check (not the gate: that is tests/test_golden.py): the CI run's seed-0 numbers lie
    within the seed spread measured for them (results/reference/reseeding_ci.csv), in either direction."""
    table = compare(ROOT / "results" / "reference" / "reseeding_ci.csv", ci_run / "results")
    config = load_config(ROOT / "config" / "ci.yaml")
    cells = {(ds, c, m) for ds in config["run"]["datasets"] for c in config["datasets"][ds]["categories"]
             for m in config["run"]["methods"]}
    assert set(zip(table.dataset, table.category, table.method)) - {(d, "all", m) for d, _, m in cells} == cells
    assert (table.status == "within").all(), table.to_string()


def test_the_workflows_pin_reaches_every_job(ci_run, tmp_path_factory):
    """The pinned run (``determinism.cpu_isa: avx2``: the workflow sets the pin) gives the same tables as a
    run with ``cpu_isa: native`` whose environment carries the same pin from outside: every job (in the
    worker or not) computes with the pinned kernels.  That the pinned numbers are the same on other CPUs
    (Intel and AMD, with and without AVX-512) is tests/test_emulated_cpus.py's part."""
    host = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k not in ISA_VARIABLES}).stdout.strip()
    work = tmp_path_factory.mktemp("pinned_outside")
    native = work / "native.yaml"
    native.write_text("determinism: {cpu_isa: native}\n")
    outside = {**{k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}, **isa_environment("avx2")}
    proc = snakemake(work, "all_tables", configs=(native,), env=outside)
    assert proc.returncode == 0, proc.output[-4000:]
    pinned = json.loads((ci_run / "results/embedded/brick/draem/seed0/metrics.json").read_text())
    simulated = json.loads((work / "results/embedded/brick/draem/seed0/metrics.json").read_text())
    assert (pinned["cpu_isa"], pinned["cpu_capability"]) == ("avx2", "AVX2")
    run = json.loads((ci_run / "results/embedded/brick/fod/seed0/run.json").read_text())
    assert run["flush_denormal"] == "on"  # adbench.methods.determinism.flush_denormals
    assert (simulated["cpu_isa"], simulated["cpu_capability"]) == ("native", "AVX2")
    print(f"compared on this {host} host: the workflow's pin vs the same pin set from outside"
          + ("" if host != "AVX2" else " (this host has AVX2 only: ATen's part of the pin changes nothing here)"))
    assert table_texts(work) == table_texts(ci_run)


def _training_jobs(work: Path) -> list[tuple[int, Path]]:
    """``(pid, run folder)`` of the workflow's running fit_evaluate jobs, found by the log file they hold
    open (``adbench.jobs.job_context``)."""
    logs = work / "results" / "logs" / "fit_evaluate"
    jobs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if target.suffix == ".log" and logs in target.parents:
                        jobs.append((int(pid), work / "results" / target.relative_to(logs).with_suffix("")))
    return jobs


def test_a_killed_run_resumes_to_the_tables_of_an_uninterrupted_one(ci_run, tmp_path_factory):
    """SIGKILL a running training job (its own process group) and the workflow around it; after --unlock
    the killed job is planned again (nothing it left is taken as complete) and the resumed run's tables
    equal the uninterrupted run's.  The local run's coins cells are copied in: brick's are computed, killed
    and resumed."""
    work = tmp_path_factory.mktemp("killed")
    seed_from_local_run(ci_run, work, redo="brick")
    proc = subprocess.Popen(snakemake_command(work, "all_tables"), cwd=work, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 600, None
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            if list((work / "results" / "embedded" / "brick").glob("*/seed0/metrics.json")):  # some are done
                for pid, run in _training_jobs(work):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(os.getpgid(pid), signal.SIGKILL)
                        killed = run
                        break
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed is not None, "no training job was seen running before the workflow ended"
    assert not (killed / "metrics.json").exists()
    assert snakemake(work, "--unlock").returncode == 0
    plan = snakemake(work, "-n", "all_tables")
    assert plan.returncode == 0, plan.output[-2000:]
    cell = "/".join(killed.parts[-4:])
    assert re.search(rf"rule fit_evaluate:\n(?:    .*\n)*?    output: \S*{re.escape(cell)}/model.pt", plan.stdout), \
        f"the killed job {cell} is not planned again:\n{plan.stdout[-3000:]}"
    resumed = snakemake(work, "all_tables", "--rerun-incomplete")
    assert resumed.returncode == 0, resumed.output[-4000:]
    assert table_texts(work) == table_texts(ci_run)
    assert (killed / "scores.csv").read_text() == (ci_run / "results" / killed.relative_to(work / "results")
                                                    / "scores.csv").read_text()


def test_a_changed_method_param_reruns_that_method_only(ci_run, tmp_path):
    override = tmp_path / "coreset.yaml"
    override.write_text("methods: {patchcore: {params: {coreset_ratio: 0.25}}}\n")
    plan = snakemake(ci_run, "-n", "all_tables", configs=(override,))
    assert plan.returncode == 0, plan.output[-2000:]
    refits = sorted(re.findall(r"rule fit_evaluate:\n(?:    .*\n)*?    wildcards: (.*)\n", plan.stdout))
    assert refits == [f"dataset=embedded, category={c}, method=patchcore, seed=0" for c in ("brick", "coins")]


def test_tables_refuse_numbers_made_with_other_settings(ci_run, tmp_path):
    """Without Snakemake's metadata (or with --rerun-triggers mtime) a param change is not seen; the
    table rule still compares each metrics.json's config hash with the current config and stops."""
    work = tmp_path / "copy"
    shutil.copytree(ci_run / "results", work / "results", ignore=shutil.ignore_patterns("mlflow*"))
    override = tmp_path / "coreset.yaml"
    override.write_text("methods: {patchcore: {params: {coreset_ratio: 0.25}}}\n")
    proc = snakemake(work, "results/tables/table2.csv", "--forcerun", "table", "--rerun-triggers", "mtime",
                     configs=(override,))
    assert proc.returncode != 0
    assert "run(s) were made with other settings than the current config" in proc.output
    assert "embedded/brick/patchcore/seed0/metrics.json: made with config hash" in proc.output
    assert "embedded/brick/cflow/seed0/metrics.json: made with" not in proc.output
    assert not (work / "results" / "tables" / "table2.csv").exists()


def test_adding_a_category_to_a_real_dataset_redoes_no_other_category(tmp_path):
    """An MVTec-layout folder (written by the embedded generator): run one category, add a second; the
    plan then prepares, extracts and fits only the new one (per-category markers, no categories in the
    rules' params)."""
    from adbench.data.embedded import EmbeddedConfig, generate_category

    small = EmbeddedConfig(seed=0, size=64, n_train=4, n_test_good=2, n_test_anomalous=2)
    for category in ("brick", "coins"):
        generate_category(tmp_path / "mvtec", category, small)

    def config(categories: str) -> Path:
        path = tmp_path / f"{categories}.yaml"
        path.write_text(
            f"datasets: {{mvtec: {{kind: mvtec_ad, root: {tmp_path / 'mvtec'}, categories: [{categories}]}}}}\n"
            "run: {datasets: [mvtec], methods: [patchcore]}\n"
            "tables: {table2: {dataset: mvtec, methods: [patchcore]}, table4: {datasets: [mvtec], methods: [patchcore]}}\n"
            "mlflow: {enabled: false}\n")
        return path

    first = snakemake(tmp_path, "all_tables", configs=(config("brick"),))
    assert first.returncode == 0, first.output[-4000:]
    assert (tmp_path / "results/data/mvtec/brick.verified").exists()
    # one method: nothing to test for significance, no ranks to draw, no paper category; the rest is written
    assert "no significance tests" in first.output
    made = {p.name for p in (tmp_path / "results").glob("*/*") if p.parent.name in ("tables", "figures")}
    assert {"table2.csv", "defects_pixel.tex", "heatmap_image_auroc.png", "gallery_mvtec_brick.pdf"} <= made
    assert not made & {"significance.csv", "cd_diagram.png", "paper_scatter.png"}
    assert (tmp_path / "results/report.html").exists()
    plan = snakemake(tmp_path, "-n", "all_tables", configs=(config("brick, coins"),))
    assert plan.returncode == 0, plan.output[-2000:]
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", plan.stdout, flags=re.M)
    per_category = [(name, body) for name, body in jobs if name in ("prepare_category", "extract_features",
                                                                    "fit_evaluate", "category_summary")]
    assert per_category and all("category=coins" in body for _, body in per_category), plan.stdout[-3000:]
    assert sorted(name for name, _ in per_category) == [
        "category_summary", "extract_features", "extract_features", "fit_evaluate", "prepare_category"]


def test_rerunning_one_category_reruns_only_its_jobs_and_reproduces_its_numbers(ci_run, tmp_path):
    target = "results/embedded/brick/summary.csv"
    work = tmp_path / "rerun"  # a copy: the other pytest workers read ci_run meanwhile
    shutil.copytree(ci_run, work, symlinks=True)
    plan = snakemake(work, "-n", "--forceall", target)
    assert plan.returncode == 0, plan.output[-2000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", plan.stdout, flags=re.M)
    assert jobs and all("coins" not in body for _, body in jobs)
    runs = sum(cell[1] == "brick" for cell in expected_cells(CI))  # its methods, each with its seeds
    assert sorted(name for name, _ in jobs) == sorted(
        ["generate_embedded", "extract_features", "extract_features", "track_category", "category_summary"]
        + ["fit_evaluate"] * runs)
    # The session's run went through the resident worker (adbench/worker.py); the rerun runs every job in
    # its own process, so equal files also show that the worker changes no number.
    brick = work / "results" / "embedded" / "brick"
    before = {p: p.read_bytes() for p in sorted(brick.glob("*/seed*/scores.csv")) + sorted(brick.glob("*/seed*/maps.npz"))}
    assert len(before) == 2 * runs
    rerun = snakemake(work, "--forceall", target, env={**os.environ, "ADBENCH_WORKER": "0"})
    assert rerun.returncode == 0, rerun.output[-2000:]
    assert all(p.stat().st_mtime_ns > ci_run_file.stat().st_mtime_ns  # the copy's cells were computed again
               for p, ci_run_file in ((p, ci_run / p.relative_to(work)) for p in before))
    changed = [str(p.relative_to(brick)) for p, data in before.items() if p.read_bytes() != data]
    assert not changed, f"same config and seed, other per-image scores or maps: {changed}"


def test_one_core_extracts_the_same_features(ci_run, tmp_path):
    """`--cores 1` gives the feature cache of a 2-core run bit for bit: extraction runs its fixed 2 torch
    threads (workflow/rules/features.smk), not the cores Snakemake allots it (on 1 thread the backbone's
    convolutions give other last bits: up to 3e-5 at the CI and the default size)."""
    shutil.copytree(ci_run / "results" / "data", tmp_path / "results" / "data")
    target = next((ci_run / "results" / "features" / "embedded" / "brick").glob("*/test.pt")).relative_to(ci_run)
    proc = snakemake(tmp_path, str(target), "--cores", "1")  # the last --cores counts
    assert proc.returncode == 0, proc.output[-2000:]
    ours, theirs = (torch.load(root / target, weights_only=False)["features"] for root in (tmp_path, ci_run))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    log = next((tmp_path / "results" / "logs" / "extract_features").rglob("test.log")).read_text()
    assert "torch threads: 2" in log


def test_dry_run_of_the_default_config(tmp_path):
    proc = snakemake(tmp_path, "-n", "all_tables", ci=False)
    assert proc.returncode == 0, proc.output[-2000:]
    assert re.search(r"Using workflow specific profile \S*profiles/default", proc.output)  # without a flag
    for category in ("brick", "grass", "gravel", "coins", "tray"):
        assert f"results/embedded/{category}/patchcore/seed0/metrics.json" in proc.stdout
    # three seeds for FOD, one for the rest (run.one_seed, and methods that are deterministic)
    fits = len(expected_cells(load_config()))
    assert re.search(rf"^fit_evaluate\s+{fits}$", proc.stdout, flags=re.M), proc.stdout[-3000:]
    assert "results/embedded/tray/fod/seed2/metrics.json" in proc.stdout
    assert "results/embedded/tray/fod_paper/seed1/metrics.json" not in proc.stdout
    assert "results/embedded/tray/draem/seed1/" not in proc.stdout


@pytest.mark.parametrize("profile", [None, "paper.yaml"])
def test_the_workflow_passes_snakemakes_linter(tmp_path, profile):
    """No lints (hard-coded output prefixes in params, path composition with '+', ...) for the default and
    the paper profile (linted as a dry run: its data and weights are not here)."""
    configs = (ROOT / "config" / profile,) if profile else ()
    proc = snakemake(tmp_path, "--lint", "-n", ci=False, configs=configs)
    assert "Lints for" not in proc.output and "Congratulations" in proc.output, proc.output[-3000:]


def test_bad_config_fails_at_once_with_the_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {datasets: [embedded], methods: [nosuch], seeds: [0]}\n")
    proc = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(bad), ci=False)
    assert proc.returncode != 0 and "run.methods names 'nosuch'" in proc.output
    paper = tmp_path / "b6.yaml"
    paper.write_text("backbone: {name: tf_efficientnet_b6.aa_in1k}\n")
    proc = snakemake(tmp_path, "all_tables", "--configfile", str(paper), ci=False)  # a real run: stops at once
    assert proc.returncode != 0 and "results/weights/tf_efficientnet_b6_aa-80ba17e4.pth" in proc.output
    assert not (tmp_path / "results" / "data").exists()
    plan = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(paper), ci=False)  # a dry run: warns
    assert plan.returncode == 0 and "dry run only, a real run stops here" in plan.output
    assert "tf_efficientnet_b6_aa-80ba17e4.pth" in plan.output
    # a file under that name that is not the checkpoint (a partial download): refused, naming both digests
    weights = tmp_path / "results" / "weights" / "tf_efficientnet_b6_aa-80ba17e4.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"partial")
    proc = snakemake(tmp_path, "all_tables", "--configfile", str(paper), ci=False)
    assert proc.returncode != 0 and "its SHA-256 is " + hashlib.sha256(b"partial").hexdigest() in proc.output
    assert "expected 80ba17e4" in proc.output and not (tmp_path / "results" / "data").exists()


@pytest.mark.parametrize("category", ["my cat", "../brick"])
def test_a_category_that_cannot_be_a_folder_name_is_refused_by_the_schema(tmp_path, category):
    """A space or a path in a category name used to end in Snakemake's generic MissingInputException (the
    rules only match [A-Za-z0-9_]+); the schema now names the entry and the allowed pattern."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"datasets": {"embedded": {"categories": ["brick", category]}}}))
    proc = snakemake(tmp_path, "-n", "all_tables", configs=(bad,))
    assert proc.returncode != 0 and f"'{category}' does not match '^[A-Za-z0-9_]+$'" in proc.output
    assert "['datasets']['embedded']['categories'][1]" in proc.output


def test_the_paper_profile_dry_runs_without_its_data_or_weights(tmp_path):
    """All 392 fit jobs (28 categories x 14 methods, one seed) are listed; the missing data and b6 weights are
    named."""
    proc = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(ROOT / "config" / "paper.yaml"), ci=False)
    assert proc.returncode == 0, proc.output[-3000:]
    assert re.search(r"^fit_evaluate\s+392$", proc.stdout, flags=re.M), proc.stdout[-3000:]
    for dataset in ("mvtec3d",):  # no url: cannot be downloaded
        assert f"datasets.{dataset}: categories" in proc.output
    assert "download_dataset" in proc.stdout  # mvtec_ad and btad have urls
    assert re.search(r"^download_dtd\s+1$", proc.stdout, flags=re.M)  # DRAEM's anomaly source, as the public code
    assert "tf_efficientnet_b6_aa-80ba17e4.pth" in proc.output  # the b6 checkpoint timm 0.6.12 loads


def test_data_root_replaces_the_roots_and_names_what_is_missing(tmp_path):
    """data_root holds the datasets on disk: nothing is downloaded; categories it lacks stop the run at
    once, naming them and the folder looked in."""
    from adbench.data.embedded import EmbeddedConfig, generate_category

    generate_category(tmp_path / "disk" / "mvtec_ad", "brick", EmbeddedConfig(seed=0, size=64, n_train=2,
                                                                              n_test_good=1, n_test_anomalous=1))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {tmp_path / 'disk'}\n"
                   "datasets: {mvtec_ad: {kind: mvtec_ad, root: nowhere, categories: [brick, coins], url: http://127.0.0.1:9/x.tar}}\n"
                   "run: {datasets: [mvtec_ad], methods: [patchcore]}\n"
                   "tables: {table2: {dataset: mvtec_ad, methods: [patchcore]}, table4: {datasets: [mvtec_ad], methods: [patchcore]}}\n")
    proc = snakemake(tmp_path, "all_tables", "--configfile", str(cfg), ci=False)
    assert proc.returncode != 0
    assert f"datasets.mvtec_ad: categories ['coins'] not found under {tmp_path / 'disk' / 'mvtec_ad'}" in proc.output
    only_brick = tmp_path / "brick.yaml"
    only_brick.write_text("datasets: {mvtec_ad: {categories: [brick]}}\n")
    plan = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(cfg), str(only_brick), ci=False)
    assert plan.returncode == 0, plan.output[-2000:]
    assert "download_dataset" not in plan.stdout and "prepare_category" in plan.stdout
