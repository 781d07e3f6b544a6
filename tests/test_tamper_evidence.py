"""Tamper-evident results (adbench.evaluation.integrity): every reader of metrics.json checks it against its run folder.

Real run folders are made once per module by ``fit_run`` + ``evaluate_run`` (PatchCore, which trains
nothing, on small synthetic splits); each test edits a copy of one by hand, as a person touching up a
number would, and checks that the tables, the figures, the category summary and the MLflow logging stop
and name the file.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from synthetic import synthetic_split

from adbench.evaluation import evaluate
from adbench.features.cache import save_split
from adbench.evaluation.integrity import AUROC_TOLERANCE, DIGESTS, TamperedRunError, read_metrics, read_scores, sha256_of
from adbench.evaluation.metrics import roc_auc
from adbench.methods.registry import check_method_entry
from adbench.methods.runs import read_maps, run_config, run_folder, write_maps
from adbench.reporting.tables import write_table

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ("a", "b")
PATCHCORE = {"coreset_ratio": 0.1, "pretrain_embed_dim": 64, "target_embed_dim": 64, "projection_dim": 16}
TABLE2 = {"kind": "per_category", "dataset": "embedded", "methods": ["patchcore"], "metric": "image_auroc"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """``<root>/results/embedded/<a|b>/patchcore/seed0/`` as the workflow's fit_evaluate job leaves them, and
    the categories' test feature caches under ``<root>/results/features/``."""
    root = tmp_path_factory.mktemp("made")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg = run_config(config, "embedded", "patchcore", 0,
                     check_method_entry("patchcore", {"impl": "patchcore", "params": PATCHCORE}))
    for i, category in enumerate(CATEGORIES):
        cache = root / "results" / "features" / "embedded" / category / "tiny"
        train, test = synthetic_split(6, 0, seed=10 * i), synthetic_split(5, 5, seed=10 * i + 1)
        save_split(train, cache / "train.pt", {"image_size": train.image_size})
        save_split(test, cache / "test.pt", {"image_size": test.image_size})
        out = Path(run_folder(root / "results", "embedded", category, "patchcore", 0))
        evaluate.fit_run(cfg, category, cache / "train.pt", out / "model.pt", out / "run.json", cache / "test.pt",
                         root)
        evaluate.evaluate_run(cache / "test.pt", out / "model.pt", out / "run.json", out)
    return root


@pytest.fixture
def results(made, tmp_path) -> Path:
    """A fresh copy of the made results folder, to edit."""
    shutil.copytree(made / "results", tmp_path / "results")
    return tmp_path / "results"


def metrics_files(results: Path) -> list[str]:
    return [f"{run_folder(results, 'embedded', c, 'patchcore', 0)}/metrics.json" for c in CATEGORIES]


def test_evaluate_run_records_the_digests_and_the_tables_accept_untouched_folders(results, tmp_path):
    paths = metrics_files(results)
    for path in paths:
        record = json.loads(Path(path).read_text())
        folder = Path(path).parent
        assert {field: sha256_of(folder / name) for field, name in DIGESTS.items()} == \
            {field: record[field] for field in DIGESTS}
        labels, scores = read_scores(folder / "scores.csv")
        assert roc_auc(labels, scores) == record["image_auroc"]  # the same bits: the tolerance is headroom
    assert [r["image_auroc"] for r in read_metrics(paths)] == [json.loads(Path(p).read_text())["image_auroc"]
                                                               for p in paths]
    write_table(TABLE2, paths, str(tmp_path / "t2"))
    assert (tmp_path / "t2.csv").exists()


def _edit_metrics(folder: Path) -> str:
    """The issue's edit: metrics.json's image AUROC changed by hand (0.917 -> 0.999 style; down to 0.917
    where the run scored above 0.999)."""
    record = json.loads((folder / "metrics.json").read_text())
    record["image_auroc"] = 0.999 if record["image_auroc"] < 0.999 else 0.917
    (folder / "metrics.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    return f"its image_auroc {record['image_auroc']} is not the AUROC of the scores in"


def _edit_scores(folder: Path) -> str:
    """One normal image's score lowered in scores.csv (the AUROC it implies rises)."""
    lines = (folder / "scores.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.split(",")[1] == "0")
    cells = lines[row].split(",")
    cells[-1] = repr(float(cells[-1]) - 100.0)
    lines[row] = ",".join(cells)
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")
    return f"{folder / 'scores.csv'} has SHA-256"


def _edit_maps(folder: Path) -> str:
    """One pixel of one map changed, the file rewritten by the suite's own writer (valid, readable)."""
    maps, ids = read_maps(folder / "maps.npz")
    maps[0, 0, 0] = maps.max() * 2
    write_maps(folder / "maps.npz", maps, ids)
    return f"{folder / 'maps.npz'} has SHA-256"


EDITS = {"metrics.json": _edit_metrics, "scores.csv": _edit_scores, "maps.npz": _edit_maps}


@pytest.mark.parametrize("edited", EDITS)
def test_a_hand_edited_run_stops_the_table_naming_the_file(results, tmp_path, edited):
    paths = metrics_files(results)
    said = EDITS[edited](Path(paths[1]).parent)
    with pytest.raises(TamperedRunError) as err:
        write_table(TABLE2, paths, str(tmp_path / "t2"))
    message = str(err.value)
    assert f"{paths[1]}: " in message and said in message, message
    assert paths[0] not in message  # the untouched cell is not blamed
    assert f"snakemake --force {paths[1]}" in message and "delete their run folders" in message
    assert list(err.value.problems) == [paths[1]]
    assert not list(tmp_path.glob("t2.*"))  # no table written


def test_the_image_auroc_must_match_its_scores_to_summation_noise_only(results):
    path = Path(metrics_files(results)[0])
    record = json.loads(path.read_text())
    stated = record["image_auroc"]
    record["image_auroc"] = stated + AUROC_TOLERANCE / 2  # summation noise: accepted
    path.write_text(json.dumps(record))
    read_metrics([path])
    record["image_auroc"] = stated + 1e-9  # far below what a table prints, far above summation noise
    path.write_text(json.dumps(record))
    with pytest.raises(TamperedRunError, match="floating-point summation noise, at most"):
        read_metrics([path])


def test_a_metrics_json_without_digests_is_refused(results):
    path = Path(metrics_files(results)[0])
    record = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "maps_sha256"}))
    with pytest.raises(TamperedRunError, match=r"records no maps_sha256 \(SHA-256 of maps.npz\)"):
        read_metrics([path])
    (path.parent / "scores.csv").unlink()
    with pytest.raises(TamperedRunError, match=r"scores.csv is missing"):
        read_metrics([path])


