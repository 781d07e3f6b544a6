"""Anomaly scoring (Eq. 12 and the authors' test code) on hand-checkable inputs."""
import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from fod.scoring import correlation_factor, image_scores, level_map, raw_div_scores, token_scores

REC = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
DIV = torch.tensor([[0.0, 0.0, 0.0, math.log(3.0)]])  # softmax(-DIV) = [0.3, 0.3, 0.3, 0.1]


def test_eq12_official_max_minus_softmax():
    factor = correlation_factor(DIV, "inter", "max_minus")
    torch.testing.assert_close(factor, torch.tensor([[0.0, 0.0, 0.0, 0.2]]))
    torch.testing.assert_close(token_scores(REC, factor), torch.tensor([[0.0, 0.0, 0.0, 0.8]]))


def test_eq12_paper_one_minus_softmax():
    factor = correlation_factor(DIV, "inter", "one_minus")
    torch.testing.assert_close(token_scores(REC, factor), torch.tensor([[0.7, 1.4, 2.1, 3.6]]))


def test_intra_factor_scores_low_divergence_high():
    factor = correlation_factor(DIV, "intra", "max_minus")
    torch.testing.assert_close(factor, torch.tensor([[0.3, 0.3, 0.3, 0.1]]))


def test_raw_div_keeps_the_direction_and_the_scale_that_the_softmax_drops():
    torch.testing.assert_close(raw_div_scores(DIV, "inter"), DIV)
    torch.testing.assert_close(raw_div_scores(DIV, "intra"), -DIV)
    # two images whose divergences differ by a constant: the softmax factor cannot tell them apart, the raw
    # score ranks every token of the second image above the first's
    two = torch.cat([DIV, DIV + 5.0])
    for branch in ("intra", "inter"):
        factor = correlation_factor(two, branch, "one_minus")
        torch.testing.assert_close(factor[0], factor[1])
        raw = raw_div_scores(two, branch)
        assert torch.equal(raw[0].argsort(stable=True), factor[0].argsort(stable=True))  # same order in an image
    assert raw_div_scores(two, "inter")[1].min() > raw_div_scores(two, "inter")[0].max()


def test_rec_only_and_div_only():
    assert torch.equal(token_scores(REC, None), REC)
    assert torch.equal(token_scores(None, DIV), DIV)


def test_level_map_is_bilinear_with_aligned_corners():
    maps = level_map(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), (2, 2), 5)
    assert maps.shape == (1, 5, 5)
    assert maps[0, 0, 0] == 1 and maps[0, 0, 4] == 2 and maps[0, 4, 0] == 3 and maps[0, 4, 4] == 4
    torch.testing.assert_close(maps[0, 2, 2], torch.tensor(2.5))


def test_image_score_is_the_max_of_the_gaussian_smoothed_map():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 32, 32)).astype(np.float32)
    maps[1, 10:14, 10:14] += 5.0
    scores = image_scores(maps)
    assert scores.shape == (3,) and scores.argmax() == 1
    np.testing.assert_allclose(scores, [gaussian_filter(m.astype(np.float64), sigma=4).max() for m in maps])
