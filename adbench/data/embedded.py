"""The embedded dataset: an MVTec-AD-layout anomaly dataset generated offline from real photographs.

Nothing is downloaded: every pixel starts from a photograph that ships inside scikit-image or
scikit-learn.  Categories:

* textures, cut from 512x512 photographs: ``brick``, ``grass``, ``gravel`` (tinted, flipped, jittered);
* objects with parts at fixed positions: ``coins`` (four coins cut from ``skimage.data.coins()`` on a felt
  background) and ``tray`` (a cup, a flower and a cat's face cut from ``coffee()``, sklearn's ``flower.jpg``
  and ``chelsea()`` on a tray).

Defects cover the three kinds the FOD paper discusses:

* local: ``scratch``, ``hole``, ``spot``, ``contamination`` (a patch of a foreign photograph);
* hard global: ``colour`` (a subtle colour/contrast change over a large region);
* logical (objects only; every part stays locally normal): ``missing``, ``duplicated``, ``misplaced``.

Every anomalous image has a pixel mask.  Output layout: MVTec AD's, plus a validation split in folders
that MVTec-layout readers never open (they read ``train``, ``test`` and ``ground_truth`` only)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/<good|defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
    <root>/<category>/validation/<good|defect>/000.png
    <root>/<category>/validation_ground_truth/<defect>/000_mask.png

The validation split is for choosing budgets, learning rates and thresholds (``benchmarks/budgets.py``)
without looking at the test split: it has the test split's defect mix and per-defect count rule, and its
own sizes (``n_val_good``, ``n_val_anomalous``; by default the test split's).  Its images draw from
their own generators (the split name is part of each generator's seed), so no validation image equals a
test image.  Texture crops: train and test crops come from disjoint column bands of each photograph
(``TEXTURE_BANDS``); a third disjoint band would need narrower test or train bands, which would change
the test and train images (and every committed reference number), so validation crops are drawn the
way test crops are, from the test band, at other random positions, scales, rotations, tints and noise.
Validation images thus stand to the training images exactly as test images do (no pixel-identical twin
in train); they overlap the test crops' source pixels, not their images.  Object images have no such
issue: every placement, rotation, shading and defect is drawn afresh.

Generation is deterministic: each image draws from its own ``numpy`` generator seeded by
(seed, category, split, defect, index), and PNGs are written without timestamps, so the same seed gives
byte-identical files.  Writing the validation split (or not: ``generate_category(..., splits=...)``)
changes no train or test file (``tests/test_embedded.py`` checks them against hashes of the generator
before the split existed).  Images are ``size`` x ``size`` RGB (default 256 px).
"""
from __future__ import annotations

import argparse
import json
import math
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

TEXTURES = ("brick", "grass", "gravel")
OBJECTS = ("coins", "tray")
CATEGORIES = TEXTURES + OBJECTS
TEXTURE_DEFECTS = ("scratch", "hole", "contamination", "colour")
OBJECT_DEFECTS = ("scratch", "spot", "colour", "missing", "duplicated", "misplaced")
DEFECT_KIND = {
    "scratch": "local", "hole": "local", "spot": "local", "contamination": "local",
    "colour": "hard_global",
    "missing": "logical", "duplicated": "logical", "misplaced": "logical",
}
GENERATOR_VERSION = 1


SPLITS = ("train", "test", "validation")
#: Where each split's masks go, under ``<root>/<category>``: the test split's in MVTec AD's place, the
#: validation split's in a sibling folder no MVTec-layout reader opens.
MASK_FOLDERS = {"test": "ground_truth", "validation": "validation_ground_truth"}