def test_an_unreadable_scores_csv_is_reported_with_the_other_problems(results):
    path = Path(metrics_files(results)[0])
    scores = path.parent / "scores.csv"
    lines = scores.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",n/a"
    scores.write_text("\n".join(lines) + "\n")
    with pytest.raises(TamperedRunError) as err:
        read_metrics([path])
    assert err.value.problems[str(path)] == [
        f"{scores} has SHA-256 {sha256_of(scores)[:16]}..., metrics.json recorded "
        f"{json.loads(path.read_text())['scores_sha256'][:16]}...: it was changed after the run",
        f"{scores} holds a label or score that is not a number (could not convert string to float: 'n/a'): "
        f"rerun the cell"]


def test_a_degenerate_cell_is_never_read_as_an_auroc(results):
    """Constant scores (AUROC exactly 0.5) with digests and AUROC that agree, as only a forged folder could
    have them (evaluate_run refuses to write one: tests/test_degenerate_outputs.py)."""
    path = Path(metrics_files(results)[0])
    folder = path.parent
    labels, _ = read_scores(folder / "scores.csv")
    lines = (folder / "scores.csv").read_text().splitlines()
    rows = [line.rsplit(",", 1)[0] + ",0.0" for line in lines[1:]]
    (folder / "scores.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    record = json.loads(path.read_text())
    record.update(image_auroc=roc_auc(labels, np.zeros(len(labels))), scores_sha256=sha256_of(folder / "scores.csv"))
    assert record["image_auroc"] == 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(TamperedRunError, match="every score in .* is 0.0: a degenerate"):
        read_metrics([path])


def test_the_figures_and_the_category_summary_refuse_an_edited_run(results, tmp_path):
    from adbench.reporting.evidence import draw_figures
    from adbench.jobs import summarise_category

    paths = metrics_files(results)
    _edit_metrics(Path(paths[0]).parent)
    with pytest.raises(TamperedRunError, match=re.escape(paths[0])):
        draw_figures(results, "embedded", list(CATEGORIES), ["patchcore"], {"patchcore": [0]}, [], "tiny",
                     tmp_path / "figures")
    assert not (tmp_path / "figures").exists()
    with pytest.raises(TamperedRunError, match=re.escape(paths[0])):
        summarise_category(paths[:1], str(tmp_path / "summary.csv"))
    assert not (tmp_path / "summary.csv").exists()


@pytest.mark.parametrize("edited", ["metrics.json", "scores.csv"])
def test_the_workflows_table_job_stops_on_a_hand_edited_cell(ci_run, tmp_path, edited):
    """End to end, on a copy of the session's CI run: the ``table`` job refuses the edited cell, names its
    metrics.json and writes no table.  scores.csv and maps.npz are inputs of the rule, so an edited one
    makes the table job run again by itself (no ``--forcerun``) and fail there."""
    from workflow_runs import snakemake

    work = tmp_path / "copy"
    shutil.copytree(ci_run / "results", work / "results", ignore=shutil.ignore_patterns("mlflow*"))
    cell = "results/embedded/brick/fod/seed0"
    said = EDITS[edited](work / cell)
    args = ("--forcerun", "table") if edited == "metrics.json" else ()
    proc = snakemake(work, "results/tables/table2.csv", *args)
    assert proc.returncode != 0, proc.output[-3000:]
    assert f"{cell}/metrics.json: " in proc.output and said.replace(str(work) + "/", "") in proc.output
    assert f"snakemake --force {cell}/metrics.json" in proc.output
    assert "results/embedded/brick/cflow/seed0/metrics.json: " not in proc.output
    assert not (work / "results" / "tables" / "table2.csv").exists()
