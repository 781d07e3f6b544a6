"""The paper's Tables 1-4 (and a per-category pixel table), rebuilt from the runs' ``metrics.json`` files.

Each reproduced cell is the mean over seeds, with the sample standard deviation over seeds (``<col>:std``)
and the number of seeds (``<col>:seeds``); a mean over categories (the ``mean`` rows, Tables 1, 3, 4) is
the mean of the per-seed category means, and its std is over those.  Where the paper reports the same
cell, its transcribed value (``results/paper/``) stands beside ours as ``paper:<col>`` with the difference
``diff:<col>`` = ours - paper; never a value of another dataset or another set of categories (like with
like).  Methods that monitored the test split while training (FOD's ``monitor_every``) also get a
``best_on_test:<method>`` column: the authors' best-epoch-on-test selection, shown next to our last-epoch
number and never emphasised.

Every table is written three ways (``write_outputs``): CSV (all numbers), Markdown and LaTeX (booktabs),
with the best reproduced value of each row (or column, per table) in bold and the second underlined, as
the paper marks them in red and blue.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adbench import ROOT
from adbench.evaluation.integrity import read_metrics
from adbench.methods.runs import atomic_path, write_atomic

PAPER_DIR = ROOT / "results" / "paper"
# Every category of the datasets the paper reports on (dataset kind -> folder names).
PAPER_CATEGORIES: dict[str, list[str]] = {
    "mvtec_ad": ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                 "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"],
    "btad": ["01", "02", "03"],
    "mvtec3d": ["bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire"],
}
METRIC_LABEL = {"image_auroc": "image-level AUROC", "pixel_auroc": "pixel-level AUROC"}
# Where each kind of table picks its bold / underlined cells: across methods in a row, or down a column.
EMPHASIS = {"per_category": "row", "per_defect": "row", "table1": "column", "table3": "row", "table4": "column"}
BEST_ON_TEST = "best_on_test"
RAW_DIV = "raw_div_image_auroc"  # FOD's Div-only rows, scored by the raw divergence (Table 4)
BEST_ON_TEST_NOTE = ("`best_on_test:*` columns: the best epoch chosen on the test set, as the authors' code "
                     "does; reported for comparison only, never the headline (ours is the last epoch)")


def published_row(kind: str) -> str:
    """Label of the row holding the paper's published mean over all of a dataset's categories."""
    return f"paper mean, all {len(PAPER_CATEGORIES[kind])} categories (published)"


def paper_reference(kind: str, metric: str = "image_auroc") -> tuple[pd.DataFrame | None, pd.Series | None]:
    """The paper's numbers for a dataset kind: per-category values (categories x methods; MVTec AD image
    AUROC, its Table 2) and the published all-category means (methods), either ``None`` when the paper
    has none."""
    if kind == "mvtec_ad" and metric == "image_auroc":
        t2 = pd.read_csv(PAPER_DIR / "table2.csv", dtype={"category": str}).set_index("category")
        return t2.drop(index="mean"), t2.loc["mean"]
    if kind in ("btad", "mvtec3d"):
        t3 = pd.read_csv(PAPER_DIR / "table3.csv").set_index(["dataset", "metric"])
        if (kind, metric) in t3.index:
            return None, t3.loc[(kind, metric)]
    return None, None


class StaleRunError(ValueError):
    """A metrics.json was made with other settings than the current config's (its config hash differs)."""


