"""adbench.reporting.report: the static HTML report, checked as markup and as rendered by headless Chromium."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import browser
from adbench.reporting.report import Figure, Highlight, Section, Table, build_report

RED = (220, 30, 30)
HOSTILE = 'AUROC <script>alert("x")</script> & `code`'


class _Cells(HTMLParser):
    """Tables of a report by data-table name -> body rows -> [(class, text)] (row label first, class None);
    plus every src/href attribute and every tag name seen."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[tuple[str | None, str]]]] = {}
        self.links: list[str] = []
        self.tags: list[str] = []
        self._table = self._cell = None
        self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "table":
            self._table = self.tables.setdefault(attrs["data-table"], [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._table.append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = [attrs.get("class"), ""]

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def _png(path: Path, size: tuple[int, int], colour=RED) -> Path:
    """A PNG with a flat ``colour`` patch on white, so a screenshot can be searched for it."""
    img = np.full((size[1], size[0], 3), 255, np.uint8)
    img[4:-4, 4:-4] = colour
    Image.fromarray(img).save(path)
    return path


def _frame() -> pd.DataFrame:
    """Categories x methods with a tie (b: x == y after rounding), a missing cell and a text column."""
    return pd.DataFrame({"x": [0.9, 0.7001, 0.5, 0.8], "y": [0.8, 0.7004, np.nan, 0.75], "z": [0.85, 0.6, 0.55, 0.9],
                         "note": ["ok", "<b>bold?</b>", "ok", "mean"]},
                        index=pd.Index(["01", "b", "c", "mean"], name="category"))


def _ranks(values: pd.DataFrame, axis: int, ascending: bool) -> pd.DataFrame:
    """1 for best, 2 for second (dense over displayed values), computed by pandas."""
    return values.round(3).rank(axis=axis, method="dense", ascending=ascending)


def _report(tmp_path: Path, name: str = "report.html", caption: str = HOSTILE) -> tuple[Path, dict]:
    _frame().to_csv(tmp_path / "t2.csv")
    pd.DataFrame({"ablation": ["full", "no prior"], "mvtec": [0.97, 0.95], "btad": [0.93, 0.94]}).to_csv(
        tmp_path / "t4.csv", index=False)
    sections = [
        Section("Table 2 <per category>", "Image AUROC, mean over seeds.\n\nSecond `paragraph` & more.", [
            Table("table2", tmp_path / "t2.csv", caption, Highlight(("x", "y", "z"))),
            Figure(_png(tmp_path / "a.png", (320, 160)), "samples <grid> \"one\""),
        ]),
        Section("Ablations", "", [
            Table("table4", tmp_path / "t4.csv", "Table 4", Highlight(("mvtec", "btad"), per="column")),
            Figure(_png(tmp_path / "b.png", (200, 100), (30, 30, 220)), "curves"),
        ]),
    ]
    out = tmp_path / name
    build_report(sections, out, "FOD <report>", {"git commit": "abc123", "config hash": "h<1>"})
    return out, {"table2": (4, 5), "table4": (2, 3), "images": [(320, 160), (200, 100)]}


def test_highlight_marks_best_and_second_like_an_independent_ranking(tmp_path):
    df = _frame()
    df.to_csv(tmp_path / "t.csv")
    sections = [Section("s", "", [
        Table("per row", tmp_path / "t.csv", "c", Highlight(("x", "y", "z"))),
        Table("per column, lower better", tmp_path / "t.csv", "c",
              Highlight(("x", "y"), rows=("01", "b", "c"), per="column", higher_is_better=False)),
    ])]
    build_report(sections, tmp_path / "r.html", "t", {})
    tables = _Cells((tmp_path / "r.html").read_text()).tables
    expected = {"per row": _ranks(df[["x", "y", "z"]], axis=1, ascending=False),
                "per column, lower better": _ranks(df.loc[["01", "b", "c"], ["x", "y"]], axis=0, ascending=True)}
    for name, ranks in expected.items():
        rows = {cells[0][1]: cells[1:] for cells in tables[name]}
        assert list(rows) == ["01", "b", "c", "mean"]  # labels as-is: "01" is not a number here
        for label, cells in rows.items():
            for col, (cls, _text) in zip(df.columns, cells):
                rank = ranks.loc[label, col] if label in ranks.index and col in ranks.columns else np.nan
                want = {1.0: "best", 2.0: "second"}.get(rank)
                assert cls == want, (name, label, col)
    per_row = {cells[0][1]: [text for _, text in cells[1:]] for cells in tables["per row"]}
    assert per_row["b"] == ["0.700", "0.700", "0.600", "<b>bold?</b>"]  # a tie as printed: both bold
    assert per_row["c"][1] == "-"  # NaN prints as '-' and does not compete


def test_report_is_self_contained_escaped_and_deterministic(tmp_path):
    out, _ = _report(tmp_path)
    again, _ = _report(tmp_path, "again.html")
    text = out.read_text()
    assert out.read_bytes() == again.read_bytes()
    parsed = _Cells(text)
    assert "script" not in parsed.tags
    assert all(link.startswith(("data:image/png;base64,", "#section-")) for link in parsed.links)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; <code>code</code>" in text
    assert "<dt>config hash</dt><dd>h&lt;1&gt;</dd>" in text
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids)) and {"table-table2", "table-table4", "figure-1", "figure-2"} <= set(ids)
    # the embedded image is the file, byte for byte, with its caption as alt text
    data = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="samples &lt;grid&gt; &quot;one&quot;"', text)
    assert base64.b64decode(data.group(1)) == (tmp_path / "a.png").read_bytes()


