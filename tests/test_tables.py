import json
from pathlib import Path

import pandas as pd
import pytest
from run_folders import write_result_files

from adbench.reporting.tables import PAPER_CATEGORIES, StaleRunError, Table, to_latex, to_markdown, write_table


def write_table2(paths, dataset, methods, csv_out, md_out, expected=None, metric="image_auroc"):
    """Table 2 of ``paths`` at ``csv_out``'s stem (csv, md and tex beside each other)."""
    spec = {"kind": "per_category", "dataset": dataset, "methods": methods, "metric": metric}
    write_table(spec, paths, str(Path(csv_out).with_suffix("")), expected)


def _runs(tmp_path, kind, rows, dataset="d", extra=None):
    """Run folders of runs ``(category, method, seed, image_auroc)``: metrics.json beside a scores.csv with
    that image AUROC and a maps.npz, with their digests (``run_folders.write_result_files``); returns the
    metrics.json paths.  ``extra(row) -> dict`` adds fields."""
    paths = []
    for i, row in enumerate(rows):
        cat, method, seed, auroc = row
        p = tmp_path / dataset / str(i) / "metrics.json"
        record = {"dataset": dataset, "dataset_kind": kind, "category": cat, "method": method, "impl": method,
                  "seed": seed, **write_result_files(p.parent, auroc), "pixel_auroc": auroc - 0.05}
        p.write_text(json.dumps({**record, **(extra(row) if extra else {})}))
        paths.append(str(p))
    return paths


def test_table2_means_and_stds_over_seeds(tmp_path):
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("a", "x", 1, 0.6), ("b", "x", 0, 1.0),
                                         ("b", "x", 1, 0.8), ("a", "y", 0, 0.5), ("b", "y", 0, 0.9)])
    write_table2(paths, "d", ["x", "y"], tmp_path / "t.csv", tmp_path / "t.md")
    t = pd.read_csv(tmp_path / "t.csv", index_col=0)
    assert list(t.index) == ["a", "b", "mean"]
    assert t.loc["a", "x"] == pytest.approx(0.7)
    assert t.loc["a", "x:std"] == pytest.approx(0.1414, abs=1e-4) and t.loc["a", "x:seeds"] == 2
    # the mean row's std is over the per-seed category means (0.9 and 0.7), not the cells' stds
    assert t.loc["mean", "x"] == pytest.approx(0.8) and t.loc["mean", "x:std"] == pytest.approx(0.1414, abs=1e-4)
    assert t.loc["mean", "y"] == pytest.approx(0.7) and pd.isna(t.loc["mean", "y:std"])
    assert t.loc["mean", "y:seeds"] == 1
    assert "paper:x" not in t.columns  # the paper has no numbers for this dataset
    md = (tmp_path / "t.md").read_text()
    assert "| **mean** | **0.800 ± 0.141** | <u>0.700</u> |" in md  # best bold, second underlined
    assert "| a | **0.700 ± 0.141** | <u>0.500</u> |" in md
    tex = (tmp_path / "t.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\textbf{0.800 $\\pm$ 0.141} & \\underline{0.700}" in tex


def test_a_mean_over_categories_needs_the_same_seeds_in_every_category(tmp_path):
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("a", "x", 1, 0.6), ("b", "x", 0, 1.0)])
    with pytest.raises(ValueError, match="different seeds"):
        write_table2(paths, "d", ["x"], tmp_path / "t.csv", tmp_path / "t.md")


def test_the_best_on_test_column_stands_beside_the_last_epoch_and_is_never_emphasised(tmp_path):
    rows = [("a", "fod", 0, 0.6), ("a", "fod", 1, 0.7), ("a", "pc", 0, 0.9)]
    paths = _runs(tmp_path, "embedded", rows,
                  extra=lambda r: {"best_on_test_image_auroc": r[3] + 0.2} if r[1] == "fod" else {})
    write_table2(paths, "d", ["pc", "fod"], tmp_path / "t.csv", tmp_path / "t.md")
    t = pd.read_csv(tmp_path / "t.csv", index_col=0)
    assert t.loc["a", "best_on_test:fod"] == pytest.approx(0.85) and t.loc["a", "fod"] == pytest.approx(0.65)
    assert "best_on_test:pc" not in t
    md = (tmp_path / "t.md").read_text()
    assert "fod (best epoch on test)†" in md and "never the headline" in md
    # 0.85 beats every reproduced value in the row but is not marked: only last-epoch numbers compete
    assert "| a | **0.900** | <u>0.650 ± 0.071</u> | 0.850 |" in md


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


def _table(values, emphasis="row"):
    values = pd.DataFrame(values, index=pd.Index(["a", "mean"], name="category"))
    nan = values * float("nan")
    return Table("t", "caption", values, list(values.columns), nan, nan, emphasis=emphasis, rule_before=["mean"])


