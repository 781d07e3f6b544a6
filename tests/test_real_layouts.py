"""The whole workflow on folders in the real datasets' layouts (MVTec AD, BTAD, MVTec3D-RGB), built from
embedded images; BTAD is downloaded from a loopback HTTP server as a zip like the real archive."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from adbench.data.embedded import EmbeddedConfig, generate_category
from layouts import as_btad, as_mvtec3d, as_mvtec_ad
from workflow_runs import snakemake

SOURCE = EmbeddedConfig(seed=0, size=96, n_train=8, n_test_good=4, n_test_anomalous=4)
# dataset key (= kind) -> (paper category name, embedded source category, layout builder)
LAYOUTS = {
    "mvtec_ad": ("carpet", "brick", as_mvtec_ad),
    "btad": ("03", "coins", as_btad),
    "mvtec3d": ("bagel", "coins", as_mvtec3d),
}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for category in ("brick", "coins"):
        generate_category(root, category, SOURCE)
    return root


@pytest.fixture
def served(tmp_path):
    """``fn(path) -> url`` serving files of ``tmp_path`` from 127.0.0.1 while the test runs."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield lambda path: f"http://127.0.0.1:{server.server_address[1]}/{path.relative_to(tmp_path)}"
    server.shutdown()
    server.server_close()


def _zip(folder: Path, archive: Path, top: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{top}/{path.relative_to(folder)}")
    return archive


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_all_tables_on_a_real_layout(kind, embedded, tmp_path, served):
    category, source, build = LAYOUTS[kind]
    staged = build(embedded, source, tmp_path / "staged") if kind != "mvtec_ad" else None
    entry = {"kind": kind, "root": str(tmp_path / "data" / kind), "categories": [category]}
    if kind == "mvtec_ad":
        shutil.copytree(embedded / source, tmp_path / "data" / kind / category)
    elif kind == "mvtec3d":
        shutil.copytree(staged, tmp_path / "data" / kind)
    else:  # BTAD: downloaded and checked like the real archive
        archive = _zip(staged, tmp_path / "btad.zip", "BTech_Dataset_transformed")
        entry.update(url=served(archive), sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    config = tmp_path / "layout.yaml"
    config.write_text(json.dumps({
        "datasets": {kind: entry},
        "run": {"datasets": [kind], "methods": ["patchcore", "fod"], "seeds": [0]},
        "backbone": {"image_size": 64, "preprocess": "authors"},
        "methods": {"fod": {"params": {"epochs": 1}}},
        "tables": {"table2": {"dataset": kind, "methods": ["patchcore", "fod"]},
                   "table4": {"datasets": [kind], "methods": ["fod"]}},
        "mlflow": {"enabled": False},
    }))
    proc = snakemake(tmp_path, "all_tables", ci=False, configs=(config,))
    assert proc.returncode == 0, proc.output[-4000:]
    # 8 training images (MVTec3D: 6, 2 went to its validation split): fewer than
    # adbench.data.datasets.MIN_TRAIN_IMAGES, said at the end of the run
    n_train = json.loads((tmp_path / "results" / "data" / kind / f"{category}.verified").read_text())["counts"]["train"]
    assert n_train == SOURCE.n_train - 2 * (kind == "mvtec3d")
    assert f"data warning: {kind}/{category} (" in proc.output
    assert f"only {n_train} normal training image(s)" in proc.output

    results = tmp_path / "results"
    metrics = json.loads((results / kind / category / "fod" / "seed0" / "metrics.json").read_text())
    assert metrics["dataset_kind"] == kind and metrics["preprocess"] == "authors"
    assert metrics["n_test"] == SOURCE.n_test_good + (metrics["n_anomalous"])
    table = pd.read_csv(results / "tables" / "table2.csv", index_col=0, dtype={"category": str})
    published = {"mvtec_ad": (15, 0.992), "btad": (3, 0.960), "mvtec3d": (10, 0.884)}[kind]
    label = f"paper mean, all {published[0]} categories (published)"
    assert list(table.index) == [category, "mean", label]
    assert table.loc[label, "paper:fod"] == pytest.approx(published[1])
    assert table.loc["mean", "fod"] == pytest.approx(metrics["image_auroc"], abs=1e-4)
    if kind == "mvtec_ad":  # per-category values exist: the mean row is the paper's over the same category
        assert table.loc[category, "paper:fod"] == pytest.approx(1.0)
        assert table.loc["mean", "paper:fod"] == pytest.approx(1.0)
    else:  # only an all-category mean exists: not put beside our one-category mean
        assert pd.isna(table.loc["mean", "paper:fod"])
    table4 = (results / "tables" / "table4.md").read_text()
    assert f"`{kind}` ({kind}): 1 of {published[0]} categories" in table4
    assert "`authors`" in table4
    assert (results / "downloads" / "btad.done").exists() == (kind == "btad")
