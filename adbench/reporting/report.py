"""A self-contained static HTML report: sections of CSV tables and PNG figures in one file.

The file has no external resources and no JavaScript: figures are embedded as base64 ``data:`` URIs, the
style sheet is inline.  The same inputs give the same bytes (nothing time-dependent is written unless the
caller puts it in ``provenance``).  All text is HTML-escaped; in intros and captions a blank line starts a
new paragraph and a `backtick` span is set as code.

Tables follow the LaTeX tables' convention: the best value of a group is bold (``<strong>``, cell class
``best``), the second best underlined (``<u>``, class ``second``); see :class:`Highlight`.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from adbench.methods.runs import atomic_path
from adbench.reporting.tables import best_two

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:.4em}
th,td{border-bottom:1px solid #ccc;padding:.25em .6em}
td{text-align:right;font-variant-numeric:tabular-nums}
tbody th{text-align:left;font-weight:normal}
thead th{border-bottom:2px solid #444}
figure{margin:1em 0}
img{max-width:100%;height:auto}
dl.provenance{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;font-size:.9em}
dl.provenance dt{font-weight:600}
dl.provenance dd{margin:0;font-family:monospace}
""".strip()


@dataclass(frozen=True)
class Highlight:
    """Which cells of a table compete for bold (best) and underline (second best).

    The candidates are the cells in ``columns`` (header names) and in ``rows`` (row labels, the CSV's first
    column; ``None``: every row).  ``per="row"`` compares the candidates within each row (e.g. methods on
    one category), ``per="column"`` within each column (e.g. categories of one method).  Values are compared
    as displayed (rounded to the table's ``digits``), so cells that print alike get the same emphasis; empty
    and non-numeric cells never compete.  ``higher_is_better=False`` makes the smallest value best.
    """

    columns: tuple[str, ...]
    rows: tuple[str, ...] | None = None
    per: str = "row"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.per not in ("row", "column"):
            raise ValueError(f"Highlight.per must be 'row' or 'column', not {self.per!r}")


@dataclass(frozen=True)
class Table:
    """A CSV file shown as an HTML table; ``name`` becomes its ``data-table`` attribute and (slugged) its id.

    The CSV's first column holds row labels (printed as-is); other cells that parse as floats are printed
    with ``digits`` decimals (integers as-is, empty or NaN cells as ``-``)."""

    name: str
    csv: Path
    caption: str
    highlight: Highlight | None = None
    digits: int = 3


@dataclass(frozen=True)
class Figure:
    """A PNG file embedded as a data URI; ``caption`` is also the image's alt text."""

    png: Path
    caption: str


@dataclass(frozen=True)
class Section:
    heading: str
    intro: str = ""
    items: list[Table | Figure] = field(default_factory=list)