@dataclass(frozen=True)
class EmbeddedConfig:
    """Sizes of one generated category (image counts; ``size`` in px).

    ``n_test_anomalous`` (and ``n_val_anomalous``) is split evenly over the defect types, rounded up per
    type.  ``n_val_good`` / ``n_val_anomalous``: the validation split's sizes; ``None`` (the default)
    means the test split's.  They are not keys of the workflow's config (its ``generator`` mapping, part
    of every run's config hash), so the defaults live here.
    """

    seed: int = 0
    size: int = 256
    n_train: int = 60
    n_test_good: int = 20
    n_test_anomalous: int = 30
    n_val_good: int | None = None
    n_val_anomalous: int | None = None

    def counts(self, split: str) -> tuple[int, int]:
        """(normal, anomalous) image counts of ``split``; train has no anomalous images."""
        if split == "train":
            return self.n_train, 0
        if split == "test":
            return self.n_test_good, self.n_test_anomalous
        if split == "validation":
            return (self.n_test_good if self.n_val_good is None else self.n_val_good,
                    self.n_test_anomalous if self.n_val_anomalous is None else self.n_val_anomalous)
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# ----------------------------------------------------------------------------------------- sources
@cache
def _photo(name: str) -> np.ndarray:
    """A shipped photograph as float32 (H, W, 3) in [0, 1]."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{name}.jpg")
    else:
        from skimage import data

        arr = getattr(data, name)()
    arr = arr.astype(np.float32) / 255.0
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]


TINTS = {"brick": (1.0, 0.66, 0.52), "grass": (0.62, 0.92, 0.50), "gravel": (0.92, 0.90, 0.86)}
# Coin crops (row0, col0, side) in skimage.data.coins(), found once by Otsu thresholding + regionprops.
COIN_BOXES = ((150, 312, 70), (8, 298, 70), (226, 12, 70), (88, 236, 64))
# Tray parts: (photo, row0, col0, side) crops and their slots (centre row, centre col) on a 256 canvas.
TRAY_PARTS = (("coffee", 60, 140, 300), ("flower", 40, 200, 330), ("chelsea", 20, 110, 230))
SLOTS = {
    "coins": ((0.28, 0.28), (0.28, 0.72), (0.72, 0.28), (0.72, 0.72)),
    "tray": ((0.30, 0.27), (0.30, 0.73), (0.72, 0.50)),
}
FREE_SPOTS = {"coins": (0.5, 0.5), "tray": (0.78, 0.13)}


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(pil.resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0


def _disk(side: int, soft: float = 1.5) -> np.ndarray:
    """(side, side) float alpha of a centred disk with a soft edge of ``soft`` px."""
    yy, xx = np.mgrid[:side, :side] + 0.5 - side / 2
    r = np.hypot(yy, xx)
    return np.clip((side / 2 - 1 - r) / soft + 0.5, 0, 1).astype(np.float32)


@cache
def _parts(category: str, side: int) -> tuple[np.ndarray, ...]:
    """The category's parts as (side, side, 4) RGBA float32 (alpha = disk)."""
    if category == "coins":
        src = _photo("coins")
        crops = [src[r:r + s, c:c + s] for r, c, s in COIN_BOXES]
    else:
        crops = [_photo(n)[r:r + s, c:c + s] for n, r, c, s in TRAY_PARTS]
    alpha = _disk(side)[..., None]
    return tuple(np.concatenate([_resize(c, side), alpha], axis=2) for c in crops)


# ------------------------------------------------------------------------------------ normal images
def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """(size, size) zero-mean, unit-std Gaussian-filtered white noise."""
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


# Train and test crops come from disjoint column bands of the photograph (train: columns [0, 288),
# test: [288, 512)), like different pieces of the same material: no test patch has a pixel-identical twin
# among the training patches.  Validation crops share the test band (see the module docstring: a third
# band would change the train or test images).  Each crop is rotated a little, rescaled and flipped.
TEXTURE_BANDS = {"train": (0, 288), "test": (288, 512), "validation": (288, 512)}
TEXTURE_CROP = 160  # native pixels per crop side before rescaling to ``size``
MAX_ROTATION = {"brick": 4.0, "grass": 180.0, "gravel": 180.0}  # degrees; bricks keep their courses level


