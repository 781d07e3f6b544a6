import json

import pandas as pd
import pytest

from adbench.tables import to_markdown, write_table2


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


def test_table2_refuses_missing_cells(tmp_path):
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("b", "y", 0, 0.9)])
    with pytest.raises(ValueError, match="run them first"):
        write_table2(paths, "d", ["x", "y"], tmp_path / "t.csv", tmp_path / "t.md")


def test_markdown_marks_missing_cells():
    t = pd.DataFrame({"m": [0.5, float("nan")]}, index=pd.Index(["a", "mean"], name="category"))
    assert "| **mean** | - |" in to_markdown(t)