def build_report(sections: list[Section], out: Path, title: str, provenance: dict) -> None:
    """Write the report to ``out`` (UTF-8 HTML).  ``provenance`` (e.g. git commit, config hash) is shown
    in insertion order as a definition list.  Every input file is checked before anything is written:
    a missing file raises ``FileNotFoundError``, a file that is not a decodable PNG or a malformed CSV
    ``ValueError``, each naming the file."""
    _check_unique([it.name for s in sections for it in s.items if isinstance(it, Table)])
    body = [f"<h1>{_inline(title)}</h1>", _provenance(provenance), _contents(sections)]
    n_figures = 0
    for i, section in enumerate(sections, 1):
        body.append(f'<section id="section-{i}">\n<h2>{_inline(section.heading)}</h2>')
        body.append(_paragraphs(section.intro))
        for item in section.items:
            if isinstance(item, Table):
                body.append(_table(item))
            else:
                n_figures += 1
                body.append(_figure(item, n_figures))
        body.append("</section>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(part for part in body if part) + "\n</body>\n</html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(page.encode("utf-8"))


def _check_unique(names: list[str]) -> None:
    slugs: dict[str, str] = {}
    for name in names:
        if _slug(name) in slugs:
            raise ValueError(f"table names {slugs[_slug(name)]!r} and {name!r} give the same id "
                             f"'table-{_slug(name)}': give every table a distinct name")
        slugs[_slug(name)] = name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _inline(text: str) -> str:
    """Escaped text with `backtick` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _paragraphs(text: str) -> str:
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return "\n".join(f"<p>{_inline(p)}</p>" for p in paras)


def _provenance(provenance: dict) -> str:
    if not provenance:
        return ""
    rows = "\n".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in provenance.items())
    return f'<dl class="provenance">\n{rows}\n</dl>'


def _contents(sections: list[Section]) -> str:
    links = "\n".join(f'<li><a href="#section-{i}">{_inline(s.heading)}</a></li>' for i, s in enumerate(sections, 1))
    return f"<nav>\n<ul>\n{links}\n</ul>\n</nav>" if sections else ""


def _require(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist: build it first (or fix the path given to build_report)")
    return path


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(_require(path, "table CSV"), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"table CSV {path} is empty: it needs a header row")
    header, body = rows[0], rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise ValueError(f"table CSV {path}: line(s) {bad} do not have the header's {len(header)} fields")
    return header, body


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _display(cell: str, digits: int) -> str:
    value = _number(cell)
    if value is None:
        return "-" if cell.strip().lower() in ("", "nan") else cell
    return cell.strip() if re.fullmatch(r"\s*[-+]?\d+\s*", cell) else f"{value:.{digits}f}"


def emphasis(header: list[str], body: list[list[str]], spec: Highlight, digits: int,
             source: Path | str = "table") -> dict[tuple[int, int], str]:
    """``{(row index, column index): "best" | "second"}`` over ``body`` (rows of cells, column 0 the row
    label) following ``spec``; indices count from the first body row and the label column."""
    missing = [c for c in spec.columns if c not in header[1:]]
    if missing:
        raise ValueError(f"{source}: highlight columns {missing} are not among its columns {header[1:]}")
    cols = [header.index(c) for c in spec.columns]
    rows = [i for i, r in enumerate(body) if spec.rows is None or r[0] in spec.rows]
    groups = [[(i, j) for j in cols] for i in rows] if spec.per == "row" else [[(i, j) for i in rows] for j in cols]
    marks: dict[tuple[int, int], str] = {}
    for group in groups:
        values = {ij: _number(body[ij[0]][ij[1]]) for ij in group}
        ranks = best_two({ij: v for ij, v in values.items() if v is not None}, digits, spec.higher_is_better)
        marks.update({ij: ("best", "second")[rank - 1] for ij, rank in ranks.items()})
    return marks


def _table(item: Table) -> str:
    header, body = _read_csv(item.csv)
    marks = emphasis(header, body, item.highlight, item.digits, item.csv) if item.highlight else {}
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header)
    lines = []
    for i, row in enumerate(body):
        cells = [f'<th scope="row">{html.escape(row[0])}</th>']
        for j, cell in enumerate(row[1:], 1):
            text = html.escape(_display(cell, item.digits))
            mark = marks.get((i, j))
            if mark == "best":
                text = f"<strong>{text}</strong>"
            elif mark == "second":
                text = f"<u>{text}</u>"
            cells.append(f'<td class="{mark}">{text}</td>' if mark else f"<td>{text}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    rows = "\n".join(lines)
    return (f'<table id="table-{_slug(item.name)}" data-table="{html.escape(item.name)}">\n'
            f"<caption>{_inline(item.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{rows}\n</tbody>\n</table>")


def _figure(item: Figure, number: int) -> str:
    path = _require(item.png, "figure PNG")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ValueError(f"it is {im.format}")
            im.load()
            width, height = im.size
    except Exception as err:  # PIL raises several types for truncated or corrupt files
        raise ValueError(f"figure {path} is not a decodable PNG ({err}): save the figure as PNG again") from err
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="figure-{number}">\n<img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(item.caption)}" width="{width}" height="{height}">\n'
            f"<figcaption>{_inline(item.caption)}</figcaption>\n</figure>")


def _caption_of(markdown: Path) -> str:
    """A table's caption: the first paragraph of its Markdown file (``adbench.reporting.tables.to_markdown``)."""
    return _require(Path(markdown), "table").read_text().split("\n\n", 1)[0].strip()


def table_highlight(csv_path: Path, per: str) -> Highlight:
    """The reproduced columns (those with a ``<col>:std`` beside them, ``adbench.reporting.tables.to_csv``) compete,
    in every row but the paper's published-mean rows, ``per`` row or column."""
    header, body = _read_csv(csv_path)
    ours = tuple(c for c in header[1:] if f"{c}:std" in header)
    rows = tuple(r[0] for r in body if not r[0].startswith("paper mean"))
    return Highlight(columns=ours, rows=rows, per=per)


def benchmark_report(tables: dict[str, tuple[Path, Path, str]], significance_md: Path | None,
                     figures: list[Path], out: Path, provenance: dict) -> None:
    """The workflow's report: ``tables`` maps a table's name to ``(csv, md, per)`` (``per``: the axis of its
    bold / underline, ``adbench.reporting.tables.Table.emphasis``), then the significance summary (``None``: the
    config has no tests), then ``figures`` (PNGs, captioned by file name)."""
    items = [Table(name, Path(csv_path), _caption_of(Path(md)), table_highlight(Path(csv_path), per))
             for name, (csv_path, md, per) in tables.items()]
    sections = [
        Section("Tables", "Reproduced cells: mean over seeds (`:std`, `:seeds` beside them); `paper:*` the "
                          "paper's value for the same cell, `diff:*` = ours - paper; `best_on_test:*` the "
                          "authors' best-epoch-on-test selection, never the headline.", items)]
    if significance_md is not None:
        sections.append(Section("Significance", _require(Path(significance_md), "significance summary").read_text()))
    sections.append(Section("Figures", "Each figure is also in results/figures as PDF.",
                            [Figure(Path(p), Path(p).stem.replace("_", " ")) for p in figures]))
    build_report(sections, Path(out), "FOD reproducibility suite: tables, tests and figures", provenance)
