"""The exact reproduction gate: a finished run's numbers and tables against committed golden files.

Pinned kernels (``determinism.cpu_isa: avx2``) make a config's numbers identical on every x86-64 machine
with AVX2, so a committed copy of one run's outputs can be compared exactly: any difference, in either
direction, is a change of behaviour, and the commit that intends it regenerates the golden files and shows
the new numbers in its diff.

A golden folder (``results/reference/<name>/``) holds

* ``cells.csv``: ``dataset, category, method, seed, metric, value``, every number of every cell's
  ``metrics.json`` (the pooled metrics, ``defect_types.<type>.<metric>``, ``defect_kinds.<kind>.<metric>``,
  extras such as ``best_on_test_image_auroc``, the test counts), ``value`` printed with ``DIGITS``
  decimals: that is the stored precision the comparison uses;
* ``tables/``: the rendered tables (``results/tables/*``: CSV, Markdown, LaTeX, significance), compared
  character for character;
* ``manifest.json``: the config files the run used (relative to the repository), each cell's config hash,
  and the kernels and commit it was made with.

The expected cells come from the config (``expected_cells``: every dataset x category x method x seed the
workflow runs), never from a count: a cell the config asks for but the golden files lack, or the reverse,
is a difference too.  Timings (``fit_seconds``, ``predict_seconds``) and provenance strings are not
compared.

    python -m adbench.operations.golden check --results build/ci/results --reference results/reference/ci --config config/ci.yaml
    python -m adbench.operations.golden write --results build/ci/results --reference results/reference/ci --config config/ci.yaml
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from adbench import ROOT
from adbench.methods.runs import config_hash, load_config, method_seeds, run_config, run_folder

DIGITS = 6  # decimals of cells.csv: far above what the tables print, far below float noise
NOT_COMPARED = {"fit_seconds", "predict_seconds", "seed"}  # timings vary; the seed is part of the cell's key
CELL_KEYS = ("dataset", "category", "method", "seed")


def expected_cells(config: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """``(dataset, category, method, seed)`` of every run the workflow makes for ``config``."""
    return [(ds, c, m, s) for ds in config["run"]["datasets"] for c in config["datasets"][ds]["categories"]
            for m in config["run"]["methods"] for s in method_seeds(config, m)]


def cell_hashes(config: dict[str, Any]) -> dict[str, str]:
    """``{"<dataset>/<category>/<method>/seed<k>": config hash}`` of every expected cell (the hash each
    cell's ``metrics.json`` records; method params resolved against their defaults, as the workflow does)."""
    from adbench.methods.registry import cell_params

    params = {(m, c): cell_params(m, config["methods"][m], c)
              for ds, c, m, _ in expected_cells(config)}
    return {cell_key(*cell): config_hash(run_config(config, cell[0], cell[2], cell[3], params[cell[2], cell[1]]))
            for cell in expected_cells(config)}


def cell_key(dataset: str, category: str, method: str, seed: int) -> str:
    return f"{dataset}/{category}/{method}/seed{seed}"


def flatten(metrics: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The numbers of a ``metrics.json`` as ``(dotted name, value)``, nested mappings flattened, strings,
    booleans, timings and the seed left out."""
    for key in sorted(metrics):
        value, name = metrics[key], f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in NOT_COMPARED:
            yield name, float(value)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.{DIGITS}f}"


def cell_rows(results: Path, cells: list[tuple[str, str, str, int]]) -> tuple[dict[tuple, str], list[str]]:
    """``({(dataset, category, method, seed, metric): value text}, missing metrics.json paths)``."""
    rows, missing = {}, []
    for cell in cells:
        path = Path(run_folder(results, *cell)) / "metrics.json"
        if not path.exists():
            missing.append(str(path))
            continue
        for name, value in flatten(json.loads(path.read_text())):
            rows[(*cell, name)] = _fmt(value)
    return rows, missing


def read_cells(path: Path) -> dict[tuple, str]:
    with open(path, newline="") as handle:
        return {(r["dataset"], r["category"], r["method"], int(r["seed"]), r["metric"]): r["value"]
                for r in csv.DictReader(handle)}


def _cells_csv(rows: dict[tuple, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CELL_KEYS, "metric", "value"])
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        writer.writerow([*key, rows[key]])
    return out.getvalue()


def _tables(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def _relative(path: Path, root: Path = ROOT) -> str:
    path, root = Path(path).resolve(), Path(root).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def overlays(config_files: list[Path], root: Path = ROOT) -> list[str]:
    """The config files laid over ``config/config.yaml``, relative to ``root`` where they are inside it
    (Snakemake lists the command line's ``--configfile`` before the Snakefile's own ``configfile:``)."""
    bases = {(Path(r) / "config" / "config.yaml").resolve() for r in (ROOT, root)}
    return [_relative(f, root) for f in config_files if Path(f).resolve() not in bases]


def write(results: Path, reference: Path, config_files: list[Path]) -> dict[str, Any]:
    """Make ``reference`` the golden copy of the finished run in ``results`` (made with ``config_files``:
    ``config/config.yaml`` and the files laid over it).

    Raises ``FileNotFoundError`` naming the missing ``metrics.json`` files when the run is incomplete.
    """
    config = load_config(*config_files)
    cells = expected_cells(config)
    rows, missing = cell_rows(results, cells)
    if missing:
        raise FileNotFoundError(f"{len(missing)} run(s) of the config are not finished, e.g. {missing[0]}: "
                                "run `snakemake all_tables` with the same config first")
    first = json.loads((Path(run_folder(results, *cells[0])) / "metrics.json").read_text())
    if reference.exists():
        shutil.rmtree(reference)
    (reference / "tables").mkdir(parents=True)
    (reference / "cells.csv").write_text(_cells_csv(rows))
    for name, text in _tables(Path(results) / "tables").items():
        (reference / "tables" / name).write_text(text)
    manifest = {"config_files": overlays(config_files), "cells": cell_hashes(config),
                "cpu_isa": first.get("cpu_isa"), "cpu_capability": first.get("cpu_capability"),
                "git_commit": first.get("git_commit"), "digits": DIGITS}
    (reference / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


@dataclass
class Comparison:
    """What differs between a run and its golden files (every list empty: reproduced exactly)."""

    cells: int = 0
    numbers: int = 0
    tables: int = 0
    moved: list[tuple[str, str, str, str]] = field(default_factory=list)  # (cell, metric, golden, got)
    missing_cells: list[str] = field(default_factory=list)  # the config expects them, the run lacks them
    unexpected_cells: list[str] = field(default_factory=list)  # golden or config have them, not both
    changed_config: list[str] = field(default_factory=list)  # cells whose config hash is not the golden one
    changed_tables: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.moved or self.missing_cells or self.unexpected_cells or self.changed_config
                    or self.changed_tables)

    def report(self, limit: int = 40) -> str:
        """A few lines a newcomer can act on."""
        if self.exact:
            return (f"reproduced exactly: {self.numbers} numbers of {self.cells} cells and {self.tables} "
                    "table files equal the committed reference")
        lines = []
        for title, items in (("missing cells (the config asks for them, the run has no metrics.json)",
                              self.missing_cells),
                             ("cells in only one of the config and the golden files", self.unexpected_cells),
                             ("cells made with another config than the golden files", self.changed_config),
                             ("table files that differ", self.changed_tables)):
            if items:
                lines.append(f"{title} ({len(items)}): " + ", ".join(items[:limit])
                             + (" ..." if len(items) > limit else ""))
        if self.moved:
            lines.append(f"moved numbers ({len(self.moved)}; cell, metric: golden -> this run):")
            lines += [f"  {c} {m}: {g} -> {v}" for c, m, g, v in self.moved[:limit]]
            if len(self.moved) > limit:
                lines.append(f"  ... and {len(self.moved) - limit} more")
        return "\n".join(lines)


def compare(results: Path, reference: Path, config: dict[str, Any]) -> Comparison:
    """Compare the run in ``results`` (made with the merged ``config``) with the golden folder ``reference``."""
    cells = expected_cells(config)
    manifest = json.loads((reference / "manifest.json").read_text())
    golden = read_cells(reference / "cells.csv")
    rows, missing = cell_rows(results, cells)
    out = Comparison(cells=len(cells), numbers=len(rows), missing_cells=missing)
    expected = {cell_key(*c) for c in cells}
    out.unexpected_cells = sorted(expected ^ set(manifest["cells"]))
    hashes = cell_hashes(config)
    out.changed_config = sorted(k for k in expected & set(manifest["cells"]) if hashes[k] != manifest["cells"][k])
    present = {k[:4] for k in rows}
    for key in sorted(set(golden) | set(rows), key=str):
        if key[:4] not in present:  # a missing cell is reported once, above
            continue
        want, got = golden.get(key, "absent"), rows.get(key, "absent")
        if want != got:
            out.moved.append((cell_key(*key[:4]), key[4], want, got))
    want_tables, got_tables = _tables(reference / "tables"), _tables(Path(results) / "tables")
    out.tables = len(want_tables)
    out.changed_tables = sorted(n for n in set(want_tables) | set(got_tables)
                                if want_tables.get(n) != got_tables.get(n))
    return out


def reference_for(config_files: list[Path], root: Path = ROOT) -> Path | None:
    """The committed golden folder (``<root>/results/reference/*/``) made with the same config files,
    named relative to ``root``, as a run of ``config_files``; ``None`` if there is none."""
    return reference_named(overlays(config_files, root), root)


def reference_named(names: list[str], root: Path = ROOT) -> Path | None:
    """The committed golden folder whose run laid the config files ``names`` (relative to ``root``) over
    ``config/config.yaml``; ``None`` if there is none."""
    for manifest in sorted((Path(root) / "results" / "reference").glob("*/manifest.json")):
        if json.loads(manifest.read_text())["config_files"] == list(names):
            return manifest.parent
    return None


def folder_digest(folder: Path | None) -> str:
    """SHA-256 over a golden folder's file names and contents ("" for none): a rule param that changes
    exactly when the committed golden files do, wherever the repository lies."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")) if folder else []:
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest() if folder else ""


def table2_means(results: Path) -> dict[str, float]:
    """``{method: mean image AUROC}`` from the run's ``tables/table2.csv`` (its ``mean`` row)."""
    with open(Path(results) / "tables" / "table2.csv", newline="") as handle:
        mean = next(r for r in csv.DictReader(handle) if r[next(iter(r))] == "mean")
    return {k: float(v) for k, v in mean.items() if ":" not in k and k != next(iter(mean)) and v not in ("", "-")}


def summary(results: Path, config: dict[str, Any], overlay_names: list[str], root: Path = ROOT) -> str:
    """What ``snakemake all_tables`` prints at its end (``results/reproduction.md``): Table 2's means,
    whether the run reproduced the committed golden files of its config exactly (or which cells moved),
    and where the tables, the report and the MLflow store are.  ``overlay_names``: the config files laid
    over ``config/config.yaml`` (``overlays``), relative to the repository ``root``."""
    means = table2_means(results)
    lines = ["# Reproduction summary", "",
             "Table 2, mean image AUROC over the categories: "
             + ", ".join(f"{m} {v:.3f}" for m, v in means.items()), ""]
    reference = reference_named(overlay_names, root)
    if reference is None:
        lines.append("No committed reference for this config (config/config.yaml + "
                     + (", ".join(overlay_names) or "nothing") + "): nothing to compare with.  "
                     "`python -m adbench.operations.golden write` makes one.")
    else:
        result = compare(results, reference, config)
        lines.append(f"Against {_relative(reference, root)}: {result.report()}")
        if not result.exact:
            lines.append("If the change is intended, regenerate the reference (README: \"The CI gate\") and "
                         "commit it with the reason.")
    lines += ["", f"Tables: {Path(results) / 'tables'}/ (CSV, Markdown, LaTeX)",
              f"Report: {Path(results) / 'report.html'} (open it in a browser)"]
    if config["mlflow"].get("enabled", True):
        uri = config["mlflow"]["tracking_uri"]
        lines.append(f"MLflow: {uri} (browse: mlflow ui --backend-store-uri {uri})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("check", "write"), help="compare with the golden files, or rewrite them")
    p.add_argument("--results", type=Path, required=True, help="the finished run's results folder")
    p.add_argument("--reference", type=Path, required=True, help="the golden folder, e.g. results/reference/ci")
    p.add_argument("--config", type=Path, nargs="*", default=[],
                   help="the config files the run was made with, after config/config.yaml (none: the default)")
    a = p.parse_args(argv)
    files = [ROOT / "config" / "config.yaml", *a.config]
    if a.action == "write":
        manifest = write(a.results, a.reference, files)
        print(f"wrote {a.reference}: {len(manifest['cells'])} cells")
        return 0
    result = compare(a.results, a.reference, load_config(*files))
    print(result.report())
    if not result.exact:
        print(f"\nnot reproduced: if the change is intended, regenerate {a.reference} (make reference) and "
              "commit it with the reason", file=sys.stderr)
    return 0 if result.exact else 1


if __name__ == "__main__":
    sys.exit(main())
