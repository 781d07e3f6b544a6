"""CI's gate: the CI run reproduces the committed golden files exactly, and the comparison sees every kind of
difference (a number up or down, a missing or extra cell, a table's text, a changed config)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from adbench.operations.golden import compare, expected_cells, reference_for, summary, write
from adbench.methods.runs import load_config, run_folder
from workflow_runs import ROOT

CI = ROOT / "config" / "ci.yaml"
GOLDEN = ROOT / "results" / "reference" / "ci"


def test_the_ci_run_reproduces_its_golden_files_exactly(ci_run):
    """Every number of every cell and every table file of the pinned CI run equals results/reference/ci
    (regenerate it with `make reference` when a change of the numbers is intended)."""
    result = compare(ci_run / "results", GOLDEN, load_config(CI))
    assert result.exact, result.report()
    assert result.cells == len(expected_cells(load_config(CI))) and result.tables >= 20
    # the run said so at its end (the reproduction rule, printed by the Snakefile's onsuccess)
    out = (ci_run / "snakemake.out").read_text()
    assert "# Reproduction summary" in out and "Against results/reference/ci: reproduced exactly" in out
    assert "Table 2, mean image AUROC over the categories: " in out


def test_the_committed_golden_files_cover_exactly_the_ci_configs_cells():
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    config = load_config(CI)
    assert sorted(manifest["cells"]) == sorted("/".join([d, c, m, f"seed{s}"]) for d, c, m, s in expected_cells(config))
    assert manifest["cpu_isa"] == "avx2" and manifest["config_files"] == ["config/ci.yaml"]
    assert reference_for([ROOT / "config" / "config.yaml", CI]) == GOLDEN
    assert reference_for([CI, ROOT / "config" / "config.yaml"]) == GOLDEN  # Snakemake's order
    assert reference_for([ROOT / "config" / "paper.yaml"]) is None


@pytest.fixture
def golden_copy(ci_run, tmp_path) -> tuple[Path, Path, dict]:
    """``(results, golden, config)``: the CI run's metrics and tables, and golden files written from them."""
    results = tmp_path / "results"
    shutil.copytree(ci_run / "results" / "tables", results / "tables")
    config = load_config(CI)
    for cell in expected_cells(config):
        folder = Path(run_folder(results, *cell))
        folder.mkdir(parents=True)
        shutil.copy(Path(run_folder(ci_run / "results", *cell)) / "metrics.json", folder)
    golden = tmp_path / "golden"
    write(results, golden, [ROOT / "config" / "config.yaml", CI])
    assert compare(results, golden, config).exact
    return results, golden, config


def _edit_metrics(results: Path, cell: tuple, **changes) -> None:
    path = Path(run_folder(results, *cell)) / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update(changes)
    path.write_text(json.dumps(metrics))


@pytest.mark.parametrize("delta", [+1e-5, -1e-5], ids=["up", "down"])
def test_any_move_of_a_number_fails_in_either_direction(golden_copy, delta):
    results, golden, config = golden_copy
    cell = ("embedded", "brick", "patchcore", 0)
    value = json.loads((Path(run_folder(results, *cell)) / "metrics.json").read_text())["pixel_auroc"]
    _edit_metrics(results, cell, pixel_auroc=value + delta)
    result = compare(results, golden, config)
    assert not result.exact
    assert [(c, m) for c, m, _, _ in result.moved] == [("embedded/brick/patchcore/seed0", "pixel_auroc")]
    assert "embedded/brick/patchcore/seed0 pixel_auroc" in result.report()


def test_a_method_at_chance_fails(golden_copy):
    """The failure the old tolerance gate let through: one method's AUROCs replaced by 0.5."""
    results, golden, config = golden_copy
    for ds, cat, method, seed in expected_cells(config):
        if method == "cflow":
            _edit_metrics(results, (ds, cat, method, seed), image_auroc=0.5, pixel_auroc=0.5)
    moved = {(c, m) for c, m, _, _ in compare(results, golden, config).moved}
    assert {("embedded/brick/cflow/seed0", "image_auroc"), ("embedded/coins/cflow/seed0", "pixel_auroc")} <= moved


