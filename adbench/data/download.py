"""Fetching, verifying and unpacking dataset archives.

``download`` streams a URL to ``dest.with_suffix('.part')`` (resuming with an HTTP Range request where the
server allows), checks its SHA-256 and renames it into place; ``extract`` unpacks tar / zip archives into a
temporary folder beside the target and renames it, refusing members that would land outside; ``prepare_dataset``
chains the two and leaves ``root/<category>/...`` plus a ``root/.complete`` JSON record.  Nothing half-done ever sits at
``dest`` or ``root``: a killed job leaves at most a ``.part`` file or a hidden staging folder.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from adbench.data.datasets import DatasetError, list_categories, list_samples

CHUNK = 1 << 20  # bytes per read
TIMEOUT = 60.0  # seconds of socket inactivity before giving up
_JUNK = {"__MACOSX"}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


class DownloadError(Exception):
    """A download, checksum, extraction or layout check failed; the message names the URL or file."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open_url(url: str, start: int):
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and start:  # our .part is as long as the file or longer: start over
            return None
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"download of {url} failed: {exc}") from exc


def _range_start(resp) -> int | None:
    """First byte of a 206 answer, from ``Content-Range: bytes <first>-<last>/<total>``."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` is kept when it matches ``sha256`` (or when no checksum is given).  Bytes go to
    ``dest.with_suffix('.part')``; a leftover ``.part`` is resumed with ``Range: bytes=<size>-`` and restarted
    when the server answers with the whole file.  On a checksum mismatch the file is deleted and
    :class:`DownloadError` names the URL, the expected and the actual digest.
    """
    dest = Path(dest)
    want = sha256.strip().lower() if sha256 else None
    if dest.is_file() and (want is None or sha256_file(dest) == want):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".part")
    start = part.stat().st_size if part.is_file() else 0
    resp = _open_url(url, start)
    if resp is None:
        start, resp = 0, _open_url(url, 0)
    if start and resp.status != 206:  # server ignored the Range header and sends the whole file
        start = 0
    elif start and _range_start(resp) != start:  # garbled partial answer: ask again for everything
        resp.close()
        start, resp = 0, _open_url(url, 0)
    with resp:
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        got = start
        try:
            with open(part, "ab" if start else "wb") as f, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, disable=not progress, leave=False) as bar:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:  # the .part stays for the next attempt to resume
            raise DownloadError(f"download of {url} interrupted after {got} bytes: {exc}") from exc
    if total is not None and got != total:
        raise DownloadError(f"download of {url} is truncated: got {got} of {total} bytes; run again to resume")
    if want is not None:
        actual = sha256_file(part)
        if actual != want:
            part.unlink()
            raise DownloadError(f"sha256 mismatch for {url}: expected {want}, got {actual}; "
                                f"the file was deleted; check the URL and checksum in config/config.yaml")
    os.replace(part, dest)
    return dest


def _inside(base: str, path: str) -> bool:
    path = os.path.normpath(path)
    return path == base or path.startswith(base + os.sep)


def _check_member(m: tarfile.TarInfo, base: str, archive: Path) -> None:
    where = os.path.join(base, m.name)
    bad = None
    if os.path.isabs(m.name) or not _inside(base, where):
        bad = "its path leaves the target folder"
    elif m.issym() and not _inside(base, os.path.join(os.path.dirname(where), m.linkname)):
        bad = f"it is a symlink to {m.linkname!r} outside the target folder"
    elif m.islnk() and not _inside(base, os.path.join(base, m.linkname)):
        bad = f"it is a hard link to {m.linkname!r} outside the target folder"
    elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        bad = "it is a device or fifo"
    if bad:
        raise DownloadError(f"refusing to extract {archive}: member {m.name!r} is unsafe ({bad})")


def _check_zip(zf: zipfile.ZipFile, base: str, archive: Path) -> None:
    for name in zf.namelist():
        if os.path.isabs(name) or name.startswith(("/", "\\")) or ":" in name.split("/")[0] \
                or not _inside(base, os.path.join(base, name.replace("\\", "/"))):
            raise DownloadError(f"refusing to extract {archive}: member {name!r} leaves the target folder")


