"""download / extract / prepare_dataset against a loopback HTTP server that serves archives built here."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from adbench.data.datasets import list_samples, load_image, load_mask
from adbench.data.download import DownloadError, download, extract, prepare_dataset


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.root``; honours ``Range: bytes=N-`` while ``server.ranges`` is true; logs requests."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        srv = self.server
        rng = self.headers.get("Range")
        path = (srv.root / unquote(urlparse(self.path).path).lstrip("/")).resolve()
        if srv.root not in path.parents or not path.is_file():
            srv.log.append((self.path, rng, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and srv.ranges else 0
        if start >= len(data) > 0:
            srv.log.append((self.path, rng, 416))
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 206 if rng and srv.ranges else 200
        srv.log.append((self.path, rng, status))
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch, request):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.root, srv.log, srv.ranges = (tmp_path / "www").resolve(), [], True
    srv.root.mkdir()
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop():
        srv.shutdown()
        srv.server_close()
        thread.join(5)

    request.addfinalizer(stop)
    return srv


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob(srv, name="blob.bin", n=200_000) -> bytes:
    data = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    (srv.root / name).write_bytes(data)
    return data


def test_download_verifies_sha(server, tmp_path):
    data = _blob(server)
    dest = download(server.url("blob.bin"), tmp_path / "dl" / "blob.bin", _sha(data), progress=False)
    assert dest.read_bytes() == data and not dest.with_suffix(".part").exists()


def test_sha_mismatch_leaves_nothing(server, tmp_path):
    data = _blob(server)
    dest, url = tmp_path / "blob.bin", server.url("blob.bin")
    with pytest.raises(DownloadError) as err:
        download(url, dest, "0" * 64, progress=False)
    msg = str(err.value)
    assert url in msg and "0" * 64 in msg and _sha(data) in msg
    assert not dest.exists() and not dest.with_suffix(".part").exists()


def test_resume_partial(server, tmp_path):
    data = _blob(server)
    dest = tmp_path / "blob.bin"
    dest.with_suffix(".part").write_bytes(data[:1234])
    download(server.url("blob.bin"), dest, _sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.log == [("/blob.bin", "bytes=1234-", 206)]


def test_restart_when_server_ignores_range(server, tmp_path):
    data = _blob(server)
    server.ranges = False
    dest = tmp_path / "blob.bin"
    dest.with_suffix(".part").write_bytes(b"garbage" * 100)
    download(server.url("blob.bin"), dest, _sha(data), progress=False)
    assert dest.read_bytes() == data and [s for *_, s in server.log] == [200]


def test_present_file_not_downloaded_again(server, tmp_path):
    data = _blob(server)
    dest = tmp_path / "blob.bin"
    for _ in range(2):
        download(server.url("blob.bin"), dest, _sha(data), progress=False)
    download(server.url("blob.bin"), dest, None, progress=False)
    assert len(server.log) == 1


def test_404_names_url(server, tmp_path):
    url = server.url("missing.tar.xz")
    with pytest.raises(DownloadError, match=re.escape(url)) as err:
        download(url, tmp_path / "missing.tar.xz", progress=False)
    assert "404" in str(err.value) and not (tmp_path / "missing.tar.xz").exists()


# --- archives ---------------------------------------------------------------------------------------

def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bmp(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="BMP")
    return buf.getvalue()


IMG = np.full((8, 8, 3), 90, np.uint8)
MASK = np.pad(np.full((2, 2), 255, np.uint8), 3)


def mvtec_files(prefix: str = "") -> dict[str, bytes]:
    files = {f"{prefix}license.txt": b"CC BY-NC-SA 4.0"}
    for cat in ("bottle", "cable"):
        files[f"{prefix}{cat}/train/good/000.png"] = files[f"{prefix}{cat}/train/good/001.png"] = _png(IMG)
        files[f"{prefix}{cat}/test/good/000.png"] = _png(IMG)
        files[f"{prefix}{cat}/test/crack/000.png"] = _png(IMG)
        files[f"{prefix}{cat}/ground_truth/crack/000_mask.png"] = _png(MASK)
    return files


def btad_files() -> dict[str, bytes]:
    top, files = "BTech_Dataset_transformed/", {}
    for cat, ext in (("01", ".bmp"), ("02", ".png"), ("03", ".bmp")):
        enc = _bmp if ext == ".bmp" else _png
        files[f"{top}{cat}/train/ok/0000{ext}"] = enc(IMG)
        files[f"{top}{cat}/test/ok/0000{ext}"] = enc(IMG)
        files[f"{top}{cat}/test/ko/0001{ext}"] = enc(IMG)
        files[f"{top}{cat}/ground_truth/ko/0001{'.bmp' if cat == '03' else '.png'}"] = enc(MASK)
    return files


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:xz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name,mode", [("a.tar", "w"), ("a.tar.gz", "w:gz"), ("a.tgz", "w:gz"),
                                       ("a.tar.bz2", "w:bz2"), ("a.tar.xz", "w:xz"), ("a.zip", None)])
def test_extract_formats(tmp_path, name, mode):
    files = {"top/x.txt": b"x", "top/sub/y.txt": b"yy"}
    archive = write_zip(tmp_path / name, files) if mode is None else write_tar(tmp_path / name, files, mode)
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out/top/sub/y.txt").read_bytes() == b"yy"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out"])  # no temp dir left


def _evil_symlink(folder: Path) -> Path:
    path = folder / "t.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("top/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(info)
    return path


@pytest.mark.parametrize("make", [
    lambda p: write_tar(p / "t.tar.xz", {"ok.txt": b"1", "../evil.txt": b"x"}),
    lambda p: write_tar(p / "t.tar.gz", {"/tmp/evil-abs.txt": b"x"}, "w:gz"),
    lambda p: write_zip(p / "t.zip", {"ok.txt": b"1", "a/../../evil.txt": b"x"}),
    _evil_symlink,
], ids=["dotdot-tar", "absolute-tar", "dotdot-zip", "symlink-out"])
def test_extract_refuses_escape(tmp_path, make):
    (tmp_path / "arc").mkdir()
    archive = make(tmp_path / "arc")
    target = tmp_path / "arc" / "out"
    with pytest.raises(DownloadError, match="refusing"):
        extract(archive, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()
    assert [p.name for p in (tmp_path / "arc").iterdir()] == [archive.name]


# --- prepare_dataset ------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "mvtec_anomaly_detection/"], ids=["flat", "wrapped"])
def test_prepare_mvtec(server, tmp_path, prefix):
    data = write_tar(server.root / "mvtec.tar.xz", mvtec_files(prefix)).read_bytes()
    root, url = tmp_path / "data" / "mvtec_ad", server.url("mvtec.tar.xz")
    out = prepare_dataset("mvtec_ad", root, url, _sha(data), tmp_path / "archives", ["bottle", "cable"])
    assert out == root and (tmp_path / "archives" / "mvtec.tar.xz").is_file()
    test = list_samples("mvtec_ad", root, "cable", "test")
    assert [(s.id, s.label) for s in test] == [("test/crack/000", 1), ("test/good/000", 0)]
    assert load_image(test[0].image, 4).shape == (3, 4, 4) and load_mask(test[0].mask, 8).sum() == 4
    record = json.loads((root / ".complete").read_text())
    assert record["url"] == url and record["sha256"] == _sha(data)
    assert record["categories"]["bottle"] == {"train": 2, "test": 2, "test_anomalous": 1, "files": 5}
    assert sorted(p.name for p in root.parent.iterdir()) == ["mvtec_ad"]  # no staging left
    prepare_dataset("mvtec_ad", root, url, _sha(data), tmp_path / "archives", ["bottle"])
    assert len(server.log) == 1  # completed root: nothing fetched again


def test_prepare_btad(server, tmp_path):
    write_zip(server.root / "btad.zip", btad_files())
    root = tmp_path / "btad"
    prepare_dataset("btad", root, server.url("btad.zip"), None, tmp_path / "archives")
    record = json.loads((root / ".complete").read_text())
    assert sorted(record["categories"]) == ["01", "02", "03"] and len(record["sha256"]) == 64
    for cat in ("01", "02", "03"):
        assert [s.id for s in list_samples("btad", root, cat, "train")] == ["train/good/0000"]
        ko = list_samples("btad", root, cat, "test")[1]
        assert ko.defect_type == "ko" and load_mask(ko.mask, 8).sum() == 4
        assert load_image(ko.image, 8).shape == (3, 8, 8)


def test_prepare_missing_category(server, tmp_path):
    write_tar(server.root / "mvtec.tar.xz", mvtec_files())
    root = tmp_path / "mvtec_ad"
    with pytest.raises(DownloadError, match="carpet"):
        prepare_dataset("mvtec_ad", root, server.url("mvtec.tar.xz"), None, tmp_path / "archives", ["carpet"])
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["archives", "www"]
