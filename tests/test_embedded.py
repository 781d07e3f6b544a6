import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from adbench.data.datasets import list_categories, list_samples, load_mask
from adbench.data.embedded import CATEGORIES, DEFECT_KIND, EmbeddedConfig, defects_of, generate_category

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


# sha256 over (path relative to the category, NUL, file bytes) of every PNG under train/, test/ and
# ground_truth/, sorted by path, as written by adbench/data/embedded.py at commit HEAD before the validation split
# existed (computed once with that code).  The committed reference numbers were measured on these images.
_TINY = dict(seed=0, size=64, n_train=2, n_test_good=2, n_test_anomalous=6)
_TINY_SHA256 = {
    "brick": "9a3a669b3f1f1e929a3cb1be9d82f2cf60041766fe4d785a271693f5199ce6b5",
    "grass": "fbf38bb4aa4a555426d81a28c9886d08d05b9c98d191b28d23546960eb8d85e1",
    "gravel": "26a6d27c5bd4a61e9c4de2832cf57b8e34db41d0baec92b48485bfc63ae7ee15",
    "coins": "37344038a451187f83a3aaf1776e222b941c6afdcf2babfcdab16f43c3f5bfd5",
    "tray": "39e48e5b0b228a34edd606bdad4762ef936a9a1a701b339c69fcf8fbfffc6541",
}
_CI = dict(seed=0, size=128, n_train=16, n_test_good=8, n_test_anomalous=12)  # config/ci.yaml's generator
_CI_SHA256 = {
    "brick": "b48f8f2a83349fcba08690e8a5a8a9d49396dc780c0931b1cc92f2c52fd5b320",
    "grass": "863985c2a93661e7dce0996219b7356f12f6f5fe5067e9f9b56c1b8dfb254362",
    "gravel": "1254dbeed9781c5dbb7b31dcecec6ac724fa010daf7c5c141ed41a47fab560c2",
    "coins": "17c092483f9792df59f8f5efd451cbcff272ebfc19dfe6b69b2c3c0ad7b74ce0",
    "tray": "6bdec2eea7f89127be456e737a4d58dce33f1f60b62711cf601da21412c18d42",
}


def _train_test_digest(folder):
    """The digest of _TINY_SHA256: train, test and test masks only (validation and meta.json left out)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        rel = p.relative_to(folder)
        if rel.parts[0] in ("train", "test", "ground_truth"):
            h.update(str(rel).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_train_and_test_images_are_those_of_the_generator_before_the_validation_split(tmp_path):
    for name, kwargs, expected in (("tiny", _TINY, _TINY_SHA256), ("ci", _CI, _CI_SHA256)):
        cfg = EmbeddedConfig(**kwargs)
        for category in CATEGORIES:
            generate_category(tmp_path / name, category, cfg)  # all three splits, as the workflow does
            assert (tmp_path / name / category / "validation").is_dir()
            assert _train_test_digest(tmp_path / name / category) == expected[category], (name, category)
    for category in CATEGORIES:  # and the same files when the validation split is not written
        generate_category(tmp_path / "no_val", category, EmbeddedConfig(**_TINY), splits=("train", "test"))
        assert not (tmp_path / "no_val" / category / "validation").exists()
        assert _train_test_digest(tmp_path / "no_val" / category) == _TINY_SHA256[category], category


def _pixels(samples):
    return {s.id: np.asarray(Image.open(s.image)).tobytes() for s in samples}


def test_validation_split_has_the_test_mix_and_its_own_images(tmp_path):
    cfg = EmbeddedConfig(seed=0, size=64, n_train=2, n_test_good=3, n_test_anomalous=7)  # 7 over 4 or 6 types
    for category in ("brick", "coins"):
        generate_category(tmp_path, category, cfg)
        test = list_samples("embedded", tmp_path, category, "test")
        val = list_samples("embedded", tmp_path, category, "validation")
        # the same defect types and per-type counts (default sizes: the test split's)
        assert sorted(s.id.replace("test/", "", 1) for s in test) == sorted(s.id.replace("validation/", "", 1)
                                                                            for s in val)
        for s in val:
            if s.label:
                assert s.mask.parent.parent.name == "validation_ground_truth", s.mask
                assert load_mask(s.mask, 64).any(), s.id
            else:
                assert s.mask is None
        # another generator stream: no validation image equals a test (or training) image
        train = list_samples("embedded", tmp_path, category, "train")
        seen = set(_pixels(test).values()) | set(_pixels(train).values())
        assert not seen & set(_pixels(val).values()), category
        meta = json.loads((tmp_path / category / "meta.json").read_text())
        assert meta["counts"]["validation/good"] == cfg.n_test_good


def test_validation_sizes_are_their_own_config_fields(tmp_path):
    cfg = EmbeddedConfig(seed=1, size=64, n_train=2, n_test_good=2, n_test_anomalous=4,
                         n_val_good=5, n_val_anomalous=8)
    assert cfg.counts("validation") == (5, 8) and cfg.counts("test") == (2, 4) and cfg.counts("train") == (2, 0)
    assert EmbeddedConfig(n_test_good=7, n_test_anomalous=9).counts("validation") == (7, 9)
    generate_category(tmp_path, "brick", cfg, splits=("validation", "train"))  # order does not matter
    val = list_samples("embedded", tmp_path, "brick", "validation")
    assert sum(s.label == 0 for s in val) == 5
    assert sum(s.label == 1 for s in val) == 8  # 8 over 4 texture defect types: 2 each
    assert not (tmp_path / "brick" / "test").exists() and not (tmp_path / "brick" / "ground_truth").exists()
    # the MVTec-layout readers see train and test only, so a validation split never reaches them
    assert list_categories("embedded", tmp_path) == ["brick"]
    with pytest.raises(ValueError, match="embedded"):
        list_samples("mvtec_ad", tmp_path, "brick", "validation")
    with pytest.raises(ValueError, match="splits"):
        generate_category(tmp_path, "brick", cfg, splits=("holdout",))