def load_metrics(paths: list[str | Path], expected: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run: every field of its metrics.json.  The one loader of every table, figure and
    significance job.

    Each run folder is checked first (``adbench.evaluation.integrity.read_metrics``): the SHA-256 of its scores.csv
    and maps.npz must be those metrics.json records, and its image AUROC that of scores.csv's scores
    (within 1e-12), else :class:`adbench.evaluation.integrity.TamperedRunError` names the files.  ``expected`` maps
    metrics.json paths to the config hash the current config gives them (``adbench.methods.runs.config_hash``); a
    file whose recorded hash differs raises :class:`StaleRunError`.
    """
    rows = read_metrics(paths)
    stale = [(p, r.get("config_hash"), expected[str(p)]) for p, r in zip(paths, rows)
             if expected is not None and str(p) in expected and r.get("config_hash") != expected[str(p)]]
    if stale:
        listing = "\n".join(f"  {p}: made with config hash {got}, the current config gives {want}"
                             for p, got, want in stale)
        raise StaleRunError(
            f"{len(stale)} run(s) were made with other settings than the current config:\n{listing}\n"
            f"rerun them (`snakemake all_tables --forcerun fit_evaluate`, or delete those run folders) "
            f"so that no table mixes numbers from different settings")
    return pd.DataFrame(rows)


@dataclass
class Table:
    """One table ready to render.

    ``values``: rows x columns; numbers, or text in ``text_columns``.  ``std`` / ``seeds``: the seed
    statistics of the reproduced columns ``ours`` (same index).  ``emphasis``: where the best and second
    reproduced values are picked, ``"row"`` (across ``ours`` in each row) or ``"column"`` (down each of
    ``ours``).  ``labels``: display names of columns (default: the key).
    """

    name: str
    caption: str
    values: pd.DataFrame
    ours: list[str]
    std: pd.DataFrame
    seeds: pd.DataFrame
    emphasis: str = "row"
    text_columns: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    rule_before: list[str] = field(default_factory=list)  # row labels preceded by a horizontal rule

    def ranks(self) -> dict[tuple[str, str], int]:
        """``{(row, column): 1 or 2}`` for the best and second-best reproduced values (:func:`best_two`)."""
        groups = ([[(r, c) for c in self.ours] for r in self.values.index] if self.emphasis == "row"
                  else [[(r, c) for r in self.values.index] for c in self.ours])
        marks: dict[tuple[str, str], int] = {}
        for cells in groups:
            marks.update(best_two({cell: self.values.loc[cell] for cell in cells}))
        return marks


def best_two(values: dict, digits: int = 3, higher_is_better: bool = True) -> dict:
    """``{key: 1 or 2}``: the keys of ``values`` holding the best and second-best value as printed (rounded
    to ``digits``, so printed ties share a rank); NaN and non-numbers never compete.  The one rule for bold /
    underline in every rendering (Markdown, LaTeX, the HTML report)."""
    shown = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            shown[key] = round(number, digits)
    ranked = sorted(set(shown.values()), reverse=higher_is_better)[:2]
    return {key: ranked.index(v) + 1 for key, v in shown.items() if v in ranked}


def seed_stats(runs: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Mean, sample std (NaN for one seed) and count over seeds of ``metric`` per ``keys`` group.

    ``runs`` has one row per (keys..., seed).  Returns a frame indexed by ``keys`` with ``mean, std, seeds``.
    """
    per_seed = runs.groupby(keys + ["seed"])[metric].mean()
    grouped = per_seed.groupby(level=keys)
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "seeds": grouped.count()})


