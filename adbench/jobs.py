"""Entry points of the Snakemake rules: one function per rule, called by ``workflow/scripts/*.py``.

Each takes plain arguments (paths, config mappings), so a stage can also be run by hand from Python.
``job_context`` sends a job's stdout/stderr (progress bars included) to its Snakemake log, pins torch
to the job's thread count, so parallel jobs do not oversubscribe the cores, flushes subnormal floats to
zero, keeps freed memory for reuse (``adbench.methods.malloc``: no page faults for the tensors a training
step allocates again and again), and checks (and logs) that the job's kernels run on the instruction set
the config pins (``adbench.methods.determinism``).
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator

import torch

from adbench.methods.determinism import flush_denormals, kernel_provenance
from adbench.methods.malloc import retain_freed_memory
from adbench.methods.runs import atomic_path, write_atomic


def job_settings(threads: int) -> str:
    """Set this process up as a job computes: subnormals flushed to zero (before torch's thread pool starts;
    ``adbench.methods.determinism``), ``threads`` torch threads, freed memory kept
    (``adbench.methods.malloc``).  Benchmarks that time a job's work call it too.  Returns the malloc
    setting, for the log."""
    flush_denormals()
    torch.set_num_threads(max(1, int(threads)))
    return retain_freed_memory()


@contextlib.contextmanager
def job_context(log: str | Path, threads: int) -> Iterator[None]:
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    malloc = job_settings(threads)
    with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        print(f"kernels: {kernel_provenance()}, torch threads: {torch.get_num_threads()}, malloc: {malloc}",
              flush=True)
        yield


def generate_embedded(root: str, category: str, generator: dict, ready: str) -> None:
    from adbench.data.embedded import EmbeddedConfig, generate_category

    counts = generate_category(Path(root), category, EmbeddedConfig(**generator))
    write_atomic(ready, json.dumps({"root": root, "category": category, "counts": counts}, indent=1))


def download_dataset(source: dict, sha256: str | None, archive_dir: str, ready: str) -> None:
    """Download and unpack a real dataset into ``source["root"]`` (``adbench.data.download.prepare_dataset``)."""
    from adbench.data.download import prepare_dataset as download_and_extract

    root = download_and_extract(source["kind"], Path(source["root"]), source["url"], sha256, Path(archive_dir),
                                name=source["name"])
    write_atomic(ready, json.dumps({"root": str(root), "url": source["url"]}, indent=1))


def prepare_category(source: dict, category: str, image_size: int, ready: str) -> None:
    """Check one category of a real dataset on disk; write ``ready`` only when all of it is usable.

    Every image and mask is decoded (and each mask's size compared with its image's) first, so a
    truncated or corrupt file stops the workflow here, naming it, and a broken category never gets the
    marker.  ``source``: the dataset's ``name`` (its key in the config, for the messages' ``datasets.<name>``
    and ``download_<name>``), ``kind``, ``root`` and ``url``.  Too few training images, or images smaller
    than ``image_size`` (the evaluation size, px), are warned about in the log and listed under
    ``warnings`` in the marker (the workflow prints them at its end).
    """
    from adbench.data.datasets import SPLITS, list_samples, small_data_warnings, verify_samples

    name, url = source["name"], source.get("url")
    samples = {s: list_samples(source["kind"], Path(source["root"]), category, s, name=name, url=url) for s in SPLITS}
    sizes = verify_samples([x for items in samples.values() for x in items], name=name, url=url)
    counts = {s: len(items) for s, items in samples.items()}
    where = f"{name}/{category} ({Path(source['root']) / category})"
    found = small_data_warnings(where, counts["train"], sizes, image_size)
    for message in found:
        print(f"WARNING: {message}", flush=True)
    write_atomic(ready, json.dumps({"root": source["root"], "category": category, "counts": counts,
                                    "warnings": found}, indent=1))


def extract_features(source: dict, category: str, split: str, backbone: str, image_size: int,
                     weights_dir: str, batch_size: int, out: str, device: str = "cpu",
                     preprocess: str = "squash") -> None:
    """Run the frozen backbone over one split on ``device`` (the config's ``device`` setting: auto, cpu,
    cuda, cuda:N) and write the feature cache (CPU tensors; the resolved device is in its ``meta``).
    ``preprocess``: how images reach ``image_size`` (``adbench.data.datasets.PREPROCESSING``)."""
    from adbench.features.backbone import Backbone
    from adbench.features.cache import extract_split, save_split
    from adbench.protocol import resolve_device

    run_on = resolve_device(device)
    print(f"device: {run_on} (setting {device!r})", flush=True)
    model = Backbone(backbone, Path(weights_dir), device=run_on)
    data = extract_split(source["kind"], Path(source["root"]), category, split, model, image_size, batch_size,
                         name=source["name"], url=source.get("url"), preprocess=preprocess)
    meta = {"dataset": source["name"], "category": category, "split": split, "backbone": backbone,
            "image_size": image_size, "device": str(run_on), "preprocess": preprocess}
    save_split(data, Path(out), meta)


def summarise_category(metrics_files: list[str], out: str) -> None:
    """``out``: one CSV row per run of a category (the scalar fields of each metrics.json), read through
    ``adbench.evaluation.integrity.read_metrics``, which refuses a run folder whose files disagree with its metrics.json."""
    import pandas as pd

    from adbench.evaluation.integrity import read_metrics

    rows = read_metrics(metrics_files)
    # the per-defect groups (nested) stay in metrics.json and the per-defect tables; one scalar per column here
    rows = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).sort_values(["method", "seed"]).to_csv(tmp, index=False)


def download_dtd(url: str, archive_dir: str, root: str, ready: str) -> None:
    """DRAEM's anomaly source (Describable Textures Dataset): download, unpack into ``root``."""
    from adbench.data.download import download, extract

    archive = download(url, Path(archive_dir) / Path(url).name)
    extract(archive, Path(root))
    images = sorted(Path(root).rglob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"{archive} unpacked into {root} without any .jpg: is it DTD?")
    write_atomic(ready, json.dumps({"url": url, "root": root, "images": len(images)}, indent=1))


def track_category(run_dirs: list[str], tracking_uri: str, experiment: str, out: str) -> None:
    """Log a category's run folders to MLflow; write ``{run_key: mlflow_run_id}`` to ``out``.

    ``out`` is written to a temporary name and renamed, so a kill never leaves a partial file.
    """
    from adbench.evaluation.tracking import log_runs

    ids = log_runs([Path(d) for d in run_dirs], tracking_uri, experiment)
    write_atomic(out, json.dumps(ids, indent=1, sort_keys=True))


def track_all_tables(cell_records: list[str], artifacts: dict[str, str], tracking_uri: str, experiment: str,
                     name: str, params: dict, out: str) -> None:
    """One MLflow parent run for this ``all_tables`` execution (``adbench.evaluation.tracking.log_parent``): the union of
    the categories' ``mlflow.json`` ({run_key: run_id}) nested under it, ``artifacts`` ({artifact path: file
    or folder}) attached; writes ``{"run_id", "experiment", "cells"}`` to ``out``."""
    from adbench.evaluation.tracking import git_commit, log_parent

    cells: dict[str, str] = {}
    for record in cell_records:
        cells.update(json.loads(Path(record).read_text()))
    run_id = log_parent(tracking_uri, experiment, cells, artifacts, name, params, {"git_commit": git_commit()})
    write_atomic(out, json.dumps({"run_id": run_id, "experiment": experiment, "cells": len(cells)}, indent=1))
