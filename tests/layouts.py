"""Real datasets' folder layouts, built from embedded categories (which are in MVTec AD's layout).

``as_btad``: ``<p>/train/ok``, ``<p>/test/{ok,ko}``, masks ``<p>/ground_truth/ko/<stem>.<ext>``, images
as .bmp (and .bmp masks for product 03, as in the real archive), resized to a non-square size so that
the preprocessing's crop matters.  ``as_mvtec3d``: ``<c>/{train,validation,test}/<label>/rgb/*.png``,
masks ``<c>/test/<label>/gt/*.png`` (0/255), plus an ``xyz/`` folder per label that readers must ignore.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image


def _convert(src: Path, dest: Path, size: tuple[int, int] | None, mask: bool = False) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        out = img.convert("L" if mask else "RGB")
        if size is not None:
            out = out.resize(size, Image.NEAREST if mask else Image.BILINEAR)
        out.save(dest)


def as_mvtec_ad(src_root: Path, category: str, dest_root: Path) -> Path:
    shutil.copytree(src_root / category, dest_root / category)
    return dest_root


def as_btad(src_root: Path, category: str, dest_root: Path, product: str = "03",
            size: tuple[int, int] = (80, 64)) -> Path:
    """One BTAD product from an embedded category; defect types are folded into ``ko`` as BTAD has them."""
    src, dest = src_root / category, dest_root / product
    mask_ext = ".bmp" if product == "03" else ".png"
    for image in sorted((src / "train" / "good").glob("*.png")):
        _convert(image, dest / "train" / "ok" / f"{image.stem}.bmp", size)
    for folder in sorted(p for p in (src / "test").iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.png")):
            if folder.name == "good":
                _convert(image, dest / "test" / "ok" / f"{image.stem}.bmp", size)
                continue
            stem = f"{folder.name}_{image.stem}"
            _convert(image, dest / "test" / "ko" / f"{stem}.bmp", size)
            _convert(src / "ground_truth" / folder.name / f"{image.stem}_mask.png",
                     dest / "ground_truth" / "ko" / f"{stem}{mask_ext}", size, mask=True)
    return dest_root


def as_mvtec3d(src_root: Path, category: str, dest_root: Path, name: str = "bagel") -> Path:
    src, dest = src_root / category, dest_root / name
    train = sorted((src / "train" / "good").glob("*.png"))
    for i, image in enumerate(train):
        split = "validation" if i < 2 else "train"  # MVTec3D has a validation split; readers ignore it
        _convert(image, dest / split / "good" / "rgb" / image.name, None)
    for folder in sorted(p for p in (src / "test").iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.png")):
            _convert(image, dest / "test" / folder.name / "rgb" / image.name, None)
            (dest / "test" / folder.name / "xyz").mkdir(parents=True, exist_ok=True)
            (dest / "test" / folder.name / "xyz" / f"{image.stem}.tiff").write_bytes(b"not an image")
            if folder.name != "good":
                _convert(src / "ground_truth" / folder.name / f"{image.stem}_mask.png",
                         dest / "test" / folder.name / "gt" / image.name, None, mask=True)
    return dest_root
