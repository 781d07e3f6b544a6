"""Figures: a grid of embedded-dataset samples with their ground-truth outlines (README picture)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def sample_grid(root: Path, categories: list[str], out: Path, tile: int = 128) -> None:
    """One row per category: the first image of each test folder, anomalies outlined in red."""
    rows = []
    width = 0
    for category in categories:
        tiles = []
        for defect in sorted(p.name for p in (root / category / "test").iterdir()):
            img = np.array(Image.open(root / category / "test" / defect / "000.png").convert("RGB"))
            mask_path = root / category / "ground_truth" / defect / "000_mask.png"
            if mask_path.exists():
                mask = np.asarray(Image.open(mask_path)) > 0
                img[mask & ~ndimage.binary_erosion(mask, iterations=2)] = (255, 0, 0)
            tiles.append(np.asarray(Image.fromarray(img).resize((tile, tile), Image.BILINEAR)))
        rows.append(np.concatenate(tiles, axis=1))
        width = max(width, rows[-1].shape[1])
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--category", action="append", required=True)
    a = p.parse_args(argv)
    sample_grid(a.root, a.category, a.out)


if __name__ == "__main__":
    main()
