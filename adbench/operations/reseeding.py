"""The reseeding check: does a method stay within its seed spread when only the seed changes?

Not the CI gate (that is the exact comparison with golden files, ``adbench.operations.golden``): this one asks a
statistical question.  ``measure`` runs the CI configuration with several seeds under each CPU kernel
setting (``determinism.cpu_isa``: ``avx2``, the pinned default, and optionally ``native``) and records,
for every cell (category, method) and metric,

* ``value``: the mean over the seeds of the pinned runs;
* ``seed_sd``: their standard deviation (ddof 1);
* ``isa_spread``: the largest difference, over seeds, between the native and the pinned run (0 when only
  the pinned kernels were measured);
* ``tolerance``: ``max(floor, 3 * seed_sd * sqrt(1 + 1/n), isa_spread)``, rounded up to 4 decimals.

``check`` compares a run of any one seed with it: a reseeded but otherwise unchanged method lands within
``3 sd`` of the mean (the ``sqrt(1 + 1/n)`` accounts for the mean itself being estimated from ``n``
seeds), so a number outside the tolerance, in either direction, says the method behaves differently from
the one measured, not that it drew another seed.  Image AUROC over the CI config's 20 test images varies
a lot from seed to seed, so each method also gets an aggregate row (category ``all``, metric
``mean_auroc``: the mean of its image and pixel AUROC over the categories), whose spread is smaller.

    make reseeding                                   # measure: results/reference/reseeding_ci.csv
    python -m adbench.operations.reseeding check --results <run>/results --seed 3
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

from adbench import ROOT
from adbench.methods.runs import load_config, run_folder

METRICS = ("image_auroc", "pixel_auroc")
AGGREGATE = ("all", "mean_auroc")  # (category, metric) of a method's aggregate row
ISAS = ("avx2", "native")
FLOOR = 0.01


def run_ci_config(work: Path, config: Path, seeds: list[int], cpu_isa: str, methods: list[str] | None = None) -> Path:
    """Snakemake on ``config`` with ``seeds`` and ``cpu_isa`` in ``work``; returns ``work``.

    The target is ``all_tables``, or, with ``methods``, only those methods' run folders (metrics.json)."""
    work = work.resolve()  # Snakemake runs in ``work``: a relative path (the Makefile's) would resolve twice
    work.mkdir(parents=True, exist_ok=True)
    override = work / "override.yaml"
    # every method runs every seed (the config's run.one_seed would leave most cells with one)
    override.write_text(yaml.safe_dump({"run": {"seeds": seeds, "one_seed": []}, "determinism": {"cpu_isa": cpu_isa}}))
    targets = ["all_tables"]
    if methods:
        cfg = load_config(config)
        targets = [str(Path(run_folder(Path("results"), ds, cat, m, seed)) / "metrics.json")
                   for ds in cfg["run"]["datasets"] for cat in cfg["datasets"][ds]["categories"]
                   for m in methods for seed in _seeds(cfg, m, seeds)]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", "2",
           *targets, "--configfile", str(config), str(override)]
    subprocess.run(cmd, check=True, cwd=work)
    return work


def _seeds(config: dict, method: str, seeds: list[int]) -> list[int]:
    """The seeds of ``method`` among ``seeds``: the first only for a ``deterministic`` method (the workflow
    fits it once; its seed spread is 0 by construction)."""
    from adbench.methods.registry import method_spec

    return seeds[:1] if method_spec(config["methods"][method]["impl"]).deterministic else list(seeds)


def collect(work: Path, config: dict, seeds: list[int], methods: list[str] | None = None) -> pd.DataFrame:
    """One row per (dataset, category, method, seed) with the gate's metrics (``methods``: default the
    config's ``run.methods``)."""
    rows = []
    for ds in config["run"]["datasets"]:
        for cat in config["datasets"][ds]["categories"]:
            for method in methods or config["run"]["methods"]:
                for seed in _seeds(config, method, seeds):
                    metrics = json.loads((Path(run_folder(work / "results", ds, cat, method, seed))
                                          / "metrics.json").read_text())
                    rows.append({"dataset": ds, "category": cat, "method": method, "seed": seed,
                                 **{m: metrics[m] for m in METRICS}})
    return pd.DataFrame(rows)


def with_aggregates(per_seed: pd.DataFrame) -> pd.DataFrame:
    """``per_seed`` plus, per (dataset, method, seed), a row of category ``all`` whose ``mean_auroc`` is the
    mean of the image and pixel AUROC over the categories (``compare`` computes the same)."""
    agg = (per_seed.assign(**{AGGREGATE[1]: per_seed[list(METRICS)].mean(axis=1)})
           .groupby(["dataset", "method", "seed"], sort=False)[AGGREGATE[1]].mean().reset_index())
    return pd.concat([per_seed, agg.assign(category=AGGREGATE[0])], ignore_index=True)


def reference_table(pinned: pd.DataFrame, native: pd.DataFrame | None, ci_seed: int) -> pd.DataFrame:
    """The reference rows (see the module docstring) from per-seed metrics of the pinned and (optionally)
    the native kernel settings."""
    keys = ["dataset", "category", "method"]
    pinned = with_aggregates(pinned)
    native = pinned if native is None else with_aggregates(native)
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
                         "seeds": n, "detects_chance": abs(value - 0.5) > tol})
    return pd.DataFrame(rows)