def test_missing_and_extra_cells_are_derived_from_the_config(golden_copy, tmp_path):
    results, golden, config = golden_copy
    (Path(run_folder(results, "embedded", "coins", "mkd", 0)) / "metrics.json").unlink()
    result = compare(results, golden, config)
    assert result.missing_cells == [f"{run_folder(results, 'embedded', 'coins', 'mkd', 0)}/metrics.json"]
    assert not result.moved  # a missing cell is reported once, not as every one of its numbers
    # a config asking for one more seed of a method: cells the golden files lack
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({"run": {"one_seed": [m for m in config["run"]["one_seed"] if m != "mkd"]}}))
    wider = load_config(CI, more)
    result = compare(results, golden, wider)
    assert "embedded/brick/mkd/seed1" in result.unexpected_cells
    assert f"{run_folder(results, 'embedded', 'brick', 'mkd', 1)}/metrics.json" in result.missing_cells


def test_a_changed_table_or_config_fails(golden_copy, tmp_path):
    results, golden, config = golden_copy
    table = results / "tables" / "table2.md"
    table.write_text(table.read_text().replace("0.", "0,", 1))
    assert compare(results, golden, config).changed_tables == ["table2.md"]
    table.write_text((golden / "tables" / "table2.md").read_text())
    (results / "tables" / "extra.csv").write_text("x\n")
    assert compare(results, golden, config).changed_tables == ["extra.csv"]
    (results / "tables" / "extra.csv").unlink()
    coreset = tmp_path / "coreset.yaml"
    coreset.write_text("methods: {patchcore: {params: {coreset_ratio: 0.25}}}\n")
    result = compare(results, golden, load_config(CI, coreset))
    assert result.changed_config == ["embedded/brick/patchcore/seed0", "embedded/coins/patchcore/seed0"]


def test_the_summary_names_the_moved_cells_and_where_the_outputs_are(golden_copy, tmp_path):
    results, golden, config = golden_copy
    root = tmp_path / "repo"  # a repository whose committed reference for config/ci.yaml is the copy
    shutil.copytree(golden, root / "results" / "reference" / "ci")
    text = summary(results, config, ["config/ci.yaml"], root)
    assert "reproduced exactly" in text and f"Report: {results / 'report.html'}" in text
    assert "MLflow: sqlite:///results/mlflow.db" in text
    _edit_metrics(results, ("embedded", "coins", "fod", 1), image_auroc=0.999)
    text = summary(results, config, ["config/ci.yaml"], root)
    assert "embedded/coins/fod/seed1 image_auroc" in text and "reproduced exactly" not in text
    assert "No committed reference for this config" in summary(results, config, ["config/paper.yaml"], root)


def test_a_per_category_param_changes_only_that_categorys_cell_hashes():
    """methods.<m>.per_category.<c> lays params over methods.<m>.params for category c only (PatchSVDD's
    lambda is tuned per class by its author): its cells get their own config hash, which the workflow
    (workflow/rules/common.smk cell_config) and the golden files compute the same way."""
    from adbench.operations.golden import cell_hashes
    from adbench.methods.registry import cell_params

    config = load_config(ROOT / "config" / "ci.yaml")
    before = cell_hashes(config)
    config["methods"]["patchsvdd"]["per_category"] = {"brick": {"lambda": 1.0}}
    after = cell_hashes(config)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {key for key in before if key.startswith("embedded/brick/patchsvdd/")} and changed
    entry = config["methods"]["patchsvdd"]
    assert cell_params("patchsvdd", entry, "brick")["lambda"] == 1.0
    assert cell_params("patchsvdd", entry, "coins")["lambda"] == 1e-3  # the default, from params
