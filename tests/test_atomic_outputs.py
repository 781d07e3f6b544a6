"""The workflow's outputs are written whole or not at all (``adbench.methods.runs.atomic_path``): a job
killed while writing a table, the significance tests, a figure, the report or a category summary leaves the previous file under the
output's name, never half of one, and no temporary file behind.

A kill is played by patching the call that writes the file: it writes the content, cuts the file it wrote
to half its size, then raises a ``BaseException`` (as a signal's handler would).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from matplotlib.figure import Figure

from adbench.methods.runs import atomic_path, write_atomic

matplotlib.use("Agg")


class Killed(BaseException):
    """Stands for a kill arriving while a file is written."""


def cut_and_kill(write, destination_of):
    """``write`` patched: the file ``destination_of(args)`` is written, cut to half its size, then Killed."""

    @functools.wraps(write)
    def patched(*args, **kwargs):
        write(*args, **kwargs)
        path = destination_of(args)
        os.truncate(path, os.path.getsize(path) // 2)
        raise Killed(path)

    return patched


def _table():
    from adbench.reporting.tables import Table

    values = pd.DataFrame({"m": [0.5, 0.75], "n": [0.25, 0.5]}, index=pd.Index(["a", "mean"], name="category"))
    nan = values * float("nan")
    return Table("t", "caption", values, list(values.columns), nan, nan)


def _write_table(out: Path) -> None:
    from adbench.reporting.tables import write_outputs

    write_outputs(_table(), out.with_suffix(""))


def _write_figure(out: Path) -> None:
    from adbench.reporting.figures import _save

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    _save(fig, out.with_suffix(""))


def _write_report(out: Path) -> None:
    from adbench.reporting.report import Section, build_report

    build_report([Section("results", "no items")], out, "report", {"commit": "abc"})


def _write_significance(out: Path) -> None:
    """write_significance on the committed CI reference's comparison rows (compare_runs' own output there)."""
    import adbench.reporting.significance as significance
    from adbench import ROOT

    rows = pd.read_csv(ROOT / "results" / "reference" / "ci" / "tables" / "significance.csv", keep_default_na=False,
                       na_values=[""])
    compare_runs, significance.compare_runs = significance.compare_runs, lambda *a, **k: rows
    try:
        significance.write_significance("results", "embedded", [], [], seeds_of={}, feature_tag="",
                                        csv_out=out.with_suffix(".csv"), md_out=out.with_suffix(".md"))
    finally:
        significance.compare_runs = compare_runs


def _write_summary(out: Path) -> None:
    from test_tracking import make_run

    from adbench.jobs import summarise_category

    folders = [out.parent / "embedded" / "tray" / m / "seed0" for m in ("patchcore", "fod")]
    if not folders[0].exists():  # the run folders, made once (before any patching)
        folders = [make_run(out.parent, "tray", m) for m in ("patchcore", "fod")]
    summarise_category([str(f / "metrics.json") for f in folders], str(out))


# (writer, the file it writes, the call that writes it, where that call's destination is among its arguments).
# The table's and the significance tests' csv are written by DataFrame.to_csv, their markdown by
# Path.write_text (the table's before its LaTeX).
CASES = {
    "table csv": (_write_table, "t.csv", (pd.DataFrame, "to_csv"), lambda a: a[1]),
    "table markdown": (_write_table, "t.md", (Path, "write_text"), lambda a: a[0]),
    "figure": (_write_figure, "f.png", (Figure, "savefig"), lambda a: a[1]),
    "html report": (_write_report, "report.html", (Path, "write_bytes"), lambda a: a[0]),
    "significance csv": (_write_significance, "significance.csv", (pd.DataFrame, "to_csv"), lambda a: a[1]),
    "significance markdown": (_write_significance, "significance.md", (Path, "write_text"), lambda a: a[0]),
    "category summary": (_write_summary, "summary.csv", (pd.DataFrame, "to_csv"), lambda a: a[1]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_kill_while_writing_leaves_the_previous_file_whole(case, tmp_path, monkeypatch):
    writer, name, (owner, call), destination_of = CASES[case]
    out = tmp_path / name
    writer(out)
    whole = out.read_bytes()
    assert len(whole) > 40  # something to cut in half
    out.write_bytes(b"the previous run's file")
    monkeypatch.setattr(owner, call, cut_and_kill(getattr(owner, call), destination_of))
    with pytest.raises(Killed):
        writer(out)
    assert out.read_bytes() == b"the previous run's file", f"{case}: a kill while writing left half a file"
    assert not list(tmp_path.glob("*.tmp")), f"{case}: a temporary file was left behind"
    monkeypatch.undo()
    writer(out)
    assert out.read_bytes() == whole


def test_atomic_path_renames_only_a_finished_file(tmp_path):
    target = tmp_path / "out.txt"
    write_atomic(target, "first")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "second"
