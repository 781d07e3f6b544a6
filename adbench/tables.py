"""The paper's tables, rebuilt from the runs' ``metrics.json`` files.

Cells are means over seeds.  Where the dataset is one the paper reports on, its transcribed numbers
(``results/paper/``) stand beside ours in columns named ``paper:<method>``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
# Every category of the datasets the paper reports on (dataset kind -> folder names).
PAPER_CATEGORIES: dict[str, list[str]] = {
    "mvtec_ad": ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                 "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"],
    "btad": ["01", "02", "03"],
    "mvtec3d": ["bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire"],
}


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
    """One row per run: every field of its metrics.json.

    ``expected`` maps metrics.json paths to the config hash the current config gives them
    (``adbench.runs.config_hash``); a file whose recorded hash differs raises :class:`StaleRunError`.
    """
    rows = [json.loads(Path(p).read_text()) for p in paths]
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


def table2(runs: pd.DataFrame, methods: list[str], metric: str = "image_auroc", kind: str | None = None) -> pd.DataFrame:
    """Categories x methods of ``metric`` (mean over seeds), categories in run order, plus a ``mean`` row.

    When the paper reports on the dataset ``kind``, ``paper:<method>`` columns stand beside ours: its
    per-category values where it has them, and in the ``mean`` row the mean of its values over the same
    categories we ran (like with like: left empty when the paper has no per-category values and we ran
    only some categories).  A last row (``published_row``) holds the paper's published all-category mean.
    """
    categories = list(dict.fromkeys(runs["category"]))
    cells = runs.groupby(["category", "method"])[metric].mean().unstack("method")
    table = cells.reindex(index=categories, columns=methods)
    missing = table.columns[table.isna().any()].tolist()
    if missing:
        raise ValueError(f"no {metric} for some categories of methods {missing}: run them first")
    table.loc["mean"] = table.mean()
    per_category, published = paper_reference(kind, metric) if kind in PAPER_CATEGORIES else (None, None)
    if published is not None:
        all_ran = set(categories) == set(PAPER_CATEGORIES[kind])
        for m in methods:
            if m not in published.index:
                continue
            col = pd.Series(float("nan"), index=table.index)
            if per_category is not None:
                col[categories] = per_category[m].reindex(categories).to_numpy()
                col["mean"] = col[categories].mean()
            elif all_ran:
                col["mean"] = published[m]
            table[f"paper:{m}"] = col
        table.loc[published_row(kind)] = float("nan")
        for m in methods:
            if f"paper:{m}" in table:
                table.loc[published_row(kind), f"paper:{m}"] = published[m]
    table.index.name = "category"
    return table


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; NaN cells print as ``-``."""
    cols = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for idx, row in table.iterrows():
        cells = ["-" if pd.isna(v) else f"{v:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([f"**{idx}**" if idx == "mean" or str(idx).startswith("paper mean")
                                        else str(idx)] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_table2(metrics_files: list[str], dataset: str, methods: list[str], csv_out: str, md_out: str,
                 expected: dict[str, str] | None = None) -> None:
    runs = load_metrics(metrics_files, expected)
    runs = runs[runs["dataset"] == dataset]
    kinds = set(runs["dataset_kind"])
    table = table2(runs, methods, kind=kinds.pop() if len(kinds) == 1 else None)
    table.to_csv(csv_out, float_format="%.4f")
    title = (f"Table 2: image-level AUROC per category on `{dataset}` (mean over seeds {sorted(set(runs['seed']))}); "
             f"`paper:*` columns: the paper's values for the same categories, their mean over the categories "
             f"run here, and its published all-category mean in the last row; {_preprocessing(runs)}\n\n")
    Path(md_out).write_text(title + to_markdown(table))


def _preprocessing(runs: pd.DataFrame) -> str:
    """Which image preprocessing (``backbone.preprocess``) the runs used, for a table's caption."""
    used = sorted(set(runs["preprocess"].dropna())) if "preprocess" in runs else []
    return f"images preprocessed by `{'`, `'.join(used)}` (backbone.preprocess)" if used else "preprocessing not recorded"


def ablation_label(method_entry: dict) -> str:
    """Table 4 row of a FOD method entry: its ``ablation`` param, ``full`` without one."""
    return method_entry.get("params", {}).get("ablation", "full")


def table4(runs: pd.DataFrame, labels: dict[str, str], datasets: list[str],
           paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ablation rows x datasets of mean image AUROC (over categories and seeds), plus ``avg``.

    ``labels`` maps method names to row labels, in row order.  The paper's Table 4 columns
    (``paper:<dataset>``) follow when given: they describe the same rows on the paper's datasets.
    """
    cells = runs.groupby(["method", "dataset"])["image_auroc"].mean().unstack("dataset")
    table = cells.reindex(index=list(labels), columns=datasets)
    missing = table.index[table.isna().any(axis=1)].tolist()
    if missing:
        raise ValueError(f"no image_auroc for methods {missing} on some of {datasets}: run them first")
    table.index = [labels[m] for m in table.index]
    table["avg"] = table[datasets].mean(axis=1)
    if paper is not None:
        ref = paper.set_index("ablation").reindex(table.index)
        for col in ("mvtec_ad", "btad", "mvtec3d", "avg"):
            table[f"paper:{col}"] = ref[col]
    table.index.name = "ablation"
    return table


def write_table4(metrics_files: list[str], labels: dict[str, str], datasets: list[str], csv_out: str,
                 md_out: str, expected: dict[str, str] | None = None) -> None:
    runs = load_metrics(metrics_files, expected)
    table = table4(runs, labels, datasets, paper=pd.read_csv(PAPER_DIR / "table4.csv"))
    table.to_csv(csv_out, float_format="%.4f")
    counts = []
    for ds in datasets:
        ran = runs.loc[runs["dataset"] == ds]
        kind, n = ran["dataset_kind"].iloc[0], ran["category"].nunique()
        total = f" of {len(PAPER_CATEGORIES[kind])}" if kind in PAPER_CATEGORIES else ""
        counts.append(f"`{ds}` ({kind}): {n}{total} categories")
    Path(md_out).write_text(
        "Table 4: FOD ablations, image-level AUROC (mean over categories and seeds).  Our columns average the "
        f"categories run here ({'; '.join(counts)}); the `paper:*` columns are the paper's published means over "
        "all categories of its datasets, so they compare like with like only where every category was run; "
        f"{_preprocessing(runs)}\n\n"
        + to_markdown(table))
