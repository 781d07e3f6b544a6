"""The paper's tables, rebuilt from the runs' ``metrics.json`` files.

Cells are means over seeds.  Where the dataset is one the paper reports on, its transcribed numbers
(``results/paper/``) stand beside ours in columns named ``paper:<method>``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
PAPER_TABLE2_DATASET_KIND = "mvtec_ad"


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


def table2(runs: pd.DataFrame, methods: list[str], metric: str = "image_auroc",
           paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Categories x methods of ``metric`` (mean over seeds), categories in run order, plus a ``mean`` row."""
    categories = list(dict.fromkeys(runs["category"]))
    cells = runs.groupby(["category", "method"])[metric].mean().unstack("method")
    table = cells.reindex(index=categories, columns=methods)
    missing = table.columns[table.isna().any()].tolist()
    if missing:
        raise ValueError(f"no {metric} for some categories of methods {missing}: run them first")
    table.loc["mean"] = table.mean()
    if paper is not None:
        ref = paper.set_index("category").reindex(table.index)
        for m in methods:
            if m in ref:
                table[f"paper:{m}"] = ref[m]
    table.index.name = "category"
    return table


def to_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; NaN cells print as ``-``."""
    cols = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for idx, row in table.iterrows():
        cells = ["-" if pd.isna(v) else f"{v:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([f"**{idx}**" if idx == "mean" else str(idx)] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_table2(metrics_files: list[str], dataset: str, methods: list[str], csv_out: str, md_out: str,
                 expected: dict[str, str] | None = None) -> None:
    runs = load_metrics(metrics_files, expected)
    runs = runs[runs["dataset"] == dataset]
    kinds = {json.loads(Path(p).read_text()).get("dataset_kind") for p in metrics_files}
    paper = pd.read_csv(PAPER_DIR / "table2.csv") if kinds == {PAPER_TABLE2_DATASET_KIND} else None
    table = table2(runs, methods, paper=paper)
    table.to_csv(csv_out, float_format="%.4f")
    title = f"Table 2: image-level AUROC per category on `{dataset}` (mean over seeds {sorted(set(runs['seed']))})\n\n"
    Path(md_out).write_text(title + to_markdown(table))


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
    Path(md_out).write_text(
        "Table 4: FOD ablations, image-level AUROC (mean over categories and seeds); `paper:*` columns are "
        "the paper's numbers on its datasets\n\n" + to_markdown(table))