def test_bad_inputs_are_named(tmp_path):
    good = _png(tmp_path / "ok.png", (16, 16))
    Image.open(good).convert("RGB").save(tmp_path / "photo.png", format="JPEG")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "t.csv").write_text("k,a\nr,0.5\n")

    def build(*items):
        build_report([Section("s", "", list(items))], tmp_path / "r.html", "t", {})

    with pytest.raises(FileNotFoundError, match="missing.csv"):
        build(Table("t", tmp_path / "missing.csv", "c"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        build(Figure(tmp_path / "missing.png", "c"))
    for bad in ("photo.png", "cut.png"):
        with pytest.raises(ValueError, match=f"{bad} is not a decodable PNG"):
            build(Figure(tmp_path / bad, "c"))
    with pytest.raises(ValueError, match=r"t\.csv: highlight columns \['b'\]"):
        build(Table("t", tmp_path / "t.csv", "c", Highlight(("a", "b"))))
    with pytest.raises(ValueError, match="distinct name"):
        build(Table("T 1", tmp_path / "t.csv", "c"), Table("t-1", tmp_path / "t.csv", "c"))
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def chromium():
    try:
        return browser.chromium()
    except browser.BrowserUnavailable as err:
        pytest.skip(f"no headless Chromium: {err}")


def test_report_renders_in_chromium(tmp_path, chromium):
    out, want = _report(tmp_path)
    seen = browser.check_report(out, ["table2", "table4"], tmp_path / "shot.png")
    assert [(i["naturalWidth"], i["naturalHeight"]) for i in seen["images"]] == want["images"]
    assert [i["alt"] for i in seen["images"]] == ['samples <grid> "one"', "curves"]
    tables = {t["name"]: t for t in seen["tables"]}
    assert (tables["table2"]["rows"], tables["table2"]["columns"]) == want["table2"]
    assert (tables["table4"]["rows"], tables["table4"]["columns"]) == want["table4"]
    assert tables["table2"]["caption"] == 'AUROC <script>alert("x")</script> & code'
    assert seen["scripts"] == 1  # only the probe: the hostile caption stayed text
    assert tables["table2"]["best"] == ["0.900", "0.700", "0.700", "0.550", "0.900"]
    assert tables["table4"]["best"] == ["0.970", "0.940"] and tables["table4"]["second"] == ["0.930", "0.950"]
    assert int(tables["table2"]["best_font_weight"]) >= 600
    # the figure is visible on the page: its red patch (312 x 152 px) shows up in the screenshot
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    red = (np.abs(shot - RED).max(axis=2) <= 8).sum()
    assert red >= 0.9 * 312 * 152


def test_broken_image_is_detected(tmp_path, chromium):
    out, _ = _report(tmp_path)
    text = out.read_text()
    corrupt = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
    first = text.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(text[:first] + corrupt + text[text.index('"', first):])
    seen = browser.rendered(broken)
    assert [i["naturalWidth"] for i in seen["images"]] == [0, 200]
    with pytest.raises(AssertionError) as err:
        browser.check_report(broken, ["table2", "table9"], tmp_path / "shot.png")
    assert "image 0 ('samples <grid> \"one\"') did not load" in str(err.value)
    assert "table 'table9' is missing" in str(err.value)
