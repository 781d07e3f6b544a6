import hashlib
import json

import numpy as np
from PIL import Image

from adbench.datasets import list_samples, load_mask
from adbench.embedded import DEFECT_KIND, EmbeddedConfig, defects_of, generate_category

from conftest import SMALL


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_masks(embedded_root):
    for category in ("brick", "coins"):
        train = list_samples("embedded", embedded_root, category, "train")
        test = list_samples("embedded", embedded_root, category, "test")
        assert len(train) == SMALL.n_train and all(s.label == 0 for s in train)
        assert sum(s.label == 0 for s in test) == SMALL.n_test_good
        assert sum(s.label == 1 for s in test) >= SMALL.n_test_anomalous
        assert {s.defect_type for s in test} == {"good", *defects_of(category)}
        for s in test:
            if s.label:
                assert load_mask(s.mask, 64).any(), s.id  # every anomaly has a non-empty mask
        meta = json.loads((embedded_root / category / "meta.json").read_text())
        assert meta["config"]["seed"] == SMALL.seed


def test_all_three_defect_kinds_are_present():
    kinds = {DEFECT_KIND[d] for c in ("brick", "coins") for d in defects_of(c)}
    assert kinds == {"local", "hard_global", "logical"}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    cfg = EmbeddedConfig(seed=3, size=64, n_train=3, n_test_good=2, n_test_anomalous=6)
    generate_category(tmp_path / "a", "tray", cfg)
    generate_category(tmp_path / "b", "tray", cfg)
    generate_category(tmp_path / "c", "tray", EmbeddedConfig(seed=4, size=64, n_train=3, n_test_good=2,
                                                             n_test_anomalous=6))
    assert _digest(tmp_path / "a" / "tray") == _digest(tmp_path / "b" / "tray")
    assert _digest(tmp_path / "a" / "tray") != _digest(tmp_path / "c" / "tray")


def test_logical_defects_keep_parts_intact(embedded_root):
    """A missing part leaves background where the mask is; good images have a part there."""
    root = embedded_root / "coins"
    img = np.asarray(Image.open(root / "test" / "missing" / "000.png")).astype(float)
    mask = np.asarray(Image.open(root / "ground_truth" / "missing" / "000_mask.png")) > 0
    good = np.asarray(Image.open(root / "test" / "good" / "000.png")).astype(float)
    # the felt background is dark and flat; a coin is bright and textured
    assert img[mask].mean() < good[mask].mean() - 40
    assert img[mask].std() < good[mask].std() / 2
