"""Figures of the benchmark report, each written as ``<stem>.png`` and ``<stem>.pdf``.

Every function takes data already loaded and an output stem, and returns the paths it wrote.  Figures are
``matplotlib.figure.Figure`` objects drawn under matplotlib's default style (whatever the user's
matplotlibrc says) and saved through their own canvas (PNG by Agg), never through pyplot, so the
process-wide backend is left alone.  Output is byte-for-byte reproducible: no creation date or software
tag in the files, fixed dpi.

Colour scale of AUROC heatmaps: fixed to [0.5, 1] (0.5 = chance), so that figures of different runs
compare; cells below 0.5 take the lowest colour and still print their value.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib import style as mstyle
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from adbench.methods.runs import atomic_path, read_maps

AUROC_RANGE = (0.5, 1.0)
MONITOR_AXIS_LABEL = "test AUROC (monitoring, not used for selection)"
KIND_ORDER = ("local", "global", "hard_global", "logical")  # other kinds follow, sorted by name
UNCLASSIFIED = "unclassified"  # kind of a defect type missing from the caller's ``defect_kinds``
_STYLE = ["default", {"savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
                      "image.interpolation": "nearest", "path.simplify": False}]
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}
_MARKERS = "osD^vP*Xh<>p"


def _save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``fig`` to ``<stem>.png`` and ``<stem>.pdf`` without time stamps; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with mstyle.context(_STYLE):
        for fmt, metadata in _METADATA.items():
            path = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, metadata=metadata)
            paths.append(path)
    return paths


def _styled(build):
    """Run a figure builder under the fixed style (rcParams are read as artists are made)."""
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with mstyle.context(_STYLE):
            return build(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure of ``width`` x ``height`` inches."""
    return Figure(figsize=(width, height), layout="constrained")


# --------------------------------------------------------------------------------------- heatmap
@_styled
def _heatmap(table: pd.DataFrame, title: str) -> Figure:
    if table.empty:
        raise ValueError("auroc_heatmap: the table is empty (categories x methods expected)")
    rows = [r for r in table.index if r != "mean"] + [r for r in table.index if r == "mean"]
    try:
        values = table.loc[rows].to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"auroc_heatmap: the table must hold numbers only ({err})") from None
    n_rows, n_cols = values.shape
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    norm = mcolors.Normalize(*AUROC_RANGE)
    fig = _figure(1.6 + 0.75 * n_cols, 1.0 + 0.3 * n_rows)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for i, j in np.ndindex(n_rows, n_cols):
        v = values[i, j]
        if math.isnan(v):
            ax.text(j, i, "-", ha="center", va="center", color="black")
            continue
        r, g, b, _ = cmap(norm(v))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    if rows[-1] == "mean" and n_rows > 1:
        ax.axhline(n_rows - 1.5, color="white", linewidth=2)
    ax.set_xticks(range(n_cols), [str(c) for c in table.columns], rotation=35, ha="right")
    ax.set_yticks(range(n_rows), [str(r) for r in rows])
    ax.tick_params(length=0)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, extend="min", label="AUROC", fraction=0.05)
    return fig


def auroc_heatmap(table: pd.DataFrame, title: str, stem: str | Path) -> list[Path]:
    """Annotated heatmap of an AUROC table (categories x methods, values in [0, 1], 3 digits printed).

    A ``mean`` row, if present, is drawn last below a separator; NaN cells are grey and print ``-``.
    The colour scale is fixed to ``AUROC_RANGE`` = [0.5, 1].
    """
    return _save(_heatmap(table, title), stem)