def test_markdown_marks_missing_cells_and_ties():
    md = to_markdown(_table({"m": [0.5, float("nan")], "n": [0.5, 0.4], "o": [0.3, 0.2]}))
    assert "| **mean** | - | **0.400** | <u>0.200</u> |" in md
    assert "| a | **0.500** | **0.500** | <u>0.300</u> |" in md  # a tie shares the rank


def test_latex_escapes_names():
    tex = to_latex(_table({"fod_paper": [0.5, 0.6], "x&y%": [0.4, 0.7]}, emphasis="column"))
    assert "fod\\_paper & x\\&y\\%" in tex and "\\label{tab:t}" in tex
    assert "\\midrule\nmean & \\textbf{0.600} & \\textbf{0.700} \\\\" in tex


def test_table1_marks_literature_rows_and_compares_only_like_with_like(tmp_path):
    mvtec = PAPER_CATEGORIES["mvtec_ad"]
    rows = [(c, m, 0, 0.9) for c in mvtec for m in ("patchcore", "fod")]
    paths = _runs(tmp_path, "mvtec_ad", rows)
    spec = {"kind": "table1", "dataset": "d", "methods": ["patchcore", "fod"]}
    write_table(spec, paths, str(tmp_path / "t1"))
    t = pd.read_csv(tmp_path / "t1.csv", index_col=0)
    assert t.loc["PaDiM", "status"] == "reported, not rerun" and t.loc["PaDiM", "paper:image_auroc"] == 0.955
    assert pd.isna(t.loc["PaDiM", "image_auroc"])
    assert t.loc["FOD (Ours) [fod]", "image_auroc"] == pytest.approx(0.9)
    assert t.loc["FOD (Ours) [fod]", "diff:image_auroc"] == pytest.approx(0.9 - 0.992)
    assert t.loc["PatchCore [patchcore]", "diff:pixel_auroc"] == pytest.approx(0.85 - 0.980)
    # a subset of the categories is not the paper's MVTec AD mean: no differences
    write_table(spec, [p for p, r in zip(paths, rows) if r[0] != "carpet"], str(tmp_path / "t1b"))
    sub = pd.read_csv(tmp_path / "t1b.csv", index_col=0)
    assert sub["diff:image_auroc"].isna().all() and "no differences are computed" in (tmp_path / "t1b.md").read_text()


def test_table1_shows_a_method_the_paper_does_not_list_instead_of_dropping_it(tmp_path):
    """Issue 18: a method absent from the paper's Table 1 used to vanish from it without a word."""
    rows = [(c, m, 0, 0.8) for c in ("a", "b") for m in ("patchcore", "knn_image")]
    spec = {"kind": "table1", "dataset": "d", "methods": ["patchcore", "knn_image"]}
    write_table(spec, _runs(tmp_path, "embedded", rows), str(tmp_path / "t1"))
    t = pd.read_csv(tmp_path / "t1.csv", index_col=0)
    assert t.loc["knn_image", "status"] == "reproduced here, not in the paper (`knn_image` on `d`)"
    assert t.loc["knn_image", "image_auroc"] == pytest.approx(0.8) and pd.isna(t.loc["knn_image", "paper:image_auroc"])
    assert "PatchCore [patchcore]" in t.index


def test_table3_puts_the_papers_btad_numbers_beside_a_full_btad_run(tmp_path):
    paths = _runs(tmp_path, "btad", [(c, m, 0, 0.9) for c in ("01", "02", "03") for m in ("fod", "cflow")])
    paths += _runs(tmp_path, "embedded", [(c, m, 0, 0.7) for c in ("brick",) for m in ("fod", "cflow")],
                   dataset="emb")
    write_table({"kind": "table3", "datasets": ["d", "emb"], "methods": ["cflow", "fod"]}, paths, str(tmp_path / "t3"))
    t = pd.read_csv(tmp_path / "t3.csv", index_col=0)
    image = "d (3 categories): image-level AUROC"
    assert t.loc[image, "paper:fod"] == pytest.approx(0.960) and t.loc[image, "diff:fod"] == pytest.approx(-0.06)
    assert t.loc["d (3 categories): pixel-level AUROC", "paper:cflow"] == pytest.approx(0.978)
    assert pd.isna(t.loc["emb (1 categories): image-level AUROC", "paper:fod"])


