"""Reading the on-disk dataset layouts: MVTec AD, BTAD, MVTec 3D-AD (RGB only) and our embedded set.

Every layout is turned into the same flat, sorted list of :class:`Sample` records, so the rest of the
suite never looks at folder names.  Layouts (``<cat>`` is a category folder directly under ``root``):

* ``mvtec_ad`` / ``embedded``: ``<cat>/train/good/*.png``, ``<cat>/test/<good|defect>/*.png``,
  masks ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
* ``btad``: ``<cat>/train/ok/*``, ``<cat>/test/{ok,ko}/*`` (.bmp or .png), masks
  ``<cat>/ground_truth/ko/<stem>.png`` (``.bmp`` for product 03).  ``ok`` becomes defect type ``"good"``.
* ``mvtec3d``: ``<cat>/{train,test}/<label>/rgb/*.png``, masks ``<cat>/test/<label>/gt/<stem>.png``;
  the ``validation`` split and the ``xyz`` point clouds are ignored.

Images load as uint8 (3, S, S) RGB, masks as uint8 (S, S) in {0, 1}, S being the evaluation size in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("embedded", "mvtec_ad", "btad", "mvtec3d")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
_NORMAL_NAMES = {"good": "good", "ok": "good"}


class DatasetError(Exception):
    """A dataset on disk is missing, incomplete or unreadable; the message names the path and the fix."""


@dataclass(frozen=True)
class Sample:
    """One image of one split.

    Attributes:
        id: ``"<split>/<defect>/<stem>"``, e.g. ``"test/scratch/003"`` or ``"train/good/000"``.
        image: path of the image file.
        label: 0 normal, 1 anomalous.
        defect_type: ``"good"`` for normal samples, else the defect folder name (BTAD: ``"ko"``).
        mask: path of the ground-truth mask, ``None`` for normal samples.
    """

    id: str
    image: Path
    label: int
    defect_type: str
    mask: Path | None


def _fix(kind: str) -> str:
    if kind == "embedded":
        return ("regenerate it with adbench.embedded (the workflow's embedded dataset rule) "
                "or set datasets.embedded.root in config/config.yaml")
    return f"run `snakemake download_{kind}` or set datasets.{kind}.root in config/config.yaml"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_mask(folder: Path, stem: str) -> Path | None:
    """The mask ``folder/<stem>.<ext>``, preferring .png; None when no such file exists."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def list_categories(kind: str, root: Path) -> list[str]:
    """Sorted names of the category folders under ``root`` (those holding a ``train`` folder)."""
    _check_kind(kind)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; {_fix(kind)}")
    cats = [p.name for p in _subdirs(root) if (p / "train").is_dir()]
    if not cats:
        raise DatasetError(f"no category folders (<category>/train) found under {root}; {_fix(kind)}")
    return cats


def list_samples(kind: str, root: Path, category: str, split: str) -> list[Sample]:
    """All samples of one split of one category, sorted by id.

    Raises:
        DatasetError: the category or split folder is missing, the split holds no images, or an
            anomalous test image has no mask file.
    """
    _check_kind(kind)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    cat_dir = Path(root) / category
    if not cat_dir.is_dir():
        hint = ""
        if Path(root).is_dir():
            found = [p.name for p in _subdirs(Path(root))]
            hint = f" (found: {', '.join(found) or 'nothing'})"
        raise DatasetError(f"category folder {cat_dir} does not exist{hint}; {_fix(kind)}")
    split_dir = cat_dir / split
    if not split_dir.is_dir():
        raise DatasetError(f"split folder {split_dir} does not exist; the copy is incomplete: {_fix(kind)}")

    samples = []
    for label_dir in _subdirs(split_dir):
        folder = label_dir / "rgb" if kind == "mvtec3d" else label_dir
        if not folder.is_dir():
            continue
        defect = _NORMAL_NAMES.get(label_dir.name, label_dir.name)
        label = int(defect != "good")
        for image in _images_in(folder):
            mask = None
            if label:
                if kind == "mvtec3d":
                    mask_dir, mask_stem = label_dir / "gt", image.stem
                elif kind == "btad":
                    mask_dir, mask_stem = cat_dir / "ground_truth" / label_dir.name, image.stem
                else:
                    mask_dir, mask_stem = cat_dir / "ground_truth" / label_dir.name, f"{image.stem}_mask"
                mask = _find_mask(mask_dir, mask_stem)
                if mask is None:
                    raise DatasetError(
                        f"anomalous image {image} has no mask {mask_dir / (mask_stem + '.png')}; "
                        f"the copy is incomplete: {_fix(kind)}")
            samples.append(Sample(f"{split}/{defect}/{image.stem}", image, label, defect, mask))
    if not samples:
        raise DatasetError(f"no images found in {split_dir}; the copy is incomplete or empty: {_fix(kind)}")
    samples.sort(key=lambda s: s.id)
    return samples


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"cannot read image {path} ({exc}); the file is missing or corrupt: delete the dataset folder "
            f"and run `snakemake download_<dataset>` again, or set datasets.<name>.root in "
            f"config/config.yaml to an intact copy") from exc


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 (3, size, size) RGB; grayscale / RGBA / palette inputs are converted, PIL bilinear resize."""
    img = _open(Path(path))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greys: rescale to 8 bit
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def load_mask(path: Path | None, size: int) -> np.ndarray:
    """uint8 (size, size) in {0, 1}: every nonzero pixel -> 1; ``None`` -> all zeros; nearest resize."""
    if path is None:
        return np.zeros((size, size), dtype=np.uint8)
    img = _open(Path(path))
    if img.mode == "P":
        img = img.convert("RGB")
    arr = np.asarray(img)
    if img.mode in ("LA", "RGBA", "La", "RGBa", "PA"):
        arr = arr[..., :-1]  # ignore alpha: an opaque black mask is still empty
    if arr.ndim == 3:
        arr = arr.any(axis=-1)
    binary = Image.fromarray((arr != 0).astype(np.uint8))
    if binary.size != (size, size):
        binary = binary.resize((size, size), Image.NEAREST)
    return np.asarray(binary, dtype=np.uint8).copy()