def extract(archive: Path, target: Path) -> None:
    """Unpack a .tar / .tar.gz / .tgz / .tar.xz / .tar.bz2 / .zip archive so that ``target`` holds its contents.

    The archive is unpacked into a hidden temporary folder beside ``target`` and renamed in one step
    (an existing ``target`` is replaced).  A member with an absolute path, ``..`` components or a link
    pointing outside is refused with :class:`DownloadError`; the partial folder is deleted, ``target`` untouched.
    """
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    base = os.path.normpath(str(tmp.resolve()))
    try:
        name = archive.name.lower()
        is_tar = name.endswith(_TAR_SUFFIXES)
        if not is_tar and (name.endswith(".zip") or zipfile.is_zipfile(archive)):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, base, archive)
                zf.extractall(base)
        elif is_tar or tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:  # one streaming pass: xz archives are not seekable
                for member in tar:
                    _check_member(member, base, archive)
                    tar.extract(member, base, filter="data")
        else:
            raise DownloadError(f"cannot extract {archive}: not a tar or zip archive (corrupt download? "
                                f"delete it and run again)")
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DownloadError(f"cannot extract {archive}: {exc}; delete it and download again") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _dataset_top(folder: Path) -> Path | None:
    """The folder whose children are the categories: descend through single wrapper folders."""
    while True:
        dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in _JUNK]
        if any((d / "train").is_dir() for d in dirs):
            return folder
        if len(dirs) != 1:
            return None
        folder = dirs[0]


def _read_complete(root: Path) -> dict | None:
    try:
        return json.loads((root / ".complete").read_text())
    except (OSError, ValueError):
        return None


def prepare_dataset(kind: str, root: Path, url: str, sha256: str | None, archive_dir: Path,
                    categories: list[str] | None = None, name: str | None = None) -> Path:
    """Download and unpack a dataset so that ``root/<category>/...`` holds it; return ``root``.

    The archive is kept in ``archive_dir``.  Each requested category (default: all found) is checked with
    :func:`adbench.data.datasets.list_samples` on both splits before ``root`` appears; ``root/.complete`` records
    ``kind``, ``url``, ``sha256`` (the archive's) and per-category counts.  A ``root`` already completed from
    the same URL and holding the categories is returned as is.  ``name`` is the dataset's key in the
    config, for the messages.
    """
    root, archive_dir = Path(root), Path(archive_dir)
    sha256 = sha256.strip().lower() if sha256 else None
    done = _read_complete(root)
    if done and done.get("url") == url and (sha256 is None or done.get("sha256") == sha256) \
            and all(c in done.get("categories", {}) for c in categories or []):
        return root
    if root.exists() and any(root.iterdir()):
        raise DownloadError(f"{root} exists but is not a completed download of {url}; "
                            f"delete it (or choose another datasets.{name or '<name>'}.root) and run again")
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or f"{kind}.archive"
    archive = download(url, archive_dir / name, sha256)
    digest = sha256 or sha256_file(archive)

    staging = root.with_name(f".{root.name}.staging-{os.getpid()}")
    try:
        extract(archive, staging)
        top = _dataset_top(staging)
        if top is None:
            raise DownloadError(f"archive {archive} (from {url}) holds no <category>/train folders; "
                                f"is it the right {kind} archive?")
        try:
            cats = list(categories) if categories else list_categories(kind, top)
            counts = {}
            for cat in cats:
                train, test = (list_samples(kind, top, cat, s) for s in ("train", "test"))
                counts[cat] = {"train": len(train), "test": len(test),
                               "test_anomalous": sum(s.label for s in test),
                               "files": sum(1 for p in (top / cat).rglob("*") if p.is_file())}
        except DatasetError as exc:
            raise DownloadError(f"archive {archive} (from {url}) is not a usable {kind} dataset: {exc}") from exc
        record = {"kind": kind, "url": url, "sha256": digest, "archive": archive.name, "categories": counts}
        (top / ".complete").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(top, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
