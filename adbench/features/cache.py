"""The feature cache: one file per (dataset, category, split, backbone, resolution).

The frozen backbone runs once per image; every method then reads the same file, which also holds the
resized images, masks, ids, labels and defect types (see ``adbench.protocol.Split``).  Decoding runs in a
background thread while the backbone works on the previous batch, so extraction is limited by the
backbone.  Files are written to a temporary name and renamed, so a killed job leaves no partial cache.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adbench.features.backbone import STRIDES, Backbone
from adbench.data.datasets import list_samples, load_sample
from adbench.protocol import Split, resolve_device

CACHE_VERSION = 1


def extract_split(
    kind: str, root: Path, category: str, split: str, backbone: Backbone, image_size: int,
    batch_size: int = 16, progress: bool = True, *, name: str | None = None, url: str | None = None,
    device: str | torch.device | None = None, preprocess: str = "squash",
) -> Split:
    """Decode, resize and run ``backbone`` over every image of one split (``train``, ``test``, or the
    embedded set's ``validation``: ``adbench.data.datasets.list_samples``).

    ``device`` (the config's ``device`` setting): where the backbone runs (it is moved there first);
    ``None`` leaves it where it is.  The features come back to the CPU batch by batch: the cache, and the
    ``Split``, always hold CPU tensors.

    ``name`` and ``url`` (the dataset's config entry) word the fix in ``DatasetError`` messages; a mask
    whose size differs from its image's stops extraction (``adbench.data.datasets.load_sample``).
    ``preprocess``: how images reach ``image_size`` (``adbench.data.datasets.PREPROCESSING``).
    """
    if device is not None:
        backbone.to(resolve_device(device))
    samples = list_samples(kind, Path(root), category, split, name=name, url=url)
    images = np.empty((len(samples), 3, image_size, image_size), np.uint8)
    masks = np.empty((len(samples), image_size, image_size), np.uint8)
    levels: list[list[torch.Tensor]] = [[] for _ in STRIDES]
    bar = tqdm(total=len(samples), desc=f"features {category}/{split}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as pool:
        decoded = pool.map(  # runs ahead of the backbone
            lambda s: load_sample(s, image_size, name=name, url=url, kind=kind, preprocess=preprocess), samples)
        for start in range(0, len(samples), batch_size):
            stop = min(start + batch_size, len(samples))
            for i in range(start, stop):
                images[i], masks[i] = next(decoded)
            feats = backbone(torch.from_numpy(images[start:stop]))
            for level, f in zip(levels, feats):
                level.append(f.cpu())
            bar.update(stop - start)
    bar.close()
    return Split(
        ids=[s.id for s in samples],
        labels=np.asarray([s.label for s in samples], np.int64),
        defect_types=[s.defect_type for s in samples],
        images=torch.from_numpy(images),
        masks=torch.from_numpy(masks),
        features=[torch.cat(level) for level in levels],
        strides=STRIDES,
        backbone=backbone.name,
    )


def save_split(split: Split, path: Path, meta: dict) -> None:
    """Write ``split`` (plus ``meta``: dataset, category, image size, ...) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "version": CACHE_VERSION, "meta": meta, "ids": split.ids, "labels": torch.from_numpy(split.labels),
        "defect_types": split.defect_types, "images": split.images, "masks": split.masks,
        "features": split.features, "strides": split.strides, "backbone": split.backbone,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_split(path: Path) -> Split:
    """Read a cache file written by ``save_split``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature cache {path} is missing; build it with `snakemake {path}`")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if blob.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} was written by cache version {blob.get('version')}, "
                         f"this code reads {CACHE_VERSION}: delete it and rerun the workflow")
    return Split(
        ids=blob["ids"], labels=blob["labels"].numpy(), defect_types=blob["defect_types"],
        images=blob["images"], masks=blob["masks"], features=blob["features"],
        strides=tuple(blob["strides"]), backbone=blob["backbone"],
    )


def cache_meta(path: Path) -> dict:
    """The ``meta`` mapping stored with a cache file."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)["meta"]
