"""Measure the reference values and tolerances of CI's AUROC gate (``results/reference/ci.csv``).

The CI configuration is run with several seeds under each CPU kernel setting (``determinism.cpu_isa``:
``avx2``, the pinned default, and ``native``, this host's own kernels).  For every cell (category,
method) and metric the reference row records

* ``value``: the mean over the seeds of the pinned runs;
* ``seed_sd``: their standard deviation (ddof 1);
* ``isa_spread``: the largest difference, over seeds, between the native and the pinned run;
* ``tolerance``: ``max(floor, 3 * seed_sd * sqrt(1 + 1/n), isa_spread)``, rounded up to 4 decimals.

CI runs one seed (``seed``); a reseeded but otherwise unchanged method lands within ``3 sd`` of the mean
(the ``sqrt(1 + 1/n)`` accounts for the mean itself being estimated from ``n`` seeds), so a drop beyond
the tolerance is a regression rather than a different draw.  Image AUROC over the CI config's 20 test
images varies a lot from seed to seed, so each method also gets an aggregate row (category ``all``,
metric ``mean_auroc``: the mean of its image and pixel AUROC over the categories), whose spread is
smaller; ``detects_chance`` says whether the method falling to chance (0.5) would fail the gate.  Refresh after an intended change of the
numbers with ``make reference`` (about 10 minutes here) and commit the new file.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from adbench.runs import run_folder

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("image_auroc", "pixel_auroc")
AGGREGATE = ("all", "mean_auroc")  # (category, metric) of a method's aggregate row
ISAS = ("avx2", "native")
FLOOR = 0.01


def run_ci_config(work: Path, config: Path, seeds: list[int], cpu_isa: str) -> Path:
    """``snakemake all_tables`` on ``config`` with ``seeds`` and ``cpu_isa`` in ``work``; returns ``work``."""
    work = work.resolve()  # Snakemake runs in ``work``: a relative path (the Makefile's) would resolve twice
    work.mkdir(parents=True, exist_ok=True)
    override = work / "override.yaml"
    # every method runs every seed (the config's run.one_seed would leave most cells with one)
    override.write_text(yaml.safe_dump({"run": {"seeds": seeds, "one_seed": []}, "determinism": {"cpu_isa": cpu_isa}}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2",
           "all_tables", "--configfile", str(config), str(override)]
    subprocess.run(cmd, check=True, cwd=work)
    return work


def collect(work: Path, config: dict, seeds: list[int]) -> pd.DataFrame:
    """One row per (dataset, category, method, seed) with the gate's metrics."""
    rows = []
    for ds in config["run"]["datasets"]:
        for cat in config["datasets"][ds]["categories"]:
            for method in config["run"]["methods"]:
                for seed in seeds:
                    metrics = json.loads((Path(run_folder(work / "results", ds, cat, method, seed))
                                          / "metrics.json").read_text())
                    rows.append({"dataset": ds, "category": cat, "method": method, "seed": seed,
                                 **{m: metrics[m] for m in METRICS}})
    return pd.DataFrame(rows)


def with_aggregates(per_seed: pd.DataFrame) -> pd.DataFrame:
    """``per_seed`` plus, per (dataset, method, seed), a row of category ``all`` whose ``mean_auroc`` is the
    mean of the image and pixel AUROC over the categories (``adbench.regression`` computes the same)."""
    agg = (per_seed.assign(**{AGGREGATE[1]: per_seed[list(METRICS)].mean(axis=1)})
           .groupby(["dataset", "method", "seed"], sort=False)[AGGREGATE[1]].mean().reset_index())
    return pd.concat([per_seed, agg.assign(category=AGGREGATE[0])], ignore_index=True)


def reference_table(pinned: pd.DataFrame, native: pd.DataFrame, ci_seed: int) -> pd.DataFrame:
    """The reference rows (see the module docstring) from per-seed metrics of both kernel settings."""
    keys = ["dataset", "category", "method"]
    pinned, native = with_aggregates(pinned), with_aggregates(native)
    both = pinned.merge(native, on=keys + ["seed"], suffixes=("", "_native"))
    rows = []
    for (ds, cat, method), group in both.groupby(keys, sort=False):
        for metric in (AGGREGATE[1],) if cat == AGGREGATE[0] else METRICS:
            values = group[metric].to_numpy()
            n = len(values)
            sd = float(values.std(ddof=1)) if n > 1 else 0.0
            spread = float((group[metric] - group[f"{metric}_native"]).abs().max())
            tol = max(FLOOR, 3 * sd * math.sqrt(1 + 1 / n), spread)
            value, tol = round(float(values.mean()), 4), math.ceil(round(tol * 1e4, 6)) / 1e4
            rows.append({"dataset": ds, "category": cat, "method": method, "seed": ci_seed, "metric": metric,
                         "value": value, "tolerance": tol, "seed_sd": round(sd, 4), "isa_spread": round(spread, 4),
                         "seeds": n, "detects_chance": value - tol > 0.5})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "config" / "ci.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--work", type=Path, required=True, help="scratch folder for the runs")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "ci.csv")
    p.add_argument("--collect-only", action="store_true", help="read the runs already in --work, run nothing")
    a = p.parse_args(argv)
    import snakemake.utils

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    snakemake.utils.update_config(config, yaml.safe_load(a.config.read_text()))
    per_isa = {isa: collect(a.work / isa if a.collect_only else run_ci_config(a.work / isa, a.config, a.seeds, isa),
                            config, a.seeds) for isa in ISAS}
    table = reference_table(per_isa["avx2"], per_isa["native"], ci_seed=a.seeds[0])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
