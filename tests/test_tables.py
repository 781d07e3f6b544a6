import json
from pathlib import Path

import pandas as pd
import pytest

from adbench.tables import StaleRunError, to_markdown, write_table2


def _runs(tmp_path, kind, rows):
    paths = []
    for i, (cat, method, seed, auroc) in enumerate(rows):
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps({"dataset": "d", "dataset_kind": kind, "category": cat, "method": method,
                                 "seed": seed, "image_auroc": auroc}))
        paths.append(str(p))
    return paths


def test_table2_means_over_seeds_and_categories(tmp_path):
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("a", "x", 1, 0.6), ("b", "x", 0, 1.0),
                                         ("a", "y", 0, 0.5), ("b", "y", 0, 0.9)])
    write_table2(paths, "d", ["x", "y"], tmp_path / "t.csv", tmp_path / "t.md")
    t = pd.read_csv(tmp_path / "t.csv", index_col=0)
    assert list(t.index) == ["a", "b", "mean"]
    assert t.loc["a", "x"] == pytest.approx(0.7)
    assert t.loc["mean", "x"] == pytest.approx(0.85) and t.loc["mean", "y"] == pytest.approx(0.7)
    assert "paper:x" not in t.columns  # the paper has no numbers for this dataset
    assert "| **mean** | 0.850 | 0.700 |" in (tmp_path / "t.md").read_text()


def test_table2_puts_paper_numbers_beside_mvtec_runs(tmp_path):
    paths = _runs(tmp_path, "mvtec_ad", [("carpet", "patchcore", 0, 0.97), ("screw", "patchcore", 0, 0.9)])
    write_table2(paths, "d", ["patchcore"], tmp_path / "t.csv", tmp_path / "t.md")
    t = pd.read_csv(tmp_path / "t.csv", index_col=0)
    assert t.loc["carpet", "paper:patchcore"] == pytest.approx(1.0)
    assert t.loc["screw", "paper:patchcore"] == pytest.approx(0.953)
    # like with like: the paper's mean over the two categories run, not its 15-category mean
    assert t.loc["mean", "paper:patchcore"] == pytest.approx((1.0 + 0.953) / 2)
    assert t.loc["mean", "patchcore"] == pytest.approx((0.97 + 0.9) / 2)
    published = "paper mean, all 15 categories (published)"
    assert t.loc[published, "paper:patchcore"] == pytest.approx(0.983) and pd.isna(t.loc[published, "patchcore"])
    assert f"| **{published}** | - | 0.983 |" in (tmp_path / "t.md").read_text()


@pytest.mark.parametrize("categories,mean", [(["01", "03"], None), (["01", "02", "03"], 0.960)])
def test_table2_on_btad_has_the_published_mean_like_for_like_only_over_all_categories(tmp_path, categories, mean):
    """The paper gives BTAD only as a mean over its 3 products: it stands in the mean row only when all 3
    were run, and always in its own labelled row."""
    paths = _runs(tmp_path, "btad", [(c, "fod", 0, 0.9) for c in categories])
    write_table2(paths, "d", ["fod"], tmp_path / "t.csv", tmp_path / "t.md")
    t = pd.read_csv(tmp_path / "t.csv", index_col=0, dtype={"category": str})
    assert t["paper:fod"][categories].isna().all()
    assert (pd.isna(t.loc["mean", "paper:fod"]) if mean is None else t.loc["mean", "paper:fod"] == pytest.approx(mean))
    assert t.loc["paper mean, all 3 categories (published)", "paper:fod"] == pytest.approx(0.960)


def test_tables_refuse_a_run_made_with_other_settings(tmp_path):
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("b", "x", 0, 0.6)])
    for p in paths:
        record = json.loads(Path(p).read_text())
        Path(p).write_text(json.dumps({**record, "config_hash": "aaaaaaaaaaaa"}))
    expected = {paths[0]: "aaaaaaaaaaaa", paths[1]: "bbbbbbbbbbbb"}
    with pytest.raises(StaleRunError, match=rf"{paths[1]}: made with config hash aaaaaaaaaaaa, the current config gives bbbbbbbbbbbb"):
        write_table2(paths, "d", ["x"], tmp_path / "t.csv", tmp_path / "t.md", expected)
    assert not (tmp_path / "t.csv").exists()


def test_table2_refuses_missing_cells(tmp_path):
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("b", "y", 0, 0.9)])
    with pytest.raises(ValueError, match="run them first"):
        write_table2(paths, "d", ["x", "y"], tmp_path / "t.csv", tmp_path / "t.md")


def test_markdown_marks_missing_cells():
    t = pd.DataFrame({"m": [0.5, float("nan")]}, index=pd.Index(["a", "mean"], name="category"))
    assert "| **mean** | - |" in to_markdown(t)