def category_mean_stats(runs: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Like :func:`seed_stats` of the mean over categories: per (keys, seed) the mean over categories, then
    mean / std over seeds.  Every category of a group must have the same seeds (else the per-seed means
    would average different categories)."""
    for key, group in runs.groupby(keys):
        seeds = group.groupby("category")["seed"].apply(frozenset)
        if seeds.nunique() != 1:
            raise ValueError(f"{key}: categories were run with different seeds ({dict(seeds)}); run every "
                             f"category with the method's seeds first")
    per_seed = runs.groupby(keys + ["seed"])[metric].mean().rename(metric).reset_index()
    return seed_stats(per_seed, keys, metric)


def _require(runs: pd.DataFrame, methods: list[str], categories: list[str], metric: str) -> None:
    have = runs.dropna(subset=[metric]).groupby("method")["category"].apply(set)
    missing = [m for m in methods if not set(categories) <= have.get(m, set())]
    if missing:
        raise ValueError(f"no {metric} for some categories of methods {missing}: run them first")


def _method_impls(runs: pd.DataFrame) -> dict[str, str]:
    """Method name -> impl (the paper's column for it), from the runs (``impl`` field, else the name)."""
    impl = runs["impl"] if "impl" in runs else runs["method"]
    return dict(zip(runs["method"], impl.fillna(runs["method"])))


def per_category(runs: pd.DataFrame, methods: list[str], metric: str, name: str, caption: str) -> Table:
    """Categories (run order) x methods of ``metric``, plus a ``mean`` row (Table 2; the pixel table).

    Where the paper has per-category values for the dataset kind, ``paper:<m>`` / ``diff:<m>`` columns
    follow each method, their ``mean`` the paper's mean over the same categories; the paper's published
    all-category mean has its own last row (``published_row``).  Methods with test-set monitoring get a
    ``best_on_test:<m>`` column.
    """
    categories = list(dict.fromkeys(runs["category"]))
    _require(runs, methods, categories, metric)
    runs = runs[runs["method"].isin(methods)]
    kinds = set(runs["dataset_kind"])
    kind = kinds.pop() if len(kinds) == 1 else None
    cells = seed_stats(runs, ["category", "method"], metric)
    overall = category_mean_stats(runs, ["method"], metric)
    index = categories + ["mean"]
    values, std, seeds = (pd.DataFrame(index=index, dtype=float) for _ in range(3))
    per_cat, published = paper_reference(kind, metric) if kind in PAPER_CATEGORIES else (None, None)
    impls = _method_impls(runs)
    all_ran = kind in PAPER_CATEGORIES and set(categories) == set(PAPER_CATEGORIES[kind])
    rows_published = published is not None
    for m in methods:
        col = [cells.loc[(c, m), "mean"] for c in categories] + [overall.loc[m, "mean"]]
        values[m] = col
        std[m] = [cells.loc[(c, m), "std"] for c in categories] + [overall.loc[m, "std"]]
        seeds[m] = [cells.loc[(c, m), "seeds"] for c in categories] + [overall.loc[m, "seeds"]]
        paper_col = impls.get(m, m)
        if published is not None and paper_col in published.index:
            ref = pd.Series(math.nan, index=index)
            if per_cat is not None:
                ref[categories] = per_cat[paper_col].reindex(categories).to_numpy()
                ref["mean"] = ref[categories].mean()
            elif all_ran:
                ref["mean"] = published[paper_col]
            values[f"paper:{m}"] = ref
            values[f"diff:{m}"] = values[m] - ref
        selected = f"{BEST_ON_TEST}_{metric}"
        ran = runs[runs["method"] == m]
        if selected in ran and ran[selected].notna().all():
            sel = seed_stats(ran, ["category"], selected)
            sel_mean = category_mean_stats(ran, ["method"], selected)
            values[f"{BEST_ON_TEST}:{m}"] = list(sel.loc[categories, "mean"]) + [sel_mean.loc[m, "mean"]]
    rule = ["mean"]
    if rows_published:
        row = published_row(kind)
        values.loc[row] = math.nan
        for m in methods:
            if f"paper:{m}" in values:
                values.loc[row, f"paper:{m}"] = published[impls.get(m, m)]
        std.loc[row], seeds.loc[row] = math.nan, math.nan
        rule.append(row)
    values.index.name = "category"
    return Table(name, caption, values, list(methods), std, seeds, emphasis=EMPHASIS["per_category"],
                 rule_before=rule)


def _exploded(runs: pd.DataFrame, field: str, metric: str) -> pd.DataFrame:
    """One row per (run, group of ``field``: ``defect_types`` or ``defect_kinds`` of metrics.json) with its
    ``metric``; columns category, method, seed, group, kind, value."""
    rows = []
    for run in runs.itertuples():
        groups = getattr(run, field, None)
        if not isinstance(groups, dict):
            raise ValueError(f"{run.dataset}/{run.category}/{run.method}/seed{run.seed}: metrics.json has no "
                             f"{field} (made before per-defect metrics): rerun it")
        for name, entry in groups.items():
            rows.append({"category": run.category, "method": run.method, "seed": run.seed, "group": name,
                         "kind": entry.get("kind", name), "value": entry[metric]})
    return pd.DataFrame(rows)


def per_defect_table(runs: pd.DataFrame, methods: list[str], metric: str, name: str, dataset: str) -> Table:
    """Rows ``<category> / <defect type> (<kind>)`` x methods of ``metric`` (image or pixel AUROC of that
    type against the normal images, ``adbench.evaluation.metrics.per_defect``), then per defect kind the mean over
    categories, then the pooled number (every defect at once: the MVTec-comparable one).  Mean ± std over
    seeds."""
    runs = runs[runs["method"].isin(methods)]
    categories = list(dict.fromkeys(runs["category"]))
    _require(runs, methods, categories, metric)
    types = _exploded(runs, "defect_types", metric)
    cells = seed_stats(types.rename(columns={"value": metric}), ["category", "group", "method"], metric)
    labels = {}
    for c in categories:
        present = types[types["category"] == c][["group", "kind"]].drop_duplicates().sort_values("group")
        for t, kind in present.itertuples(index=False):
            labels[(c, t)] = f"{c} / {t} ({kind})"
    kinds = _exploded(runs, "defect_kinds", metric).rename(columns={"value": metric})
    by_kind = category_mean_stats(kinds, ["group", "method"], metric) if not kinds.empty else None
    pooled = category_mean_stats(runs, ["method"], metric)
    index = list(labels.values()) + [f"mean over categories: {k}" for k in sorted(set(kinds.get("group", [])))]
    index.append("pooled over defects (mean over categories)")
    values, std, seeds = (pd.DataFrame(index=pd.Index(index, name="defect"), dtype=float) for _ in range(3))
    for m in methods:
        column = {label: cells.loc[(c, t, m)] for (c, t), label in labels.items()}
        if by_kind is not None:
            column.update({f"mean over categories: {k}": by_kind.loc[(k, m)] for k in sorted(set(kinds["group"]))})
        column[index[-1]] = pooled.loc[m]
        values[m] = [column[r]["mean"] for r in index]
        std[m] = [column[r]["std"] for r in index]
        seeds[m] = [column[r]["seeds"] for r in index]
    rule = [index[len(labels)]] + ([index[-1]] if len(index) > len(labels) + 1 else [])
    caption = (f"{METRIC_LABEL[metric]} per defect type on `{dataset}` (each type's images against the normal "
               f"ones; mean ± std over seeds), then per defect kind (mean over categories) and pooled over all "
               f"defects, the MVTec-comparable number: there a large defect outweighs small ones")
    return Table(name, caption, values, list(methods), std, seeds, emphasis=EMPHASIS["per_defect"], rule_before=rule)


def table1(runs: pd.DataFrame, methods: list[str], dataset: str) -> Table:
    """The paper's Table 1 (MVTec AD, image and pixel AUROC of every method it lists, with venue): its
    literature rows marked "reported, not rerun", and one row per reproduced method (our mean over the
    categories run, ± std over seeds) beside the value the paper lists for that method.  ``diff:*`` only
    when ``dataset`` is MVTec AD with all 15 categories run (like with like)."""
    paper = pd.read_csv(PAPER_DIR / "table1.csv", dtype=str, keep_default_na=False)
    runs = runs[runs["method"].isin(methods)]
    categories = list(dict.fromkeys(runs["category"]))
    for metric in ("image_auroc", "pixel_auroc"):
        _require(runs, methods, categories, metric)
    kinds = set(runs["dataset_kind"])
    comparable = kinds == {"mvtec_ad"} and set(categories) == set(PAPER_CATEGORIES["mvtec_ad"])
    impls = _method_impls(runs)
    stats = {metric: category_mean_stats(runs, ["method"], metric) for metric in ("image_auroc", "pixel_auroc")}
    rows, std_rows, seed_rows, index = [], [], [], []
    for entry in paper.itertuples():
        number = {metric: float(getattr(entry, metric)) if getattr(entry, metric) else math.nan
                  for metric in ("image_auroc", "pixel_auroc")}
        base = {"group": entry.group, "venue": entry.venue}
        ours = [m for m in methods if entry.suite_method and impls.get(m, m) == entry.suite_method]
        if not ours:
            rows.append({**base, "status": "reported, not rerun", **{f"paper:{k}": v for k, v in number.items()}})
            index.append(entry.method)
            std_rows.append({})
            seed_rows.append({})
        for m in ours:
            row = {**base, "status": f"reproduced here (`{m}` on `{dataset}`)"}
            for metric in ("image_auroc", "pixel_auroc"):
                row[metric] = stats[metric].loc[m, "mean"]
                row[f"paper:{metric}"] = number[metric]
                row[f"diff:{metric}"] = row[metric] - number[metric] if comparable else math.nan
            rows.append(row)
            std_rows.append({k: stats[k].loc[m, "std"] for k in stats})
            seed_rows.append({k: stats[k].loc[m, "seeds"] for k in stats})
            index.append(f"{entry.method} [{m}]")
    listed = set(paper["suite_method"])
    for m in (m for m in methods if impls.get(m, m) not in listed):  # run here, absent from the paper's table
        rows.append({"group": "", "venue": "", "status": f"reproduced here, not in the paper (`{m}` on `{dataset}`)",
                     **{metric: stats[metric].loc[m, "mean"] for metric in stats}})
        std_rows.append({k: stats[k].loc[m, "std"] for k in stats})
        seed_rows.append({k: stats[k].loc[m, "seeds"] for k in stats})
        index.append(m)
    order = ["group", "venue", "status", "image_auroc", "paper:image_auroc", "diff:image_auroc",
             "pixel_auroc", "paper:pixel_auroc", "diff:pixel_auroc"]
    values = pd.DataFrame(rows, index=pd.Index(index, name="method")).reindex(columns=order)
    std = pd.DataFrame(std_rows, index=values.index).reindex(columns=["image_auroc", "pixel_auroc"])
    seeds = pd.DataFrame(seed_rows, index=values.index).reindex(columns=["image_auroc", "pixel_auroc"])
    where = (f"mean over the {len(categories)} categories of `{dataset}` run here" if comparable else
             f"our numbers are on `{dataset}` ({', '.join(sorted(kinds))}, {len(categories)} categories), the "
             f"paper's on all of MVTec AD: no differences are computed")
    caption = (f"Table 1: image- and pixel-level AUROC, the paper's Table 1 (MVTec AD; literature rows reported, "
               f"not rerun) with the methods reproduced here; {where}; ± std over seeds; "
               f"{_inputs(runs)}")
    return Table("table1", caption, values, ["image_auroc", "pixel_auroc"], std, seeds, emphasis=EMPHASIS["table1"],
                 text_columns=["group", "venue", "status"])


def table3(runs: pd.DataFrame, methods: list[str], datasets: list[str]) -> Table:
    """Per dataset, image and pixel AUROC (mean over its categories, ± std over seeds) of each method; the
    paper's Table 3 values (BTAD, MVTec3D-RGB) and differences where the dataset is one of those and all of
    its categories were run."""
    index, rows, std_rows, seed_rows = [], [], [], []
    impls = _method_impls(runs)
    for ds in datasets:
        ran = runs[(runs["dataset"] == ds) & runs["method"].isin(methods)]
        if ran.empty:
            raise ValueError(f"table3: no runs of dataset '{ds}': run it first")
        kind = ran["dataset_kind"].iloc[0]
        categories = set(ran["category"])
        all_ran = kind in PAPER_CATEGORIES and categories == set(PAPER_CATEGORIES[kind])
        for metric in ("image_auroc", "pixel_auroc"):
            _require(ran, methods, sorted(categories), metric)
            stats = category_mean_stats(ran, ["method"], metric)
            _, published = paper_reference(kind, metric) if all_ran else (None, None)
            row = {}
            for m in methods:
                row[m] = stats.loc[m, "mean"]
                if published is not None and impls.get(m, m) in published.index:
                    row[f"paper:{m}"] = published[impls.get(m, m)]
                    row[f"diff:{m}"] = row[m] - row[f"paper:{m}"]
            rows.append(row)
            std_rows.append({m: stats.loc[m, "std"] for m in methods})
            seed_rows.append({m: stats.loc[m, "seeds"] for m in methods})
            index.append(f"{ds} ({len(categories)} categories): {METRIC_LABEL[metric]}")
    columns = [c for m in methods for c in (m, f"paper:{m}", f"diff:{m}") if any(c in r for r in rows)]
    values = pd.DataFrame(rows, index=pd.Index(index, name="dataset")).reindex(columns=columns)
    caption = ("Table 3: image- and pixel-level AUROC per dataset (mean over its categories, ± std over seeds); "
               "`paper:*`: the paper's Table 3 where the dataset is BTAD or MVTec3D-RGB and all of its "
               f"categories were run; {_inputs(runs)}")
    return Table("table3", caption, values, list(methods), pd.DataFrame(std_rows, index=values.index),
                 pd.DataFrame(seed_rows, index=values.index), emphasis=EMPHASIS["table3"])


def ablation_label(method_entry: dict) -> str:
    """Table 4 row of a method entry: the ablation its params make of it (its class's ``ablation``), ``full``
    without one."""
    from adbench.methods.registry import method_spec

    return method_spec(method_entry["impl"]).ablation(method_entry.get("params") or {}) or "full"


def table4(runs: pd.DataFrame, labels: dict[str, str], datasets: list[str]) -> Table:
    """Ablation rows x datasets of image AUROC (mean over categories, ± std over seeds), plus ``avg``; the
    paper's Table 4 columns (``paper:<its dataset>``) follow, with ``diff:<dataset>`` where one of our
    datasets is one of the paper's and all of its categories were run.

    ``labels`` maps method names to row labels, in row order.
    """
    paper = pd.read_csv(PAPER_DIR / "table4.csv").set_index("ablation")
    runs = runs[runs["method"].isin(list(labels)) & runs["dataset"].isin(datasets)]
    have = set(zip(runs["method"], runs["dataset"]))
    missing = sorted({m for m in labels for ds in datasets if (m, ds) not in have})
    if missing:
        raise ValueError(f"no image_auroc for methods {missing} on some of {datasets}: run them first")
    stats = category_mean_stats(runs, ["method", "dataset"], "image_auroc")
    rows = [labels[m] for m in labels]
    values, std, seeds = (pd.DataFrame(index=pd.Index(rows, name="ablation"), dtype=float) for _ in range(3))
    for ds in datasets:
        values[ds] = [stats.loc[(m, ds), "mean"] for m in labels]
        std[ds] = [stats.loc[(m, ds), "std"] for m in labels]
        seeds[ds] = [stats.loc[(m, ds), "seeds"] for m in labels]
    # the mean over datasets; no std (datasets may have been run with different seeds)
    values["avg"] = values[datasets].mean(axis=1)
    # the Div-only rows scored by the raw divergence instead of softmax(-Div) (fod/README.md, Scoring)
    raw = runs.dropna(subset=[RAW_DIV]) if RAW_DIV in runs else runs.iloc[:0]
    if len(raw):
        raw_stats = category_mean_stats(raw, ["method", "dataset"], RAW_DIV)
        for ds in datasets:
            values[f"raw_div:{ds}"] = [raw_stats["mean"].get((m, ds), math.nan) for m in labels]
    std["avg"], seeds["avg"] = math.nan, seeds[datasets].min(axis=1)
    ref = paper.reindex(rows)
    for col in ("mvtec_ad", "btad", "mvtec3d", "avg"):
        values[f"paper:{col}"] = ref[col].to_numpy()
    for ds in datasets:
        ran = runs[runs["dataset"] == ds]
        kind = ran["dataset_kind"].iloc[0]
        if kind in PAPER_CATEGORIES and set(ran["category"]) == set(PAPER_CATEGORIES[kind]):
            values[f"diff:{ds}"] = values[ds] - values[f"paper:{kind}"]
    counts = []
    for ds in datasets:
        ran = runs.loc[runs["dataset"] == ds]
        kind, n = ran["dataset_kind"].iloc[0], ran["category"].nunique()
        total = f" of {len(PAPER_CATEGORIES[kind])}" if kind in PAPER_CATEGORIES else ""
        counts.append(f"`{ds}` ({kind}): {n}{total} categories")
    raw_note = ("; `raw_div:*`: the Div-only rows scored by the raw divergence instead of softmax(-Div), "
                "same fits" if len(raw) else "")
    caption = ("Table 4: FOD ablations, image-level AUROC (mean over categories, ± std over seeds).  Our columns "
               f"average the categories run here ({'; '.join(counts)}); the `paper:*` columns are the paper's "
               "published means over all categories of its datasets, compared (`diff:*`) only where every "
               f"category of the same dataset was run{raw_note}; {_inputs(runs)}")
    return Table("table4", caption, values, list(datasets) + ["avg"], std, seeds, emphasis=EMPHASIS["table4"])


def _inputs(runs: pd.DataFrame) -> str:
    """Which backbone checkpoint (timm tag and file) and image preprocessing (``backbone.preprocess``) the
    runs used, for a table's caption."""
    tags = (sorted(set(zip(runs["backbone_tag"], runs["backbone_file"])))
            if {"backbone_tag", "backbone_file"} <= set(runs) and runs["backbone_tag"].notna().all() else [])
    backbone = ("backbone " + ", ".join(f"`{tag}` (`{file}`)" for tag, file in tags) if tags
                else "backbone checkpoint not recorded")
    used = sorted(set(runs["preprocess"].dropna())) if "preprocess" in runs else []
    images = f"images preprocessed by `{'`, `'.join(used)}` (backbone.preprocess)" if used else "preprocessing not recorded"
    return f"{backbone}; {images}"


# ---- rendering -----------------------------------------------------------------------------------------


def to_csv(table: Table, path: str | Path) -> None:
    """All numbers: each reproduced column ``c`` followed by ``c:std`` and ``c:seeds``."""
    out = pd.DataFrame(index=table.values.index)
    for col in table.values.columns:
        out[col] = table.values[col]
        if col in table.ours and col in table.std:
            out[f"{col}:std"] = table.std[col]
            out[f"{col}:seeds"] = table.seeds[col].astype("Int64")
    with atomic_path(path) as tmp:
        out.to_csv(tmp, float_format="%.4f")


def _cell(table: Table, row: str, col: str, digits: int, ranks: dict[tuple[str, str], int]) -> tuple[str, int]:
    """A cell's text (``mean ± std`` for reproduced columns with more than one seed; signed for ``diff:``)
    and its emphasis rank from ``ranks`` (``Table.ranks()``: 0, 1 best, 2 second)."""
    value = table.values.loc[row, col]
    if col in table.text_columns:
        return ("" if pd.isna(value) else str(value)), 0
    if pd.isna(value):
        return "-", 0
    text = f"{value:+.{digits}f}" if col.startswith("diff:") else f"{value:.{digits}f}"
    if col in table.ours and col in table.std and not pd.isna(table.std.loc[row, col]):
        text += f" ± {table.std.loc[row, col]:.{digits}f}"
    return text, ranks.get((row, col), 0)


def _label(table: Table, col: str) -> str:
    if col in table.labels:
        return table.labels[col]
    if col.startswith(f"{BEST_ON_TEST}:"):
        return f"{col.split(':', 1)[1]} (best epoch on test)†"
    return col


def _notes(table: Table) -> list[str]:
    notes = []
    if any(c.startswith(f"{BEST_ON_TEST}:") for c in table.values.columns):
        notes.append("† " + BEST_ON_TEST_NOTE + ".")
    notes.append("Bold: best reproduced value, underlined: second (the paper's red and blue); ± is the std over "
                 "seeds (no ± for one seed; `:seeds` in the CSV).")
    return notes


def to_markdown(table: Table, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table with its caption and notes; NaN cells print as ``-``."""
    cols, ranks = list(table.values.columns), table.ranks()
    aligns = [":---" if c in table.text_columns else "---:" for c in cols]
    lines = [table.caption, "",
             "| " + " | ".join([table.values.index.name or ""] + [_label(table, c) for c in cols]) + " |",
             "|" + "|".join(["---"] + aligns) + "|"]
    for row in table.values.index:
        cells = []
        for col in cols:
            text, rank = _cell(table, row, col, digits, ranks)
            cells.append(f"**{text}**" if rank == 1 else f"<u>{text}</u>" if rank == 2 else text)
        label = f"**{row}**" if row in table.rule_before else str(row)
        lines.append("| " + " | ".join([label] + cells) + " |")
    return "\n".join(lines + [""] + [note + "  " for note in _notes(table)]) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped; ``±`` and ``†`` as math / text symbols."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("†", r"\textsuperscript{\dag}").replace("`", "")


def to_latex(table: Table, digits: int = 3) -> str:
    """A booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``); best reproduced value bold, second
    underlined."""
    cols, ranks = list(table.values.columns), table.ranks()
    spec = "l" + "".join("l" if c in table.text_columns else "r" for c in cols)
    head = " & ".join([latex_escape(table.values.index.name or "")] + [latex_escape(_label(table, c)) for c in cols])
    body = []
    for row in table.values.index:
        if row in table.rule_before:
            body.append(r"\midrule")
        cells = []
        for col in cols:
            text, rank = _cell(table, row, col, digits, ranks)
            text = latex_escape(text)
            cells.append(rf"\textbf{{{text}}}" if rank == 1 else rf"\underline{{{text}}}" if rank == 2 else text)
        body.append(" & ".join([latex_escape(row)] + cells) + r" \\")
    notes = " ".join(latex_escape(n) for n in _notes(table))
    return "\n".join([
        r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
        rf"\caption{{{latex_escape(table.caption)}}}", rf"\label{{tab:{table.name}}}",
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", rf"\par\footnotesize {notes}", r"\end{table}", ""])


def write_outputs(table: Table, stem: str | Path) -> list[Path]:
    """``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex``."""
    stem = Path(stem)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    to_csv(table, paths[0])
    write_atomic(paths[1], to_markdown(table))
    write_atomic(paths[2], to_latex(table))
    return paths


def per_category_caption(runs: pd.DataFrame, dataset: str, metric: str) -> str:
    number = "Table 2" if metric == "image_auroc" else "Pixel table (the paper's App. Table 6 is not transcribed)"
    return (f"{number}: {METRIC_LABEL[metric]} per category on `{dataset}` (mean ± std over seeds "
            f"{sorted(set(runs['seed']))}); `paper:*`: the paper's values for the same categories and their "
            f"mean over the categories run here, `diff:*` = ours - paper, the paper's published all-category "
            f"mean in its own row; {_inputs(runs)}")


def build_table(spec: dict, runs: pd.DataFrame, name: str) -> Table:
    """The table ``spec`` describes (the workflow's ``TABLE_SPECS``): ``kind`` is ``per_category`` or
    ``per_defect`` (``dataset``, ``methods``, ``metric``), ``table1`` (``dataset``, ``methods``), ``table3`` (``datasets``,
    ``methods``) or ``table4`` (``datasets``, ``labels``: method -> row label)."""
    kind = spec["kind"]
    if kind == "per_category":
        ran = runs[runs["dataset"] == spec["dataset"]]
        return per_category(ran, spec["methods"], spec["metric"], name,
                            per_category_caption(ran[ran["method"].isin(spec["methods"])], spec["dataset"],
                                                 spec["metric"]))
    if kind == "per_defect":
        return per_defect_table(runs[runs["dataset"] == spec["dataset"]], spec["methods"], spec["metric"], name,
                                spec["dataset"])
    if kind == "table1":
        return table1(runs[runs["dataset"] == spec["dataset"]], spec["methods"], spec["dataset"])
    if kind == "table3":
        return table3(runs, spec["methods"], spec["datasets"])
    if kind == "table4":
        return table4(runs, dict(spec["labels"]), spec["datasets"])
    raise ValueError(f"unknown table kind {kind!r} (per_category, table1, table3, table4)")


def write_table(spec: dict, metrics_files: list[str], stem: str, expected: dict[str, str] | None = None) -> list[Path]:
    """Load the runs (refusing stale ones, see :func:`load_metrics`), build the table, write its three files."""
    table = build_table(spec, load_metrics(metrics_files, expected), Path(stem).name)
    return write_outputs(table, stem)