# ------------------------------------------------------------------------------ critical difference
@_styled
def _cd(avg_ranks: pd.Series, pairwise_p: pd.DataFrame, cd: float, n_datasets: int, alpha: float) -> Figure:
    from scikit_posthocs import critical_difference_diagram

    ranks = pd.Series(avg_ranks, dtype=float)
    if len(ranks) < 2:
        raise ValueError(f"cd_diagram: need at least 2 methods, got {len(ranks)}")
    if not ranks.index.is_unique or not np.isfinite(ranks.to_numpy()).all():
        raise ValueError("cd_diagram: avg_ranks must have unique method names and finite ranks")
    labels = set(ranks.index)
    if set(pairwise_p.index) != labels or set(pairwise_p.columns) != labels:
        raise ValueError(f"cd_diagram: pairwise_p rows/columns {sorted(map(str, pairwise_p.index))} / "
                         f"{sorted(map(str, pairwise_p.columns))} must be the methods of avg_ranks "
                         f"{sorted(map(str, labels))}")
    p = pairwise_p.loc[ranks.index, ranks.index].astype(float)
    if not np.allclose(p.to_numpy(), p.to_numpy().T, equal_nan=True):
        raise ValueError("cd_diagram: pairwise_p is not symmetric")
    if not (math.isfinite(cd) and cd > 0):
        raise ValueError(f"cd_diagram: cd must be a positive number of ranks, got {cd}")
    if int(n_datasets) < 2:
        raise ValueError(f"cd_diagram: n_datasets must be >= 2, got {n_datasets}")
    fig = _figure(6.5, 1.2 + 0.28 * len(ranks))
    ax = fig.add_subplot()
    artists = critical_difference_diagram(ranks, p, alpha=alpha, ax=ax,
                                          label_fmt_left="{label} ({rank:.2f})",
                                          label_fmt_right="({rank:.2f}) {label}")
    for (line,) in artists["crossbars"]:  # the library fills each bar from a set: fix its point order
        line.set_xdata(np.sort(line.get_xdata()))
    # the CD bar, from the best rank, drawn above the rank tick labels (the library's would overlap them)
    ax.errorbar([ranks.min(), ranks.min() + cd], [1.3, 1.3], yerr=0.12, color="k", linewidth=1.5, capsize=0)
    ax.text(ranks.min() + cd / 2, 1.5, f"CD = {cd:.2f}", ha="center", va="bottom")
    lowest = min(min(elbow.get_ydata()) for elbow in artists["elbows"])
    ax.set_ylim(lowest - 0.7, 2.0)
    ax.set_xlim(1, max(len(ranks), math.ceil(ranks.max())))
    ax.set_title(f"Average ranks over {int(n_datasets)} categories (lower is better)\n"
                 f"Nemenyi CD = {cd:.2f} at α = {alpha:g}", pad=18)
    return fig


def cd_diagram(avg_ranks: pd.Series, pairwise_p: pd.DataFrame, cd: float, n_datasets: int,
               stem: str | Path, alpha: float = 0.05) -> list[Path]:
    """Critical-difference diagram (Demšar 2006) drawn by scikit-posthocs.

    Args:
        avg_ranks: method -> average rank over the datasets (1 = best).
        pairwise_p: methods x methods Nemenyi p-values (same labels as ``avg_ranks``, symmetric).
        cd: the Nemenyi critical difference in ranks; drawn as a bar and given in the title.
        n_datasets: how many datasets (categories) the ranks average over.
        alpha: significance level; methods joined by a crossbar have p >= alpha.
    """
    return _save(_cd(avg_ranks, pairwise_p, cd, n_datasets, alpha), stem)


# -------------------------------------------------------------------------------------- ROC curves
def _check_curve(method: str, labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels).ravel(), np.asarray(scores, dtype=float).ravel()
    if len(y) != len(s):
        raise ValueError(f"roc_curves: {method} has {len(y)} labels but {len(s)} scores")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
        raise ValueError(f"roc_curves: {method} labels must be 0/1 with both classes present")
    if not np.isfinite(s).all():
        raise ValueError(f"roc_curves: {method} has non-finite scores")
    return y.astype(int), s


