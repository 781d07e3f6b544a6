"""Report figures: files written, not blank, byte-reproducible, and drawing what the data say."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import AxesImage
from PIL import Image

from adbench.reporting import figures as F
from adbench.data.embedded import DEFECT_KIND
from adbench.protocol import Split

METHODS = ["fod", "patchcore", "draem", "cflow"]


def _rng(seed: int = 0) -> np.random.Generator:
    """A fresh generator: every builder below gives the same data each call."""
    return np.random.default_rng(seed)


def _table() -> pd.DataFrame:
    t = pd.DataFrame(_rng().uniform(0.45, 1.0, (3, 4)), index=["brick", "coins", "tray"], columns=METHODS)
    t.loc["mean"] = t.mean()
    return t.loc[["mean", "brick", "coins", "tray"]]  # mean first: the figure must move it last


def _cd_inputs():
    ranks = pd.Series([1.4, 2.1, 2.9, 3.6], index=METHODS)
    p = pd.DataFrame(np.ones((4, 4)), index=METHODS, columns=METHODS)
    p.loc["fod", "cflow"] = p.loc["cflow", "fod"] = 0.01  # the only significant pair
    return ranks, p.loc[METHODS[::-1], METHODS[::-1]]  # p in another order than the ranks


def _curves():
    y = np.r_[np.zeros(15), np.ones(25)].astype(int)
    return {m: (y, _rng(k).normal(size=40) + k * y) for k, m in enumerate(METHODS)}


def _rows(methods, n=2, size=32):
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for k in range(n):
        mask = ((yy - 12 - 4 * k) ** 2 + (xx - 16) ** 2 < 40).astype(np.uint8) * (k > 0)  # row 0: normal
        rng = _rng(k)
        base = mask * 2.0 + rng.normal(0, 0.4, (size, size))
        rows.append(F.GalleryRow(f"coins / row {k}", rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mask,
                                 {m: base * 10.0 ** j + j for j, m in enumerate(methods)}))
    return rows


def _ranges(methods):
    return {m: (-1.5 * 10.0 ** j + j, 3.0 * 10.0 ** j + j) for j, m in enumerate(methods)}


def _scatter_frame():
    rng = _rng()
    return pd.DataFrame([(m, c, *rng.uniform(0.8, 1, 2)) for m in METHODS[:2] for c in ("carpet", "grid", "wood")],
                        columns=["method", "category", "ours", "paper"])


def _histories():
    out = {}
    for seed in (0, 1):
        h = [[e, {"rec": 1.0 / e + seed, "loss1": -0.1 * e}] for e in range(1, 6)]
        h += [[e, {"monitor_image_auroc": 0.7 + 0.05 * e, "monitor_pixel_auroc": 0.8 + 0.02 * e}] for e in (2, 4)]
        out[f"seed{seed}"] = h
    return out


FIGURES = {
    "heatmap": lambda stem: F.auroc_heatmap(_table(), "image AUROC", stem),
    "cd": lambda stem: F.cd_diagram(*_cd_inputs(), cd=1.2, n_datasets=12, stem=stem),
    "roc": lambda stem: F.roc_curves(_curves(), "coins", stem),
    "gallery": lambda stem: F.map_gallery(_rows(METHODS[:2]), METHODS[:2], _ranges(METHODS[:2]), stem),
    "scatter": lambda stem: F.paper_scatter(_scatter_frame(), stem, "MVTec AD"),
    "curves": lambda stem: F.training_curves(_histories(), stem, "FOD coins"),
    "curves_one_epoch": lambda stem: F.training_curves({"seed0": [[1, {"rec": 0.5}]]}, stem, "one epoch"),
}


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_writes_a_png_and_a_pdf_that_are_reproducible(name, tmp_path):
    first = FIGURES[name](tmp_path / "a" / name)
    second = FIGURES[name](tmp_path / "b" / name)
    assert [p.name for p in first] == [f"{name}.png", f"{name}.pdf"]
    png, pdf = first
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300
    assert pixels.std() > 10  # not a blank canvas
    assert pdf.read_bytes().startswith(b"%PDF")
    assert b"CreationDate" not in pdf.read_bytes()
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two writes"


def test_bytes_do_not_depend_on_the_hash_seed_and_the_backend_is_left_alone(tmp_path):
    """scikit-posthocs builds crossbars from sets of names, whose order follows PYTHONHASHSEED."""
    ranks, p = _cd_inputs()
    script = textwrap.dedent("""
        import io, sys, matplotlib, pandas as pd
        from adbench.reporting import figures as F
        out, ranks, p, table = sys.argv[1], *(pd.read_json(io.StringIO(a), orient="split") for a in sys.argv[2:])
        before = dict.__getitem__(matplotlib.rcParams, "backend")
        F.cd_diagram(ranks.iloc[:, 0], p, 1.2, 12, out + "/cd")
        F.auroc_heatmap(table, "t", out + "/heatmap")
        assert dict.__getitem__(matplotlib.rcParams, "backend") is before, "figures changed the backend"
    """)
    data = [frame.to_json(orient="split") for frame in (ranks.to_frame(), p, _table())]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    jobs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / seed), *data],
                             env={**env, "PYTHONHASHSEED": seed}) for seed in ("1", "2")]
    assert [job.wait(timeout=120) for job in jobs] == [0, 0]
    for name in ("cd.pdf", "cd.png", "heatmap.pdf"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


# ------------------------------------------------------------------------------------------ heatmap
def test_heatmap_prints_values_keeps_mean_last_and_shows_nan_as_dash():
    table = _table()
    table.loc["coins", "draem"] = np.nan
    fig = F._heatmap(table, "t")
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["brick", "coins", "tray", "mean"]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    for i, row in enumerate(rows):
        for j, col in enumerate(METHODS):
            v = table.loc[row, col]
            assert texts[(i, j)] == ("-" if np.isnan(v) else f"{v:.3f}")
    assert texts[(1, 2)] == "-"
    image = next(a for a in ax.get_children() if isinstance(a, AxesImage))
    assert (image.norm.vmin, image.norm.vmax) == F.AUROC_RANGE == (0.5, 1.0)


def test_heatmap_rejects_empty_and_non_numeric_tables():
    with pytest.raises(ValueError, match="empty"):
        F.auroc_heatmap(pd.DataFrame(), "t", "unused")
    with pytest.raises(ValueError, match="numbers"):
        F._heatmap(pd.DataFrame({"fod": ["high"]}, index=["brick"]), "t")


# ------------------------------------------------------------------------------- CD diagram
def test_cd_diagram_puts_cd_in_the_title_and_joins_the_non_significant_groups():
    ranks, p = _cd_inputs()
    fig = F._cd(ranks, p, 1.2, 12, 0.05)
    ax = fig.axes[0]
    assert "CD = 1.20" in ax.get_title() and "12 categories" in ax.get_title()
    # Only fod-cflow differ, so the maximal groups are {fod, patchcore, draem} and {patchcore, draem, cflow}.
    bars = sorted(tuple(line.get_xdata()) for line in ax.lines if len(set(line.get_ydata())) == 1
                  and len(line.get_xdata()) == 3)
    assert bars == [(1.4, 2.1, 2.9), (2.1, 2.9, 3.6)]
    labels = {t.get_text() for t in ax.texts}
    assert {"fod (1.40)", "patchcore (2.10)", "(3.60) cflow", "(2.90) draem", "CD = 1.20"} <= labels


def test_cd_diagram_rejects_mismatched_inputs():
    ranks, p = _cd_inputs()
    with pytest.raises(ValueError, match="pairwise_p rows/columns"):
        F.cd_diagram(ranks.drop("fod"), p, 1.2, 12, "unused")
    with pytest.raises(ValueError, match="at least 2 methods"):
        F.cd_diagram(ranks.iloc[:1], p.iloc[:1, :1], 1.2, 12, "unused")
    with pytest.raises(ValueError, match="cd must be"):
        F.cd_diagram(ranks, p, float("nan"), 12, "unused")


# -------------------------------------------------------------------------------------- ROC
def _mann_whitney_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


def test_roc_legend_gives_each_methods_auroc():
    curves = _curves()
    curves["tied"] = (curves["fod"][0], np.round(curves["fod"][1]))  # ties count half
    ax = F._roc(curves, "coins").axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "chance"
    for text, (method, (y, s)) in zip(legend[1:], curves.items()):
        assert text == f"{method} (AUROC {_mann_whitney_auc(y, s):.3f})"
    line = ax.lines[1]
    assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 1 and line.get_ydata()[-1] == 1


def test_roc_rejects_bad_input():
    y, s = _curves()["fod"]
    with pytest.raises(ValueError, match="no methods"):
        F.roc_curves({}, "t", "unused")
    with pytest.raises(ValueError, match="fod has 40 labels but 39 scores"):
        F.roc_curves({"fod": (y, s[:-1])}, "t", "unused")
    with pytest.raises(ValueError, match="both classes"):
        F.roc_curves({"fod": (np.ones(40), s)}, "t", "unused")


def test_load_roc_curves_reads_scores_csv(tmp_path):
    y, s = _curves()["fod"]
    path = tmp_path / "scores.csv"
    pd.DataFrame({"id": [f"test/x/{i:03d}" for i in range(40)], "label": y, "defect_type": "x",
                  "score": s}).to_csv(path, index=False)
    (labels, scores), = F.load_roc_curves({"fod": path}).values()
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(scores, s)


# ---------------------------------------------------------------------------------- gallery
def test_gallery_scales_each_method_by_its_own_range():
    methods = METHODS[:2]
    rows = _rows(methods)  # patchcore's maps are fod's x 10 + 1, and so is its range
    fig = F._gallery(rows, methods, _ranges(methods))
    axes = np.array(fig.axes[:-1]).reshape(len(rows), 2 + len(methods))
    for r, row in enumerate(rows):
        shown = [axes[r, c].get_images()[0].get_array() for c in (2, 3)]
        lo, hi = _ranges(methods)["fod"]
        np.testing.assert_allclose(shown[0], np.clip((row.maps["fod"] - lo) / (hi - lo), 0, 1), atol=1e-6)
        np.testing.assert_allclose(shown[0], shown[1], atol=1e-5)
        assert len(axes[r, 2].collections) == int(row.mask.any())  # mask outline only where there is one
    assert axes[0, 3].get_title() == "patchcore\n[-14, 31]"
    assert axes[1, 0].get_ylabel() == "coins / row 1"


def test_normalise_map_and_map_ranges():
    m = np.array([[0.0, 5.0], [10.0, 20.0]])
    np.testing.assert_allclose(F.normalise_map(m, 5.0, 15.0), [[0, 0], [0.5, 1]])
    np.testing.assert_array_equal(F.normalise_map(m, 3.0, 3.0), np.zeros((2, 2)))
    maps = {"a": _rng().normal(size=(3, 4, 4)), "b": np.arange(48.0).reshape(3, 4, 4)}
    assert F.map_ranges(maps) == {"a": (maps["a"].min(), maps["a"].max()), "b": (0.0, 47.0)}
    with pytest.raises(ValueError, match="b has non-finite"):
        F.map_ranges({"b": np.array([np.nan, 1.0])})


def test_gallery_rejects_bad_rows():
    methods = METHODS[:2]
    rows = _rows(methods, n=1)
    with pytest.raises(ValueError, match="at least one row"):
        F.map_gallery([], methods, _ranges(methods), "unused")
    bad = F.GalleryRow("x", rows[0].image, rows[0].mask,
                       {"fod": rows[0].maps["fod"][:-1], "patchcore": rows[0].maps["patchcore"]})
    with pytest.raises(ValueError, match="fod map shape"):
        F.map_gallery([bad], methods, _ranges(methods), "unused")
    with pytest.raises(ValueError, match=r"no map for methods \['draem'\]"):
        F.map_gallery(rows, METHODS[:3], _ranges(METHODS[:3]), "unused")
    with pytest.raises(ValueError, match="no range for method patchcore"):
        F.map_gallery(rows, methods, {"fod": (0.0, 1.0)}, "unused")


def _embedded_like():
    types = ["good"] * 3 + ["scratch"] * 2 + ["hole"] * 2 + ["colour"] * 2 + ["missing"] * 2 + ["misplaced"] * 2
    ids = [f"test/{t}/{k:03d}" for t, k in zip(types, [0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])]
    return ids, types


def test_pick_gallery_samples_covers_every_kind_in_a_stable_order():
    ids, types = _embedded_like()
    picked = [ids[i] for i in F.pick_gallery_samples(ids, types, DEFECT_KIND)]
    assert picked == ["test/good/000", "test/hole/000", "test/colour/000", "test/misplaced/000"]
    kinds = [DEFECT_KIND.get(i.split("/")[1], "normal") for i in picked]
    assert kinds == ["normal", "local", "hard_global", "logical"]
    two = [ids[i] for i in F.pick_gallery_samples(ids, types, DEFECT_KIND, per_kind=2, n_good=0)]
    assert two == ["test/hole/000", "test/scratch/000", "test/colour/000", "test/colour/001",
                   "test/misplaced/000", "test/missing/000"]
    perm = _rng().permutation(len(ids))
    shuffled = [ids[i] for i in perm], [types[i] for i in perm]
    assert [shuffled[0][i] for i in F.pick_gallery_samples(*shuffled, DEFECT_KIND, per_kind=2, n_good=0)] == two


def test_pick_gallery_samples_handles_absent_and_unknown_kinds():
    ids = ["test/good/000", "test/scratch/000", "test/crack/000"]
    types = ["good", "scratch", "crack"]
    assert F.pick_gallery_samples(ids, types, DEFECT_KIND, n_good=0) == [1, 2]  # crack: unclassified, last
    with pytest.raises(ValueError, match="3 ids but 2 defect types"):
        F.pick_gallery_samples(ids, types[:2], DEFECT_KIND)


def test_load_maps_and_gallery_rows_follow_the_split(tmp_path):
    ids, types = _embedded_like()
    n, size = len(ids), 16
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    masks[3:, 4:8, 4:8] = 1
    split = Split(ids=ids, labels=np.array([t != "good" for t in types], dtype=np.int64), defect_types=types,
                  images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8), masks=masks,
                  features=[], strides=(8,), backbone="none")
    maps = _rng().normal(size=(n, size, size)).astype(np.float16)
    np.savez_compressed(tmp_path / "maps.npz", maps=maps, ids=np.asarray(ids))
    loaded = F.load_maps({"fod": tmp_path / "maps.npz"}, ids)
    np.testing.assert_array_equal(loaded["fod"], maps.astype(np.float32))
    rows = F.gallery_rows(split, loaded, [0, 9], "coins", DEFECT_KIND)
    assert [r.title for r in rows] == ["coins / good (normal)", "coins / missing (logical)"]
    np.testing.assert_array_equal(rows[1].image, split.images[9].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(rows[1].mask, masks[9].numpy())
    np.testing.assert_array_equal(rows[1].maps["fod"], loaded["fod"][9])
    with pytest.raises(ValueError, match="maps.npz: its ids differ"):
        F.load_maps({"fod": tmp_path / "maps.npz"}, ids[::-1])


# ---------------------------------------------------------------------------------- paper scatter
def test_paper_scatter_plots_pairs_and_writes_nothing_without_paper_values(tmp_path):
    frame = _scatter_frame()
    ax = F._scatter(frame, "t").axes[0]
    points = ax.collections
    assert len(points) == 2
    for k, method in enumerate(METHODS[:2]):
        sub = frame[frame["method"] == method]
        np.testing.assert_allclose(points[k].get_offsets(), sub[["paper", "ours"]].to_numpy())
        gap = (sub["ours"] - sub["paper"]).abs().mean()
        assert ax.get_legend().get_texts()[k + 1].get_text() == f"{method} (mean |Δ| {gap:.3f}, n=3)"
    frame["paper"] = np.nan
    assert F.paper_scatter(frame, tmp_path / "scatter", "t") == []
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"missing columns \['paper'\]"):
        F.paper_scatter(frame.drop(columns="paper"), tmp_path / "scatter", "t")


# ---------------------------------------------------------------------------------- training curves
def test_training_curves_draw_each_loss_and_monitoring_on_its_own_axis():
    histories = _histories()
    histories["seed0"].append([None, {"memory_bank_size": 10.0}])  # one-off value: not a curve
    fig = F._curves(histories, "t")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible] == ["rec", "loss1", F.MONITOR_AXIS_LABEL]
    rec = visible[0].lines
    assert [line.get_label() for line in rec] == ["seed0", "seed1"]
    np.testing.assert_allclose(rec[1].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(rec[1].get_ydata(), [1 + 1 / e for e in range(1, 6)])
    monitor = {line.get_label(): line.get_ydata() for line in visible[2].lines}
    assert set(monitor) == {f"seed{s}, {k}_auroc" for s in (0, 1) for k in ("image", "pixel")}
    np.testing.assert_allclose(monitor["seed0, image_auroc"], [0.8, 0.9])


def test_training_curves_reject_bad_histories():
    with pytest.raises(ValueError, match="no histories"):
        F.training_curves({}, "unused", "t")
    with pytest.raises(ValueError, match="seed3 history entry 1"):
        F.training_curves({"seed3": [[1, {"rec": 1.0}], [2, 0.5]]}, "unused", "t")
    with pytest.raises(ValueError, match=r"no per-epoch values in the history of \['patchcore'\]"):
        F.training_curves({"patchcore": [[None, {"memory_bank_size": 3.0}]]}, "unused", "t")


def test_load_history_names_the_file(tmp_path):
    (tmp_path / "run.json").write_text('{"history": [[1, {"rec": 0.5}]]}')
    assert F.load_history(tmp_path / "run.json") == [[1, {"rec": 0.5}]]
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(ValueError, match="old.json: no `history`"):
        F.load_history(tmp_path / "old.json")


@pytest.mark.parametrize("n_rows, n_methods", [(1, 1), (1, 7), (2, 2), (3, 7), (6, 4)])
def test_every_gallery_text_lies_inside_the_figure(n_rows, n_methods):
    """Issue 17 saw the colour bar's label cut off; each title, row label and the colour-bar label must
    be drawn inside the saved figure for any number of rows (one row is the shortest colour bar) and methods."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    methods = (METHODS * 2)[:n_methods]
    methods = [f"{m}{k}" for k, m in enumerate(methods)]
    rows = [F.GalleryRow(r.title, r.image, r.mask, {m: r.maps[METHODS[0]] for m in methods})
            for r in _rows(METHODS[:1], n=n_rows)]
    fig = F._gallery(rows, methods, {m: (-1.5, 3.0) for m in methods})
    FigureCanvasAgg(fig).draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = [ax.yaxis.label for ax in fig.axes] + [ax.title for ax in fig.axes]
    for text in (t for t in texts if t.get_text()):
        extent = text.get_window_extent(renderer)
        assert (box.x0 - 0.5 <= extent.x0 and extent.x1 <= box.x1 + 0.5 and box.y0 - 0.5 <= extent.y0
                and extent.y1 <= box.y1 + 0.5), f"{text.get_text()!r} at {extent.bounds} outside {box.bounds}"
