"""Headless Chromium, driven from its command line only, to check an HTML report as a reader would see it.

``check_report`` screenshots the page and, in a copy with a small script appended, reads back what the
browser made of it after the ``load`` event: every image's decoded size and every ``data-table``'s rows.
Chromium is the Debian package ``chromium``; :func:`chromium` installs it when missing and the process
runs as root, and raises :class:`BrowserUnavailable` (with the reason) when it cannot be had.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

TIMEOUT_S = 60  # per chromium call
INSTALL_TIMEOUT_S = 600
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
          "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio"]
_CHECK_ID = "adbench-browser-check"
# Appended to a copy of the page: after `load`, the DOM gets a <pre> with JSON of what was rendered.
_PROBE = """<script>
window.addEventListener("load", function () {
  var out = {images: [], tables: [], scripts: document.scripts.length};
  document.querySelectorAll("img").forEach(function (img) {
    out.images.push({alt: img.alt, naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight});
  });
  document.querySelectorAll("table").forEach(function (t) {
    var cells = function (sel) { return Array.from(t.querySelectorAll(sel)).map(function (c) { return c.textContent; }); };
    var strong = t.querySelector("td.best strong");
    out.tables.push({name: t.dataset.table || null, id: t.id,
                     rows: t.tBodies.length ? t.tBodies[0].rows.length : 0,
                     columns: t.tHead ? t.tHead.rows[0].cells.length : 0,
                     caption: t.caption ? t.caption.textContent : null,
                     best: cells("td.best"), second: cells("td.second"),
                     best_font_weight: strong ? getComputedStyle(strong).fontWeight : null});
  });
  var pre = document.createElement("pre");
  pre.id = "%s";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
""" % _CHECK_ID


class BrowserUnavailable(RuntimeError):
    """No headless Chromium could be found or installed here."""


def chromium() -> str:
    """Path of the chromium executable, installing Debian's ``chromium`` first when it is missing and we are
    root (``apt-get update && apt-get install -y chromium``)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserUnavailable("chromium is not on PATH and cannot be installed here (not root, or no apt-get): "
                                 "install the Debian package `chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run("apt-get update -q && apt-get install -y -q chromium", shell=True, env=env,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BrowserUnavailable(f"installing chromium took over {INSTALL_TIMEOUT_S} s") from None
    found = shutil.which("chromium")
    if not found:
        raise BrowserUnavailable(f"`apt-get install chromium` failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    return found


def _run(args: list[str]) -> str:
    """Run chromium with ``args`` and a fresh profile; its stdout.  A call past ``TIMEOUT_S`` has its whole
    process group killed and raises ``TimeoutError``."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen([chromium(), *_FLAGS, f"--user-data-dir={profile}", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"chromium {' '.join(args)} ran past {TIMEOUT_S} s and was killed") from None
    if proc.returncode != 0:
        raise RuntimeError(f"chromium {' '.join(args)} failed (exit {proc.returncode}): {err[-1000:]}")
    return out


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1280, 2000)) -> Path:
    """Render ``page`` at ``size`` (width, height in CSS px) into ``png``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", Path(page).resolve().as_uri()])
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot {png} of {page}")
    return png


def rendered(page: Path) -> dict:
    """What the browser made of ``page`` after its ``load`` event: ``{"images": [{alt, naturalWidth,
    naturalHeight}], "tables": [{name, id, rows, columns, caption, best, second, best_font_weight}],
    "scripts": n}`` (``scripts`` counts the probe itself)."""
    text = Path(page).read_text(encoding="utf-8")
    at = text.rfind("</body>")
    probed = text[:at] + _PROBE + text[at:] if at >= 0 else text + _PROBE
    with tempfile.TemporaryDirectory(prefix="report-probe-") as tmp:
        copy = Path(tmp) / "probe.html"
        copy.write_text(probed, encoding="utf-8")
        dom = _run(["--virtual-time-budget=5000", "--dump-dom", copy.as_uri()])
    found = re.search(rf'<pre id="{_CHECK_ID}">(.*?)</pre>', dom, re.S)
    if not found:
        raise RuntimeError(f"the probe wrote nothing into the DOM of {page}: the load event never fired?")
    return json.loads(html.unescape(found.group(1)))


def blank(png: Path) -> bool:
    """Whether a screenshot is a single flat colour."""
    with Image.open(png) as im:
        return all(lo == hi for lo, hi in im.convert("RGB").getextrema())


def problems(seen: dict, expected_tables: list[str]) -> list[str]:
    """What is wrong with a :func:`rendered` result: images that did not decode, expected tables that are
    missing or have no rows."""
    issues = [f"image {i} ({img['alt']!r}) did not load (naturalWidth 0)"
              for i, img in enumerate(seen["images"]) if img["naturalWidth"] <= 0]
    tables = {t["name"]: t for t in seen["tables"]}
    issues += [f"table {name!r} is missing" for name in expected_tables if name not in tables]
    issues += [f"table {name!r} has no rows" for name in expected_tables if name in tables and tables[name]["rows"] == 0]
    return issues


def check_report(html_path: Path, expected_tables: list[str], screenshot_png: Path) -> dict:
    """Open a report in headless Chromium; raise ``AssertionError`` listing every problem (an image that did
    not decode, an expected table missing or empty, a blank or missing screenshot), else return the
    :func:`rendered` result with ``"screenshot": [width, height]`` added."""
    seen = rendered(html_path)
    shot = screenshot(html_path, screenshot_png)
    issues = problems(seen, expected_tables)
    with Image.open(shot) as im:
        im.load()
        seen["screenshot"] = list(im.size)
    if blank(shot):
        issues.append(f"screenshot {shot} is blank")
    if issues:
        raise AssertionError(f"report {html_path}:\n  " + "\n  ".join(issues))
    return seen
