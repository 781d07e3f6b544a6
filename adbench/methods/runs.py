"""What identifies a run: its folder, the part of the config that determines its numbers, and that
part's hash; and how its files are written (whole or not at all).  Light on imports (no torch): the
workflow calls these while it parses the config."""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from adbench import ROOT


def run_folder(results: str | Path, dataset: str, category: str, method: str, seed: int) -> str:
    """``<results>/<dataset>/<category>/<method>/seed<k>``: where one run's files live."""
    return f"{results}/{dataset}/{category}/{method}/seed{seed}"


def run_config(config: dict, dataset: str, method: str, seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """The part of the config that determines a run's numbers (what the config hash covers).

    ``params`` are the method's params resolved against its defaults
    (``adbench.methods.registry.check_method_entry``), so a changed default changes the hash too.  The workflow
    passes the result to ``fit_evaluate`` through ``params:``, so Snakemake reruns a cell when any of it
    changes, and the table rules compare each ``metrics.json``'s hash with the current one.

    The config's ``device`` setting is deliberately left out: a GPU run is another draw of the same
    configuration (its last bits differ, as another seed's would), not another configuration, so it is
    recorded in run.json / metrics.json (``device``, ``device_name``) but does not change the hash.
    """
    ds = config["datasets"][dataset]
    return {
        "dataset": dataset,
        "dataset_kind": ds["kind"],
        "generator": ds.get("generator"),
        "backbone": config["backbone"]["name"],
        "image_size": config["backbone"]["image_size"],
        "preprocess": config["backbone"]["preprocess"],
        "cpu_isa": config["determinism"]["cpu_isa"],
        "method": method,
        "impl": config["methods"][method]["impl"],
        "params": params,
        "seed": seed,
    }


def resolve_tables(config: dict) -> dict:
    """Fill in the table lists a config leaves out (in place; returns ``config``): ``tables.table2.methods``
    defaults to every method of ``run.methods`` that is not an ablation (its class's ``ablation(params)``),
    in ``run.methods``' order, and ``tables.table3`` to every dataset of ``run.datasets`` with table2's
    methods.  An explicit list wins, so an override config that changes ``run.methods`` need not repeat
    the tables."""
    from adbench.methods.registry import SPECS, method_spec

    tables = config["tables"]

    def headline(method: str) -> bool:  # an undefined method or impl is the config check's to report
        entry = config["methods"].get(method, {})
        return entry.get("impl") in SPECS and method_spec(entry["impl"]).ablation(entry.get("params") or {}) is None

    tables["table2"].setdefault("methods", [m for m in config["run"]["methods"] if headline(m)])
    table3 = tables.setdefault("table3", {})
    table3.setdefault("datasets", list(config["run"]["datasets"]))
    table3.setdefault("methods", list(tables["table2"]["methods"]))
    return config


def load_config(*paths: str | Path) -> dict:
    """``config/config.yaml`` with ``paths`` laid over it in order, as ``snakemake --configfile`` merges
    them (``config/config.yaml`` itself among ``paths`` is skipped: it is already the base)."""
    import yaml
    from snakemake.utils import update_config

    base = ROOT / "config" / "config.yaml"
    config = yaml.safe_load(base.read_text())
    for path in paths:
        if Path(path).resolve() != base.resolve():
            update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    return resolve_tables(config)


def method_seeds(config: dict, method: str) -> list[int]:
    """A method's seeds: ``run.seeds``, or only the first of them for a method in ``run.one_seed`` and for
    one whose class is ``deterministic`` (another seed would give the same numbers)."""
    from adbench.methods.registry import method_spec

    seeds = list(config["run"]["seeds"])
    deterministic = method_spec(config["methods"][method]["impl"]).deterministic
    return seeds[:1] if deterministic or method in config["run"].get("one_seed", []) else seeds


def config_hash(cfg: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the canonical JSON of ``cfg``."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside ``path`` for the block to write ``path``'s content to; renamed to ``path`` when
    the block ends, removed when it raises: a kill or an error never leaves half a file under ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_maps(path: str | Path, maps: np.ndarray, ids: list[str]) -> None:
    """``maps.npz``: the (N, H, W) finite pixel maps as float16 divided by their largest magnitude (``scale``,
    float64), with the test ``ids`` in order.  float16 keeps 11 significant bits relative to that maximum:
    unscaled, maps whose values sit near 1e-6 (PatchSVDD's products of tiny distances) fell into float16's
    subnormals and lost their order (pixel AUROC off by 0.004), and values past 65504 became infinite."""
    scale = float(np.abs(maps).max()) or 1.0
    np.savez_compressed(path, maps=(maps / scale).astype(np.float16), scale=np.float64(scale), ids=np.asarray(ids))


def read_maps(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(float32 (N, H, W) maps, ids)`` of a ``maps.npz`` written by ``write_maps`` (files without ``scale``,
    from before it existed, hold the maps unscaled)."""
    with np.load(path) as blob:
        scale = float(blob["scale"]) if "scale" in blob.files else 1.0
        return blob["maps"].astype(np.float32) * np.float32(scale), [str(i) for i in blob["ids"]]