def merge_methods(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` with every row of ``new``'s methods taken from ``new``: a re-measured row keeps its place,
    a row that ``old`` lacks goes at the end, and an ``old`` row of those methods that ``new`` lacks is
    dropped.

    Raises:
        ValueError: the two tables were measured with different seed counts (their tolerances would not
            mean the same thing); rows of one seed are deterministic methods' and fit any count.
    """
    if set(old.seeds) - {1} and set(new.seeds) - {1} and set(old.seeds) - {1} != set(new.seeds) - {1}:
        raise ValueError(f"the existing reference has seeds={sorted(set(old.seeds))}, the new rows "
                         f"{sorted(set(new.seeds))}: re-measure with the same --seeds, or every method (no --methods)")
    key = ["dataset", "category", "method", "metric"]
    fresh = {tuple(r[k] for k in key): r for r in new.to_dict("records")}
    methods = set(new.method)
    rows = []
    for r in old.to_dict("records"):
        k = tuple(r[c] for c in key)
        if r["method"] not in methods:
            rows.append(r)
        elif k in fresh:
            rows.append(fresh.pop(k))
    return pd.DataFrame(rows + list(fresh.values()))[list(old.columns)]


def _metric(results: Path, dataset: str, category: str, method: str, seed: int, metric: str) -> float | None:
    path = Path(run_folder(results, dataset, category, method, seed)) / "metrics.json"
    return float(json.loads(path.read_text())[metric]) if path.exists() else None


def compare(reference: Path, results: Path, seed: int | None = None) -> pd.DataFrame:
    """The reference table with ``got``, ``delta`` and ``status`` (``within``, ``OUTSIDE``, ``MISSING``).

    ``seed``: the seed of the runs in ``results`` to check (default: each row's ``seed``, the first one
    measured).  A row of category ``all`` (metric ``mean_auroc``) is the mean of the method's image and
    pixel AUROC over the categories the reference lists for it (``with_aggregates``).
    """
    ref = pd.read_csv(reference, dtype={"category": str})
    got, status = [], []
    for row in ref.itertuples():
        run_seed = row.seed if seed is None else seed
        if (row.category, row.metric) == AGGREGATE:
            cats = ref.loc[(ref.dataset == row.dataset) & (ref.method == row.method) & (ref.category != AGGREGATE[0]),
                           "category"].unique()
            values = [_metric(results, row.dataset, c, row.method, run_seed, m) for c in cats for m in METRICS]
            value = None if None in values or not values else sum(values) / len(values)
        else:
            value = _metric(results, row.dataset, row.category, row.method, run_seed, row.metric)
        got.append(float("nan") if value is None else value)
        status.append("MISSING" if value is None else "within" if abs(value - row.value) <= row.tolerance
                      else "OUTSIDE")
    return ref.assign(got=got, delta=[g - v for g, v in zip(got, ref.value)], status=status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    m = sub.add_parser("measure", help="run the CI config with several seeds; write the spreads")
    m.add_argument("--config", type=Path, default=ROOT / "config" / "ci.yaml")
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    m.add_argument("--isas", nargs="+", choices=ISAS, default=["avx2"],
                   help="kernel settings to run (native too: isa_spread, on a machine whose own kernels differ)")
    m.add_argument("--work", type=Path, required=True, help="scratch folder for the runs")
    m.add_argument("--out", type=Path, default=ROOT / "results" / "reference" / "reseeding_ci.csv")
    m.add_argument("--collect-only", action="store_true", help="read the runs already in --work, run nothing")
    m.add_argument("--methods", nargs="+", help="re-measure only these methods (whose behaviour changed) and "
                                                "replace their rows in --out, keeping every other row")
    c = sub.add_parser("check", help="compare one seed's run with the measured spreads")
    c.add_argument("--reference", type=Path, default=ROOT / "results" / "reference" / "reseeding_ci.csv")
    c.add_argument("--results", type=Path, required=True, help="the run's results folder")
    c.add_argument("--seed", type=int, help="the seed the run used (default: the reference's first seed)")
    a = p.parse_args(argv)
    if a.action == "check":
        table = compare(a.reference, a.results, a.seed)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        bad = table[table.status != "within"]
        if len(bad):
            print(f"\n{len(bad)} number(s) outside their seed spread or missing", file=sys.stderr)
        return 1 if len(bad) else 0
    config = load_config(a.config)
    unknown = sorted(set(a.methods or []) - set(config["run"]["methods"]))
    if unknown:
        p.error(f"--methods {' '.join(unknown)}: not in run.methods of {a.config}")
    per_isa = {isa: collect(a.work / isa if a.collect_only
                            else run_ci_config(a.work / isa, a.config, a.seeds, isa, a.methods),
                            config, a.seeds, a.methods) for isa in a.isas}
    table = reference_table(per_isa["avx2"], per_isa.get("native"), ci_seed=a.seeds[0])
    if a.methods:
        table = merge_methods(pd.read_csv(a.out, dtype={"category": str}), table)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
