"""The README's results section says only what the committed default tables say.

`results/reference/default/` holds the golden files of a fresh `make run` (`make reference-default`:
every number of every cell and every rendered table).  The README's section "Results on the embedded
default" quotes Table 2 and Table 4 and makes claims about them in prose; these tests fail when the README
drifts from those files, so a regenerated reference forces the README to be updated in the same commit.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from adbench.operations.golden import read_cells
from adbench.methods.runs import load_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "results" / "reference" / "default"
SECTION = "## Results on the embedded default"


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end > 0 else None]


def _table_lines(name: str) -> list[str]:
    return [line for line in (DEFAULT / "tables" / name).read_text().splitlines() if line.startswith("|")]


@pytest.mark.parametrize("name", ["table2.md", "table4.md"])
def test_the_quoted_tables_are_the_committed_ones(name):
    lines = _table_lines(name)
    assert "\n".join(lines) in _section(), f"README's copy of {name} differs from results/reference/default/tables"


def _golden_numbers() -> list[float]:
    """Every number of the default reference: each cell's metrics and every value in its tables."""
    values = [float(v) for v in read_cells(DEFAULT / "cells.csv").values() if v != "nan"]
    for path in sorted((DEFAULT / "tables").iterdir()):
        values += [float(v) for v in re.findall(r"(?<![\w.])-?\d+\.\d+", path.read_text())]
    return values


def test_every_number_of_the_results_section_is_in_the_committed_default_reference():
    """Each decimal the section prints (0.797, 0.46, ...) is some reference number at that precision."""
    golden = _golden_numbers()
    missing = []
    for text in sorted(set(re.findall(r"(?<![\w.])0\.\d{2,4}(?!\d)", _section()))):
        places = len(text) - 2
        if not any(round(v, places) == float(text) for v in golden):
            missing.append(text)
    assert not missing, f"README numbers not in results/reference/default: {missing}"


def test_the_stated_lowest_local_defect_pixel_auroc_is_the_lowest():
    config = load_config()
    methods = config["tables"]["table2"]["methods"]
    local = {(k[2], k[1]): float(v) for k, v in read_cells(DEFAULT / "cells.csv").items()
             if k[4] == "defect_kinds.local.pixel_auroc" and k[2] in methods and k[3] == 0}
    (method, category), value = min(local.items(), key=lambda kv: kv[1])
    claim = re.search(r"lowest pixel AUROC on the local defects of any category is (0\.\d+) \((\w+), (\w+)\)",
                      _section())
    assert claim, "the README no longer states the lowest local-defect pixel AUROC"
    assert (claim.group(1), claim.group(2), claim.group(3)) == (f"{value:.2f}", method, category)


def test_the_stated_table2_means_are_the_committed_ones():
    """As the committed table2.md prints them (its CSV keeps 4 decimals, which would round 0.80652 via
    0.8065 to 0.806 where the table shows 0.807)."""
    header, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in _table_lines("table2.md")
                     if not line.startswith("|---")]
    mean = dict(zip(header, next(r for r in rows if r[0] == "**mean**")))
    shown = {m: re.search(r"\d\.\d+", v).group(0) for m, v in mean.items() if m != "category"}
    claim = re.search(r"Table 2 means \(image AUROC\): ([^.]+\.\d+(?:, [^,.]+\.\d+)*)", _section())
    assert claim, "the README no longer lists Table 2's means"
    stated = dict(item.rsplit(" ", 1) for item in claim.group(1).split(", "))
    assert stated == {m: shown[m] for m in stated}
    assert set(stated) == set(load_config()["tables"]["table2"]["methods"])
