"""Patch SVDD on small synthetic splits (64 px: patch sizes 16 and 8).

Whether Patch SVDD learns is tests/test_learning.py's question (on the CI data, above what its untrained
encoder scores): on these splits the untrained encoders, scratch and backbone, already put every red disc
above every normal image (image AUROC 1.0, pixel 0.996-0.998 over seeds 0-4), so an AUROC here says nothing
about training."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from adbench.protocol import Split
from baselines.patchsvdd import (
    DEFAULT_PARAMS,
    PAPER_PARAMS,
    HierarchicalEncoder,
    PatchSVDD,
    SmallPatchEncoder,
    distribute_scores,
)
from synthetic import SIZE, fit_and_predict, pooled_colour
from synthetic import make_split as _make_split

# the stand-in 'backbone': pooled colour of the ImageNet-normalised images at strides 8 and 16
make_split = partial(_make_split, features=lambda split: pooled_colour(split.normalized_images()))


FIT_PARAMS = {"epochs": 10, "repeat": 8, "lr": 3e-3, "lambda": 1e-3, "test_strides": [4, 4], "progress": False}
TINY = {"epochs": 1, "repeat": 1, "batch_size": 8, "progress": False}


@pytest.fixture(scope="module")
def splits() -> tuple[Split, Split]:
    return make_split(24, 0, seed=0), make_split(8, 8, seed=1)


@pytest.fixture(scope="module")
def fitted(splits):
    return fit_and_predict(PatchSVDD(FIT_PARAMS, seed=0), *splits)


# --------------------------------------------------------------------------------------- building blocks
def test_small_encoder_matches_the_public_32px_network_and_shrinks_to_1x1():
    enc = SmallPatchEncoder(32, 64, 32)
    convs = [m for m in enc.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 64, 32, 32, 64]
    assert convs[0].stride == (2, 2) and all(c.stride == (1, 1) for c in convs[1:])
    for k in (8, 16, 32, 64):
        assert SmallPatchEncoder(k, 5, 4)(torch.zeros(2, 3, k, k)).shape == (2, 5, 1, 1)


def test_dense_embeddings_equal_embeddings_of_cropped_patches(splits):
    train = splits[0]
    method = PatchSVDD({**TINY, "test_strides": [4, 2]}, seed=0)
    method._build(method._resolve(train))
    method.mean = train.images.float().mean(0)
    x = method._standardize(train.images[:2])
    with torch.no_grad():
        e_small, e_big = method._grid_embeddings(x)
        big, small = method.arch["patch_sizes"]
        assert (big, small) == (16, 8)
        assert e_small.shape == (2, (SIZE - 8) // 2 + 1, (SIZE - 8) // 2 + 1, 64)
        assert e_big.shape == (2, (SIZE - 16) // 4 + 1, (SIZE - 16) // 4 + 1, 64)
        for i, j in [(0, 0), (3, 5), (e_small.shape[1] - 1, e_small.shape[2] - 1)]:
            patch = x[:, :, 2 * i : 2 * i + small, 2 * j : 2 * j + small]
            torch.testing.assert_close(method.small(patch)[:, :, 0, 0], e_small[:, i, j], rtol=1e-5, atol=1e-6)
        for i, j in [(0, 0), (2, 7), (e_big.shape[1] - 1, e_big.shape[2] - 1)]:
            patch = x[:, :, 4 * i : 4 * i + big, 4 * j : 4 * j + big]
            ref = method.hier.forward_patches(method.small, patch)[:, :, 0, 0]
            torch.testing.assert_close(ref, e_big[:, i, j], rtol=1e-5, atol=1e-6)


def test_hierarchical_encoder_reuses_the_small_encoder():
    small, hier = SmallPatchEncoder(8, 6, 4), HierarchicalEncoder(6, 10)
    out = hier.forward_patches(small, torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 6, 1, 1) and out.abs().max() <= 1
    names = {n for n, _ in hier.named_parameters()}
    assert names == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}


def test_distribute_scores_against_a_naive_version():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 4, 5, generator=g)
    out = distribute_scores(scores, (20, 24), patch=8, stride=4)
    total, count = np.zeros((2, 20, 24)), np.zeros((20, 24))
    for i in range(4):
        for j in range(5):
            total[:, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8] += scores[:, i, j, None, None].numpy()
            count[4 * i : 4 * i + 8, 4 * j : 4 * j + 8] += 1
    np.testing.assert_allclose(out.numpy(), total / np.maximum(count, 1), rtol=1e-5)


def test_patch_sizes_and_strides_scale_with_the_image():
    for size, sizes in ((64, [16, 8]), (128, [32, 16]), (256, [64, 32])):
        split = make_split(1, 0, seed=0, size=size)
        arch = PatchSVDD({"test_strides": None})._resolve(split)
        assert arch["patch_sizes"] == sizes
        if size == 256:
            assert arch["test_strides"] == [16, 4]
        if size == 128:
            assert arch["test_strides"] == [8, 2]
    assert PatchSVDD()._resolve(make_split(1, 0, seed=0, size=128))["test_strides"] == DEFAULT_PARAMS["test_strides"]
    assert PAPER_PARAMS["patch_sizes"] == [64, 32] and PAPER_PARAMS["epochs"] == 300 and PAPER_PARAMS["lambda"] == 1e-3
    with pytest.raises(ValueError, match="patch_sizes"):
        PatchSVDD({"patch_sizes": [16, 16]})._resolve(make_split(1, 0, seed=0))
    with pytest.raises(ValueError, match="test_strides"):
        PatchSVDD({"test_strides": [3, 4]})._resolve(make_split(1, 0, seed=0))
    with pytest.raises(ValueError, match="unknown PatchSVDD params"):
        PatchSVDD({"lamda": 1})


# -------------------------------------------------------------------------------------------- the method
def test_prediction_shapes_and_ranges(fitted, splits):
    _, pred, _, _ = fitted
    test = splits[1]
    assert pred.scores.shape == (len(test),) and pred.maps.shape == (len(test), SIZE, SIZE)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert pred.maps.min() >= 0.0
    np.testing.assert_allclose(pred.scores, pred.maps.reshape(len(test), -1).max(1), rtol=1e-6)


def test_training_lowers_the_loss_and_logs_each_epoch(fitted):
    method, _, tracker, leaked = fitted
    assert len(method.history) == FIT_PARAMS["epochs"]
    assert method.history[-1] < method.history[0] - 0.05
    assert [step for _, step in tracker.calls] == list(range(FIT_PARAMS["epochs"]))
    names = {"train_loss", "train_pos_big", "train_pos_small", "train_svdd_big", "train_svdd_small"}
    assert set(tracker.calls[0][0]) == names
    assert not leaked, "fit changed the global torch/numpy random state"


def test_backbone_encoder_variant(tmp_path):
    train, test = make_split(12, 0, seed=3), make_split(4, 4, seed=4)
    method = PatchSVDD({"encoder": "backbone", "epochs": 3, "repeat": 4, "progress": False}, seed=0).fit(train)
    assert method.arch["feature_channels"] == 4 and method.arch["cell_offset"] == 1
    pred = method.predict(test)
    assert pred.maps.shape == (8, SIZE, SIZE) and np.isfinite(pred.scores).all()
    method.save(tmp_path / "bb.pt")
    np.testing.assert_array_equal(PatchSVDD.load(tmp_path / "bb.pt").predict(test).maps, pred.maps)