def test_table4_compares_a_dataset_with_the_papers_only_when_complete(tmp_path):
    labels = {"fod_patchwise_rec": "patchwise_rec", "fod": "full"}
    paths = _runs(tmp_path, "btad", [(c, m, s, 0.8 + 0.1 * s) for c in ("01", "02", "03") for m in labels
                                     for s in ((0, 1) if m == "fod" else (0,))])
    write_table({"kind": "table4", "datasets": ["d"], "labels": labels}, paths, str(tmp_path / "t4"))
    t = pd.read_csv(tmp_path / "t4.csv", index_col=0)
    assert list(t.index) == ["patchwise_rec", "full"]
    assert t.loc["full", "d"] == pytest.approx(0.85) and t.loc["full", "d:std"] == pytest.approx(0.0707, abs=1e-4)
    assert t.loc["full", "paper:btad"] == pytest.approx(0.960)
    assert t.loc["full", "diff:d"] == pytest.approx(0.85 - 0.960)


def test_table4_shows_the_raw_divergence_score_of_the_div_only_rows_beside_the_headline(tmp_path):
    labels = {"fod_intra_ent_div": "intra_ent_div", "fod": "full"}
    rows = [(c, m, 0, 0.6 if m == "fod" else 0.5) for c in ("a", "b") for m in labels]
    raw = {"a": 0.7, "b": 0.9}
    paths = _runs(tmp_path, "embedded", rows,
                  extra=lambda r: {"raw_div_image_auroc": raw[r[0]]} if r[1] == "fod_intra_ent_div" else {})
    write_table({"kind": "table4", "datasets": ["d"], "labels": labels}, paths, str(tmp_path / "t4"))
    t = pd.read_csv(tmp_path / "t4.csv", index_col=0)
    assert t.loc["intra_ent_div", "d"] == pytest.approx(0.5)  # the headline stays softmax(-Div)
    assert t.loc["intra_ent_div", "raw_div:d"] == pytest.approx(0.8)  # mean over the categories
    assert pd.isna(t.loc["full", "raw_div:d"])
    md = (tmp_path / "t4.md").read_text()
    assert "raw_div" in md and "**0.600**" in md  # emphasis only among the headline column


def test_the_per_defect_table_lists_types_kinds_and_the_pooled_number(tmp_path):
    def groups(row):
        cat, method, seed, auroc = row
        local = {"kind": "local", "n": 3, "image_auroc": auroc, "pixel_auroc": 0.9 + 0.01 * seed}
        colour = {"kind": "hard_global", "n": 3, "image_auroc": 0.5, "pixel_auroc": 0.2}
        return {"defect_types": {"scratch": local, "colour": colour},
                "defect_kinds": {"local": {"types": ["scratch"], **local},
                                 "hard_global": {"types": ["colour"], **colour}}}

    paths = _runs(tmp_path, "embedded", [(c, m, s, 0.8) for c in ("a", "b") for m in ("x", "y")
                                         for s in ((0, 1) if m == "x" else (0,))], extra=groups)
    write_table({"kind": "per_defect", "dataset": "d", "methods": ["x", "y"], "metric": "pixel_auroc"}, paths,
                str(tmp_path / "dp"))
    t = pd.read_csv(tmp_path / "dp.csv", index_col=0)
    assert list(t.index) == ["a / colour (hard_global)", "a / scratch (local)", "b / colour (hard_global)",
                             "b / scratch (local)", "mean over categories: hard_global",
                             "mean over categories: local", "pooled over defects (mean over categories)"]
    assert t.loc["a / scratch (local)", "x"] == pytest.approx(0.905) and t.loc["a / scratch (local)", "x:seeds"] == 2
    assert t.loc["mean over categories: local", "y"] == pytest.approx(0.9)
    assert t.loc["pooled over defects (mean over categories)", "y"] == pytest.approx(0.75)  # pixel_auroc field


def test_captions_name_the_backbone_tag_and_checkpoint_the_runs_record(tmp_path):
    """A table says which checkpoint made its features (issue 17: b6's AutoAugment vs Noisy Student weights
    give different numbers under one architecture name); runs without the record say so."""
    weights = {"backbone_tag": "tf_efficientnet_b6.aa_in1k", "backbone_file": "tf_efficientnet_b6_aa-80ba17e4.pth",
               "backbone_sha256": "80ba17e4", "preprocess": "authors"}
    paths = _runs(tmp_path, "embedded", [("a", "x", 0, 0.8), ("b", "x", 0, 0.7)], extra=lambda row: weights)
    write_table2(paths, "d", ["x"], tmp_path / "t.csv", tmp_path / "t.md")
    caption = (tmp_path / "t.md").read_text().split("\n\n")[0]
    assert ("backbone `tf_efficientnet_b6.aa_in1k` (`tf_efficientnet_b6_aa-80ba17e4.pth`); "
            "images preprocessed by `authors`") in caption
    old = _runs(tmp_path / "old", "embedded", [("a", "x", 0, 0.8)])
    write_table2(old, "d", ["x"], tmp_path / "o.csv", tmp_path / "o.md")
    assert "backbone checkpoint not recorded" in (tmp_path / "o.md").read_text()
