"""CI's AUROC regression gate: compare a run's metrics with the committed reference values.

``results/reference/<name>.csv`` has one row per checked number: ``dataset, category, method, seed,
metric, value, tolerance`` (and how they were measured: ``adbench.reference``).  The run of ``seed`` is
compared with ``value``; a number regresses when it falls more than ``tolerance`` below it (a rise is
reported too, so the reference can be refreshed on purpose, but does not fail).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from adbench.reference import AGGREGATE, METRICS
from adbench.runs import run_folder


def _metric(results: Path, dataset: str, category: str, method: str, seed: int, metric: str) -> float | None:
    path = Path(run_folder(results, dataset, category, method, seed)) / "metrics.json"
    return float(json.loads(path.read_text())[metric]) if path.exists() else None


def compare(reference: Path, results: Path) -> pd.DataFrame:
    """The reference table with ``got``, ``delta`` and ``status`` (ok, improved, REGRESSED, MISSING) columns.

    A row of category ``all`` (metric ``mean_auroc``) is the mean of the method's image and pixel AUROC
    over the categories the reference lists for it (``adbench.reference.with_aggregates``).
    """
    ref = pd.read_csv(reference, dtype={"category": str})
    got, status = [], []
    for row in ref.itertuples():
        if (row.category, row.metric) == AGGREGATE:
            cats = ref.loc[(ref.dataset == row.dataset) & (ref.method == row.method) & (ref.category != AGGREGATE[0]),
                           "category"].unique()
            values = [_metric(results, row.dataset, c, row.method, row.seed, m) for c in cats for m in METRICS]
            value = None if None in values or not values else sum(values) / len(values)
        else:
            value = _metric(results, row.dataset, row.category, row.method, row.seed, row.metric)
        if value is None:
            got.append(float("nan"))
            status.append("MISSING")
            continue
        got.append(value)
        if value < row.value - row.tolerance:
            status.append("REGRESSED")
        elif value > row.value + row.tolerance:
            status.append("improved")
        else:
            status.append("ok")
    return ref.assign(got=got, delta=[g - v for g, v in zip(got, ref.value)], status=status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, default=Path("results/reference/ci.csv"))
    p.add_argument("--results", type=Path, default=Path("results"))
    a = p.parse_args(argv)
    table = compare(a.reference, a.results)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    bad = table[table.status.isin(["REGRESSED", "MISSING"])]
    moved = table[table.status != "ok"]
    if len(moved):
        print("\nmoved cells:\n" + moved[["category", "method", "metric", "value", "tolerance", "got", "delta",
                                          "status"]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(bad):
        print(f"\n{len(bad)} reported number(s) regressed or are missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