@_styled
def _roc(curves: dict, title: str) -> Figure:
    if not curves:
        raise ValueError("roc_curves: no methods given (empty dict)")
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    for method, (labels, scores) in curves.items():
        y, s = _check_curve(method, labels, scores)
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{method} (AUROC {roc_auc_score(y, s):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=title,
           xlabel="false positive rate (normal images)", ylabel="true positive rate (anomalous images)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1), borderaxespad=0)
    return fig


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, stem: str | Path) -> list[Path]:
    """Image-level ROC curves of one category: ``curves`` maps method -> (labels (N,) 0/1, scores (N,))."""
    return _save(_roc(curves, title), stem)


def load_roc_curves(score_csvs: dict[str, str | Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (labels, scores) read from each run's ``scores.csv`` (columns id, label, score)."""
    out = {}
    for method, path in score_csvs.items():
        frame = pd.read_csv(path)
        if not {"label", "score"} <= set(frame.columns):
            raise ValueError(f"{path}: needs columns label and score (written by adbench.evaluation.evaluate)")
        out[method] = (frame["label"].to_numpy(), frame["score"].to_numpy(dtype=float))
    return out


# ----------------------------------------------------------------------------------- map gallery
@dataclass(frozen=True)
class GalleryRow:
    """One test sample: ``image`` (H, W, 3) uint8 RGB, ``mask`` (H, W) in {0, 1}, ``maps`` method ->
    (H, W) float anomaly map at the same resolution; ``title`` e.g. ``"coins / missing (logical)"``."""

    title: str
    image: np.ndarray
    mask: np.ndarray
    maps: dict[str, np.ndarray]


def normalise_map(amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``amap`` scaled so that ``lo`` -> 0 and ``hi`` -> 1, clipped to [0, 1] (all 0 when hi == lo)."""
    if hi < lo:
        raise ValueError(f"map range ({lo}, {hi}) has hi < lo")
    if hi == lo:
        return np.zeros(amap.shape, dtype=np.float32)
    return np.clip((np.asarray(amap, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def map_ranges(maps: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """method -> (min, max) of its maps over the whole test split (``maps[method]``: (N, H, W))."""
    out = {}
    for method, m in maps.items():
        lo, hi = float(np.min(m)), float(np.max(m))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"map_ranges: {method} has non-finite map values")
        out[method] = (lo, hi)
    return out


def _check_row(k: int, row: GalleryRow, methods: list[str], ranges: dict) -> None:
    where = f"map_gallery: row {k} ({row.title!r})"
    if row.image.ndim != 3 or row.image.shape[2] != 3 or row.image.dtype != np.uint8:
        raise ValueError(f"{where}: image must be (H, W, 3) uint8, got {row.image.shape} {row.image.dtype}")
    hw = row.image.shape[:2]
    if row.mask.shape != hw:
        raise ValueError(f"{where}: mask shape {row.mask.shape} differs from the image's {hw}")
    missing = [m for m in methods if m not in row.maps]
    if missing:
        raise ValueError(f"{where}: no map for methods {missing}")
    for m in methods:
        if np.shape(row.maps[m]) != hw:
            raise ValueError(f"{where}: {m} map shape {np.shape(row.maps[m])} differs from the image's {hw}")
        if m not in ranges:
            raise ValueError(f"map_gallery: no range for method {m} (see map_ranges)")


@_styled
def _gallery(rows: list[GalleryRow], methods: list[str], ranges: dict[str, tuple[float, float]]) -> Figure:
    if not rows or not methods:
        raise ValueError(f"map_gallery: need at least one row and one method, got {len(rows)} rows, "
                         f"{len(methods)} methods")
    for k, row in enumerate(rows):
        _check_row(k, row, methods, ranges)
    ncols, tile = 2 + len(methods), 1.5
    fig = _figure(tile * ncols + 0.6, tile * len(rows) + 0.5)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    headers = ["image", "ground truth"] + [f"{m}\n[{ranges[m][0]:.3g}, {ranges[m][1]:.3g}]" for m in methods]
    for r, row in enumerate(rows):
        mask = np.asarray(row.mask) > 0
        axes[r, 0].imshow(row.image)
        axes[r, 1].imshow(mask, cmap="gray", vmin=0, vmax=1)
        for c, method in enumerate(methods, start=2):
            image = axes[r, c].imshow(normalise_map(row.maps[method], *ranges[method]),
                                      cmap="inferno", vmin=0, vmax=1)
            if mask.any():
                axes[r, c].contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
        axes[r, 0].set_ylabel(row.title, fontsize=7)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=8)
    # Below the grid: a label along the figure's width fits however few rows there are (beside a one-row
    # grid, a vertical label ran past the figure's top and bottom).
    fig.colorbar(image, ax=axes, location="bottom", fraction=0.04, aspect=60, shrink=0.8,
                 label="score, scaled to each method's [min, max] on the test split")
    return fig


def map_gallery(rows: list[GalleryRow], methods: list[str], ranges: dict[str, tuple[float, float]],
                stem: str | Path) -> list[Path]:
    """Grid of anomaly maps, one row per sample: image, ground truth, then each method's map.

    Each method's map is scaled by that method's own ``ranges[method]`` = (min, max) over the whole test
    split (``map_ranges``), so maps compare within a method; the mask outline is drawn on the maps and the
    range is printed under the method's name.
    """
    return _save(_gallery(rows, methods, ranges), stem)


def pick_gallery_samples(ids: list[str], defect_types: list[str], defect_kinds: dict[str, str],
                         per_kind: int = 1, n_good: int = 1) -> list[int]:
    """Deterministic sample indices for a gallery: ``n_good`` normal samples, then ``per_kind`` defects
    of each defect kind present (kinds in ``KIND_ORDER``, then others by name; types missing from
    ``defect_kinds`` count as ``UNCLASSIFIED``).  Within a kind, defect types take turns in name order,
    each giving its samples in id order, so the picks cover as many types as possible.  The result does
    not depend on the order of the inputs, only on the ids.
    """
    if len(ids) != len(defect_types):
        raise ValueError(f"pick_gallery_samples: {len(ids)} ids but {len(defect_types)} defect types")
    if per_kind < 1 or n_good < 0:
        raise ValueError(f"pick_gallery_samples: per_kind must be >= 1 and n_good >= 0, got {per_kind}, {n_good}")
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    picks = [i for i in order if defect_types[i] == "good"][:n_good]
    by_kind: dict[str, dict[str, list[int]]] = {}
    for i in order:
        if defect_types[i] != "good":
            kind = defect_kinds.get(defect_types[i], UNCLASSIFIED)
            by_kind.setdefault(kind, {}).setdefault(defect_types[i], []).append(i)
    kinds = [k for k in KIND_ORDER if k in by_kind] + sorted(k for k in by_kind if k not in KIND_ORDER)
    for kind in kinds:
        queues = [by_kind[kind][t] for t in sorted(by_kind[kind])]
        chosen: list[int] = []
        depth = 0
        while len(chosen) < per_kind and any(depth < len(q) for q in queues):
            chosen += [q[depth] for q in queues if depth < len(q)][: per_kind - len(chosen)]
            depth += 1
        picks += chosen
    return picks


def load_maps(npz_paths: dict[str, str | Path], ids: list[str]) -> dict[str, np.ndarray]:
    """method -> its float32 (N, H, W) maps from a run's ``maps.npz``, checked to follow ``ids`` (test order)."""
    out = {}
    for method, path in npz_paths.items():
        maps, map_ids = read_maps(path)
        if map_ids != list(ids):
            raise ValueError(f"{path}: its ids differ from the test split's; rerun the method on this split")
        out[method] = maps
    return out


def gallery_rows(split, maps: dict[str, np.ndarray], indices: list[int], category: str,
                 defect_kinds: dict[str, str]) -> list[GalleryRow]:
    """GalleryRows for ``indices`` of a test ``adbench.protocol.Split`` (images (N, 3, H, W) uint8, masks
    (N, H, W)) and ``maps`` (method -> (N, H, W), e.g. from ``load_maps``)."""
    rows = []
    for i in indices:
        defect = split.defect_types[i]
        kind = "normal" if defect == "good" else defect_kinds.get(defect, UNCLASSIFIED)
        rows.append(GalleryRow(title=f"{category} / {defect} ({kind})",
                               image=split.images[i].permute(1, 2, 0).numpy(),
                               mask=split.masks[i].numpy(), maps={m: a[i] for m, a in maps.items()}))
    return rows


# ----------------------------------------------------------------------------------- paper scatter
@_styled
def _scatter(ours: pd.DataFrame, title: str) -> Figure | None:
    missing = {"method", "category", "ours", "paper"} - set(ours.columns)
    if missing:
        raise ValueError(f"paper_scatter: missing columns {sorted(missing)} (need method, category, ours, paper)")
    data = ours.dropna(subset=["ours", "paper"])
    if data.empty:
        return None
    fig = _figure(6.8, 4.2)
    ax = fig.add_subplot()
    lo = min(data["ours"].min(), data["paper"].min())
    hi = max(data["ours"].max(), data["paper"].max())
    pad = max(0.01, 0.05 * (hi - lo))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", linestyle="--", linewidth=1, label="y = x")
    for k, (method, group) in enumerate(data.groupby("method", sort=False)):
        gap = (group["ours"] - group["paper"]).abs().mean()
        ax.scatter(group["paper"], group["ours"], marker=_MARKERS[k % len(_MARKERS)], color=f"C{k % 10}",
                   s=28, label=f"{method} (mean |Δ| {gap:.3f}, n={len(group)})")
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), aspect="equal", title=title,
           xlabel="paper", ylabel="reproduced (mean over seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1), borderaxespad=0)
    return fig


def paper_scatter(ours: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Reproduced vs paper value, one point per (method, category) with both values, identity line.

    ``ours`` has columns method, category, ours, paper.  Writes nothing and returns ``[]`` when no row has
    both values.
    """
    fig = _scatter(ours, title)
    return [] if fig is None else _save(fig, stem)


# ---------------------------------------------------------------------------------- training curves
def _series(label: str, history: list) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (steps, values) of one history; entries without a step (one-off values) are left out."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for k, entry in enumerate(history):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise ValueError(f"training_curves: {label} history entry {k} is not "
                             f"[step, {{name: value}}]: {entry!r}")
        step, values = entry
        if step is None:
            continue
        for name, value in values.items():
            steps, vals = out.setdefault(name, ([], []))
            steps.append(float(step))
            vals.append(float(value))
    return out


@_styled
def _curves(histories: dict, title: str) -> Figure:
    if not histories:
        raise ValueError("training_curves: no histories given (empty dict)")
    series = {label: _series(label, h) for label, h in histories.items()}
    empty = [label for label, s in series.items() if not s]
    if empty:
        raise ValueError(f"training_curves: no per-epoch values in the history of {empty} "
                         f"(run.json `history` has no entries with a step)")
    names = list(dict.fromkeys(n for s in series.values() for n in s))
    losses = [n for n in names if not n.startswith("monitor_")]
    monitors = [n for n in names if n.startswith("monitor_")]
    panels: list[list[str]] = [[n] for n in losses] + ([monitors] if monitors else [])
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(3.2 * ncols, 2.4 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes, panels):
        for c, (label, s) in enumerate(series.items()):
            for k, name in enumerate(n for n in panel if n in s):
                steps, vals = s[name]
                tag = f"{label}, {name.removeprefix('monitor_')}" if name in monitors else label
                ax.plot(steps, vals, color=f"C{c % 10}", linestyle=styles[k % len(styles)],
                        marker="o" if len(steps) <= 30 else None, markersize=3, label=tag)
        ax.set_ylabel(MONITOR_AXIS_LABEL if panel is panels[-1] and monitors else panel[0], fontsize=8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_xlim()[1] - ax.get_xlim()[0] < 2:  # one epoch: widen so that integer ticks show
            ax.set_xlim(np.mean(ax.get_xlim()) - 1, np.mean(ax.get_xlim()) + 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if monitors:
        axes[len(panels) - 1].legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def training_curves(histories: dict[str, list], stem: str | Path, title: str) -> list[Path]:
    """Per-epoch training losses, one panel per loss name, one line per label (e.g. seed).

    ``histories`` maps label -> run.json ``history`` ([[step, {name: value}], ...], step = epoch).
    ``monitor_*`` values (test AUROC when monitoring is on) share one panel labelled
    ``MONITOR_AXIS_LABEL``.  Histories of one epoch show as markers.
    """
    return _save(_curves(histories, title), stem)


def load_history(run_json: str | Path) -> list:
    """The ``history`` of a run's ``run.json``."""
    record = json.loads(Path(run_json).read_text())
    if "history" not in record:
        raise ValueError(f"{run_json}: no `history` (written by adbench.evaluation.evaluate); rerun the method")
    return record["history"]
