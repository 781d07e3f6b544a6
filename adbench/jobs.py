"""Entry points of the Snakemake rules: one function per rule, called by ``workflow/scripts/*.py``.

Each takes plain arguments (paths, config mappings), so a stage can also be run by hand from Python.
``job_context`` sends a job's stdout/stderr (progress bars included) to its Snakemake log and pins torch
to the job's thread count, so parallel jobs do not oversubscribe the cores.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator

import torch


@contextlib.contextmanager
def job_context(log: str | Path, threads: int) -> Iterator[None]:
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, int(threads)))
    with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        yield


def generate_embedded(root: str, category: str, generator: dict, ready: str) -> None:
    from adbench.embedded import EmbeddedConfig, generate_category

    counts = generate_category(Path(root), category, EmbeddedConfig(**generator))
    Path(ready).write_text(json.dumps({"root": root, "category": category, "counts": counts}, indent=1))


def prepare_dataset(dataset: dict, archive_dir: str, ready: str) -> None:
    """Use the dataset where it is, or download it when ``url`` is set; fail with the fix otherwise."""
    from adbench.datasets import DatasetError, list_samples
    from adbench.download import prepare_dataset as download_and_extract

    root = Path(dataset["root"])
    try:
        counts = {c: {s: len(list_samples(dataset["kind"], root, c, s)) for s in ("train", "test")}
                  for c in dataset["categories"]}
    except DatasetError as err:
        if not dataset.get("url"):
            raise DatasetError(f"{err}\n(no `url` is configured for this dataset, so it cannot be downloaded: "
                               f"put it at {root} by hand)") from err
        download_and_extract(dataset["kind"], root, dataset["url"], dataset.get("sha256"), Path(archive_dir),
                             dataset["categories"])
        counts = {c: {s: len(list_samples(dataset["kind"], root, c, s)) for s in ("train", "test")}
                  for c in dataset["categories"]}
    Path(ready).write_text(json.dumps({"root": str(root), "counts": counts}, indent=1))


def extract_features(dataset_name: str, dataset: dict, category: str, split: str, backbone: str,
                     image_size: int, weights_dir: str, batch_size: int, out: str) -> None:
    from adbench.backbone import Backbone
    from adbench.features import extract_split, save_split

    model = Backbone(backbone, Path(weights_dir))
    data = extract_split(dataset["kind"], Path(dataset["root"]), category, split, model, image_size, batch_size)
    meta = {"dataset": dataset_name, "category": category, "split": split, "backbone": backbone,
            "image_size": image_size}
    save_split(data, Path(out), meta)


def summarise_category(metrics_files: list[str], out: str) -> None:
    import pandas as pd

    rows = [json.loads(Path(p).read_text()) for p in metrics_files]
    pd.DataFrame(rows).sort_values(["method", "seed"]).to_csv(out, index=False)


def download_dtd(url: str, archive_dir: str, root: str, ready: str) -> None:
    """DRAEM's anomaly source (Describable Textures Dataset): download, unpack into ``root``."""
    from adbench.download import download, extract

    archive = download(url, Path(archive_dir) / Path(url).name)
    extract(archive, Path(root))
    images = sorted(Path(root).rglob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"{archive} unpacked into {root} without any .jpg: is it DTD?")
    Path(ready).write_text(json.dumps({"url": url, "root": root, "images": len(images)}, indent=1))


def track_category(run_dirs: list[str], tracking_uri: str, experiment: str, out: str) -> None:
    """Log a category's run folders to MLflow; write ``{run_key: mlflow_run_id}`` to ``out``."""
    from adbench.tracking import log_runs

    ids = log_runs([Path(d) for d in run_dirs], tracking_uri, experiment)
    Path(out).write_text(json.dumps(ids, indent=1, sort_keys=True))
