"""The evidence stage of the CI workflow run (``ci_run``): every table in three formats, the significance
tests, the figures, the HTML report opened in headless Chromium, and Snakemake's own report."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import browser
from adbench.reporting.significance import delong
from adbench.methods.runs import load_config
from workflow_runs import ROOT, snakemake

TABLES = ["table1", "table2", "table2_pixel", "table3", "table4", "defects_image", "defects_pixel"]
CI = load_config(ROOT / "config" / "ci.yaml")
CATEGORIES = CI["datasets"]["embedded"]["categories"]
BASELINES = [m for m in CI["tables"]["table2"]["methods"] if m != "fod"]  # table2's methods but the reference


def test_every_table_in_three_formats(ci_run):
    tables = ci_run / "results" / "tables"
    for name in TABLES:
        csv = pd.read_csv(tables / f"{name}.csv", index_col=0)
        assert not csv.empty
        md, tex = (tables / f"{name}.md").read_text(), (tables / f"{name}.tex").read_text()
        assert "**" in md and "\\textbf{" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    pixel = pd.read_csv(tables / "table2_pixel.csv", index_col=0)
    coins = json.loads((ci_run / "results/embedded/coins/mkd/seed0/metrics.json").read_text())
    assert pixel.loc["coins", "mkd"] == pytest.approx(coins["pixel_auroc"], abs=1e-4)
    table1 = pd.read_csv(tables / "table1.csv", index_col=0)
    assert table1.loc["PaDiM", "status"] == "reported, not rerun"
    assert table1.loc["FOD (Ours) [fod_paper]", "paper:image_auroc"] == pytest.approx(0.992)
    assert table1["diff:image_auroc"].isna().all()  # embedded is not MVTec AD: nothing to subtract
    defects = pd.read_csv(tables / "defects_pixel.csv", index_col=0)
    brick = json.loads((ci_run / "results/embedded/brick/patchcore/seed0/metrics.json").read_text())
    assert set(brick["defect_types"]) == {"scratch", "hole", "contamination", "colour"}
    assert defects.loc["brick / colour (hard_global)", "patchcore"] == pytest.approx(
        brick["defect_types"]["colour"]["pixel_auroc"], abs=1e-4)
    assert {"mean over categories: local", "mean over categories: logical"} <= set(defects.index)
    summary = pd.read_csv(ci_run / "results/embedded/brick/summary.csv")  # one scalar per column
    assert "defect_types" not in summary and summary.image_auroc.notna().all()
    table3 = pd.read_csv(tables / "table3.csv", index_col=0)
    assert table3.loc["embedded (2 categories): image-level AUROC", "fod:seeds"] == 2


def test_significance_pairs_fod_with_every_baseline_per_category(ci_run):
    sig = pd.read_csv(ci_run / "results" / "tables" / "significance.csv")
    # fod ran seeds 0 and 1; every baseline one seed, paired with both
    assert len(sig) == len(CATEGORIES) * len(BASELINES) * 2
    assert set(sig.baseline) == set(BASELINES) and set(sig.reference_seed) == {0, 1}
    assert ((sig.delong_p_holm >= sig.delong_p - 1e-12) & (sig.delong_p_holm <= 1)).all()
    assert (sig.image_diff_lo <= sig.image_auroc_diff + 1e-9).all() and (sig.image_auroc_diff <= sig.image_diff_hi + 1e-9).all()
    row = sig[(sig.category == "coins") & (sig.baseline == "patchcore") & (sig.reference_seed == 1)].iloc[0]
    runs = ci_run / "results" / "embedded" / "coins"
    fod, pc = (pd.read_csv(runs / m / "scores.csv") for m in ("fod/seed1", "patchcore/seed0"))
    again = delong(fod.label.to_numpy(), fod.score.to_numpy(), pc.score.to_numpy())
    assert row.delong_p == pytest.approx(again.p_value) and row.image_auroc_diff == pytest.approx(again.diff)
    summary = (ci_run / "results" / "tables" / "significance.md").read_text()
    assert "DeLong" in summary and "Wilcoxon" in summary and "Friedman" in summary


def test_every_figure_as_png_and_pdf(ci_run):
    figures = ci_run / "results" / "figures"
    stems = ["heatmap_image_auroc", "heatmap_pixel_auroc", "cd_diagram", "training_fod", "training_fod_paper"]
    stems += [f"{kind}_embedded_{c}" for kind in ("roc", "gallery") for c in CATEGORIES]
    for stem in stems:
        png = np.asarray(Image.open(figures / f"{stem}.png").convert("L"), dtype=float)
        assert png.shape[0] > 200 and png.std() > 10, stem
        assert (figures / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
    assert not (figures / "paper_scatter.png").exists()  # the paper has no embedded numbers


def test_the_html_report_renders_every_table_and_figure(ci_run, tmp_path):
    report = ci_run / "results" / "report.html"
    try:
        seen = browser.check_report(report, TABLES, tmp_path / "report.png")
    except browser.BrowserUnavailable as err:
        pytest.skip(f"no headless Chromium: {err}")
    figures = sorted((ci_run / "results" / "figures").glob("*.png"))
    assert len(seen["images"]) == len(figures) and all(i["naturalWidth"] > 0 for i in seen["images"])
    table2 = next(t for t in seen["tables"] if t["name"] == "table2")
    assert table2["rows"] == 3 and table2["best"]  # brick, coins, mean; the best cells marked


def test_snakemakes_own_report_holds_the_tables_and_figures(ci_run, tmp_path):
    out = tmp_path / "snakemake_report.html"
    proc = snakemake(ci_run, "all_tables", "--report", str(out))
    assert proc.returncode == 0, proc.output[-3000:]
    text = out.read_text()
    for name in ["table2.csv", "significance.csv", "heatmap_image_auroc.png", "cd_diagram.png", "report.html"]:
        assert name in text, name
    try:
        shot = browser.screenshot(out, tmp_path / "snakemake_report.png")
    except browser.BrowserUnavailable as err:
        pytest.skip(f"no headless Chromium: {err}")
    assert not browser.blank(shot)