def _texture(category: str, split: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of the category's photograph, tinted and jittered: (size, size, 3) float32."""
    src = _photo(category)[..., 0]
    lo, hi = TEXTURE_BANDS[split]
    side = TEXTURE_CROP * rng.uniform(0.9, 1.1)
    angle = rng.uniform(-1, 1) * min(MAX_ROTATION[category], 10.0) + 90.0 * rng.integers(0, 4) * (
        MAX_ROTATION[category] >= 90)
    window = int(np.ceil(side * (abs(np.cos(np.radians(angle % 90))) + abs(np.sin(np.radians(angle % 90))))))
    window = min(window, hi - lo, src.shape[0])
    r, c = rng.integers(0, src.shape[0] - window + 1), lo + rng.integers(0, hi - lo - window + 1)
    patch = Image.fromarray((src[r:r + window, c:c + window] * 255 + 0.5).astype(np.uint8))
    patch = patch.rotate(float(angle), resample=Image.BILINEAR)
    off = (window - side) / 2
    patch = patch.resize((size, size), Image.BILINEAR, box=(off, off, off + side, off + side))
    crop = np.asarray(patch, np.float32) / 255.0
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.repeat(crop[..., None], 3, 2)
    tint = np.asarray(TINTS[category], np.float32) * rng.uniform(0.96, 1.04)
    return np.clip(crop * tint + rng.normal(0, 0.01, crop.shape).astype(np.float32), 0, 1)


def _background(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Felt (coins) or a light tray (tray) with low-frequency shading: (size, size, 3)."""
    shade = 0.03 * _smooth_noise(rng, size, size / 8)[..., None] + 0.015 * _smooth_noise(rng, size, 1.0)[..., None]
    base = np.asarray((0.16, 0.30, 0.22) if category == "coins" else (0.78, 0.74, 0.66), np.float32)
    return np.clip(base * rng.uniform(0.95, 1.05) + shade, 0, 1).astype(np.float32)


def _rotate(part: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an RGBA float part by ``angle`` degrees about its centre (bilinear, same size)."""
    channels = [Image.fromarray(part[..., i]).rotate(angle, resample=Image.BILINEAR) for i in range(4)]
    return np.stack([np.asarray(c, np.float32) for c in channels], axis=2)


def _paste(canvas: np.ndarray, part: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Alpha-blend RGBA ``part`` onto ``canvas`` at pixel ``centre``; returns the (H, W) alpha footprint."""
    side, size = part.shape[0], canvas.shape[0]
    r0, c0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    foot = np.zeros(canvas.shape[:2], np.float32)
    rs, cs = slice(max(r0, 0), min(r0 + side, size)), slice(max(c0, 0), min(c0 + side, size))
    pr, pc = slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0)
    a = part[pr, pc, 3:]
    canvas[rs, cs] = canvas[rs, cs] * (1 - a) + part[pr, pc, :3] * a
    foot[rs, cs] = a[..., 0]
    return foot


@dataclass
class ObjectScene:
    """The parts of an object image before rendering: which part sits where (pixel centres)."""

    parts: list[int]
    centres: list[tuple[float, float]]
    angles: list[float]  # degrees


def _scene(category: str, rng: np.random.Generator, size: int) -> ObjectScene:
    slots = SLOTS[category]
    centres = [(r * size + rng.normal(0, size / 160), c * size + rng.normal(0, size / 160)) for r, c in slots]
    spread = 180.0 if category == "coins" else 6.0  # coins lie at any angle; tray items roughly upright
    angles = [float(rng.uniform(-spread, spread)) for _ in slots]
    return ObjectScene(list(range(len(slots))), centres, angles)


def _render(category: str, scene: ObjectScene, rng: np.random.Generator, size: int) -> tuple[np.ndarray, list]:
    """Render a scene: the image and each placed part's alpha footprint."""
    canvas = _background(category, rng, size)
    side = int(size * (0.30 if category == "coins" else 0.36))
    parts = _parts(category, side)
    feet = []
    for idx, centre, angle in zip(scene.parts, scene.centres, scene.angles):
        part = _rotate(parts[idx], angle) * np.asarray([*([rng.uniform(0.92, 1.08)] * 3), 1.0], np.float32)
        feet.append(_paste(canvas, part, centre))
    return canvas, feet


# ------------------------------------------------------------------------------------- local defects
def _blob(rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """An irregular blob mask (size, size) bool around ``centre`` of about ``radius`` px."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.hypot(yy - centre[0], xx - centre[1]) / radius
    return (r + 0.35 * _smooth_noise(rng, size, radius / 3)) < 1.0


def _random_point(rng, size, region: np.ndarray | None, margin: float = 0.15) -> tuple[float, float]:
    if region is not None:
        rows, cols = np.nonzero(region > 0.5)
        i = rng.integers(len(rows))
        return float(rows[i]), float(cols[i])
    return tuple(rng.uniform(margin * size, (1 - margin) * size, 2))


def _scratch(img, rng, region=None):
    size = img.shape[0]
    p0 = np.asarray(_random_point(rng, size, region))
    ang = rng.uniform(0, 2 * math.pi)
    length = rng.uniform(0.18, 0.35) * size * (0.6 if region is not None else 1.0)
    bend = rng.normal(0, 0.15 * length, 2)
    t = np.linspace(0, 1, 200)[:, None]
    p1 = p0 + length * np.array([math.sin(ang), math.cos(ang)])
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ((p0 + p1) / 2 + bend) + t ** 2 * p1
    line = np.zeros((size, size), bool)
    rr = np.clip(np.round(pts[:, 0]).astype(int), 0, size - 1)
    cc = np.clip(np.round(pts[:, 1]).astype(int), 0, size - 1)
    line[rr, cc] = True
    mask = ndimage.binary_dilation(line, iterations=max(1, size // 128))
    if region is not None:
        mask &= region > 0.5
    tone = 0.92 if rng.random() < 0.5 else 0.06
    img[mask] = img[mask] * 0.2 + tone * 0.8
    return img, mask


def _hole(img, rng, region=None):
    size = img.shape[0]
    mask = _blob(rng, size, _random_point(rng, size, region), rng.uniform(0.03, 0.06) * size)
    depth = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)[..., None]
    img = img * (1 - 0.85 * depth) + 0.03 * 0.85 * depth
    return img, mask


def _spot(img, rng, region=None):
    size = img.shape[0]
    mask = _blob(rng, size, _random_point(rng, size, region), rng.uniform(0.02, 0.035) * size)
    colour = np.asarray(rng.choice([(0.55, 0.25, 0.1), (0.05, 0.05, 0.05), (0.9, 0.85, 0.3)]), np.float32)
    a = ndimage.gaussian_filter(mask.astype(np.float32), 0.8)[..., None] * 0.85
    return img * (1 - a) + colour * a, mask


def _contamination(img, rng, region=None):
    size = img.shape[0]
    mask = _blob(rng, size, _random_point(rng, size, region), rng.uniform(0.05, 0.09) * size)
    src = _photo(str(rng.choice(["astronaut", "coffee", "rocket", "china"])))
    r, c = rng.integers(0, src.shape[0] - size), rng.integers(0, src.shape[1] - size)
    foreign = src[r:r + size, c:c + size]
    a = mask[..., None].astype(np.float32) * 0.9
    return img * (1 - a) + foreign * a, mask


def _colour(img, rng, region=None):
    """Hard global: a subtle colour cast or contrast loss over a large smooth region."""
    size = img.shape[0]
    if region is not None:
        mask = region > 0.5
    else:
        mask = _blob(rng, size, _random_point(rng, size, None, 0.3), rng.uniform(0.2, 0.3) * size)
    a = ndimage.gaussian_filter(mask.astype(np.float32), 2.0)[..., None]
    if rng.random() < 0.5:
        gain = np.ones(3, np.float32)
        gain[rng.integers(3)] += rng.choice([-1, 1]) * rng.uniform(0.16, 0.24)
        changed = img * gain
    else:
        mean = img.mean(axis=(0, 1), keepdims=True)
        changed = mean + (img - mean) * rng.uniform(0.55, 0.7)
    return np.clip(img * (1 - a) + changed * a, 0, 1), mask


LOCAL: dict[str, Callable] = {
    "scratch": _scratch, "hole": _hole, "spot": _spot, "contamination": _contamination, "colour": _colour,
}


# -------------------------------------------------------------------------------------- one sample
def _rng(cfg: EmbeddedConfig, *keys: str | int) -> np.random.Generator:
    key = [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, GENERATOR_VERSION, *key]))


def _object_sample(category, defect, rng, size):
    scene = _scene(category, rng, size)
    n = len(scene.parts)
    if defect == "missing":
        drop = int(rng.integers(n))
        _, feet = _render(category, scene, np.random.default_rng(0), size)  # footprint of the absent part
        mask = feet[drop] > 0.5
        del scene.parts[drop], scene.centres[drop], scene.angles[drop]
        img, _ = _render(category, scene, rng, size)
        return img, mask
    if defect == "duplicated":
        src = int(rng.integers(n))
        fr, fc = FREE_SPOTS[category]
        scene.parts.append(scene.parts[src])
        scene.centres.append((fr * size, fc * size))
        scene.angles.append(scene.angles[src])
        img, feet = _render(category, scene, rng, size)
        return img, feet[-1] > 0.5
    if defect == "misplaced":
        i, j = rng.choice(n, 2, replace=False)
        scene.parts[i], scene.parts[j] = scene.parts[j], scene.parts[i]
        img, feet = _render(category, scene, rng, size)
        return img, (feet[i] > 0.5) | (feet[j] > 0.5)
    img, feet = _render(category, scene, rng, size)
    if defect == "good":
        return img, None
    target = feet[int(rng.integers(n))]
    return LOCAL[defect](img, rng, target)


def sample(category: str, split: str, defect: str, index: int, cfg: EmbeddedConfig):
    """One image (size, size, 3) float32 in [0, 1] and its mask (size, size) bool, or None if normal.

    ``split``: one of ``SPLITS``; it seeds the image's generator, so splits never share an image.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = _rng(cfg, category, split, defect, index)
    if category in OBJECTS:
        img, mask = _object_sample(category, defect, rng, cfg.size)
    else:
        img = _texture(category, split, rng, cfg.size)
        img, mask = (img, None) if defect == "good" else LOCAL[defect](img, rng)
    return np.clip(img, 0, 1), mask


def defects_of(category: str) -> tuple[str, ...]:
    if category not in CATEGORIES:
        raise ValueError(f"unknown embedded category '{category}'; choose from {', '.join(CATEGORIES)}")
    return OBJECT_DEFECTS if category in OBJECTS else TEXTURE_DEFECTS


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def generate_category(root: Path, category: str, cfg: EmbeddedConfig = EmbeddedConfig(),
                      splits: tuple[str, ...] = SPLITS) -> dict[str, int]:
    """Write one category under ``root/category`` (into a temp folder, renamed when complete).

    ``splits``: which of ``SPLITS`` to write (default all three; ``benchmarks/budgets.py`` writes
    ``("train", "validation")`` only, so it cannot read a test image).  Each image's content depends on
    (seed, category, split, defect, index) only, never on which other splits are written.

    Returns the number of images per ``split/defect``.
    """
    import shutil

    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits {splits!r}: choose one or more of {SPLITS}")
    final = Path(root) / category
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    defects = defects_of(category)
    plan = []
    for split in (s for s in SPLITS if s in splits):  # a fixed order, whatever the caller's
        n_good, n_anomalous = cfg.counts(split)
        plan.append((split, "good", n_good))
        if split != "train":
            plan += [(split, d, math.ceil(n_anomalous / len(defects))) for d in defects]
    counts = {}
    for split, defect, n in plan:
        for i in range(n):
            img, mask = sample(category, split, defect, i, cfg)
            _save_png((img * 255 + 0.5).astype(np.uint8), tmp / split / defect / f"{i:03d}.png")
            if mask is not None:
                if not mask.any():
                    raise RuntimeError(f"empty mask for {category}/{split}/{defect}/{i}: generator bug")
                _save_png(mask.astype(np.uint8) * 255, tmp / MASK_FOLDERS[split] / defect / f"{i:03d}_mask.png")
        counts[f"{split}/{defect}"] = n
    meta = {"generator_version": GENERATOR_VERSION, "config": cfg.__dict__, "counts": counts,
            "defect_kinds": {d: DEFECT_KIND[d] for d in defects}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--category", action="append", choices=CATEGORIES, help="repeatable; default: all")
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="default: all")
    fields = EmbeddedConfig().__dict__
    for name, default in fields.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    a = p.parse_args(argv)
    cfg = EmbeddedConfig(**{name: getattr(a, name) for name in fields})
    for cat in a.category or CATEGORIES:
        print(cat, generate_category(a.root, cat, cfg, tuple(a.splits)))


if __name__ == "__main__":
    main()
