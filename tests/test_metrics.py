"""Tests of adbench.evaluation.metrics against scikit-learn, brute force and hand-computed curves."""
from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from adbench.evaluation import metrics

SEEDS = range(6)


def _random_binary(rng, n, tie_decimals):
    labels = rng.random(n) < 0.3
    labels[:2] = [0, 1]  # both classes present
    scores = rng.random(n) + 0.4 * labels
    return labels.astype(int), (np.round(scores, tie_decimals) if tie_decimals is not None else scores)


# --------------------------------------------------------------------------------------- AUROC / AP


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1, 0])  # continuous, many ties, almost all tied
def test_auroc_and_ap_match_sklearn(seed, decimals):
    labels, scores = _random_binary(np.random.default_rng(seed), 300, decimals)
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_auroc_ap_simple_values():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # one tied step is a diagonal, not a staircase
    assert metrics.average_precision([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


@pytest.mark.parametrize("fn", [metrics.roc_auc, metrics.average_precision, metrics.f1_max])
def test_one_class_raises(fn):
    with pytest.raises(ValueError, match="one class"):
        fn([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class"):
        fn([0, 0], [0.1, 0.2])


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        metrics.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        metrics.roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        metrics.roc_auc([0, 1], [0.1, np.nan])


# --------------------------------------------------------------------------------------- F1 max


def _f1_max_brute(labels, scores):
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [None, 1])
def test_f1_max_matches_brute_force(seed, decimals):
    labels, scores = _random_binary(np.random.default_rng(seed), 200, decimals)
    assert metrics.f1_max(labels, scores) == pytest.approx(_f1_max_brute(labels, scores), abs=1e-12)


def test_f1_max_perfect_separation_is_one():
    # 7 normal, 8 anomalous, perfectly separated.  With a strict "score > t" at the test-fitted threshold
    # t = 0.6 (anomalib's rule) the lowest anomaly is missed: F1 = 2*7 / (2*7 + 0 + 1) = 14/15 = 0.933.
    labels = np.array([0] * 7 + [1] * 8)
    scores = np.array([0.0, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5] + [0.6, 0.7, 0.7, 0.8, 0.8, 0.9, 0.95, 1.0])
    assert metrics.f1_max(labels, scores) == 1.0
    assert metrics.f1_max(labels, scores + 100) == 1.0


def test_f1_max_ties_are_one_threshold():
    # All scores tied: the only non-trivial prediction is "everything anomalous": F1 = 2*1 / (2*1 + 3).
    assert metrics.f1_max([1, 0, 0, 0], [0.5] * 4) == pytest.approx(2 / 5)


# --------------------------------------------------------------------------------------- AUPRO


def _aupro_brute(masks, maps, limit):
    """Independent reference: loop over every threshold, integrate segment by segment up to ``limit``."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, reg) for i, lab in enumerate(labelled) for reg in (lab == r for r in range(1, lab.max() + 1))]
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        pro = np.mean([hit[i][reg].mean() for i, reg in regions])
        points.append((hit[normal].mean(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += np.trapezoid([y0, y1], [x0, x1])
    return area / limit


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[0, 1:3, 1:4] = 1
    masks[1, 5:8, 0:2] = 1
    masks[1, 0, 7] = 1
    assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert metrics.aupro(masks, 1.0 - masks) == pytest.approx(0.0)
    # A constant map is one tied step, the diagonal (0,0)-(1,1): area 0.3*0.3/2, normalised 0.15.
    assert metrics.aupro(masks, np.full(masks.shape, 0.5)) == pytest.approx(0.15)


def _two_region_case(split_images):
    # Region A: 2 pixels, score 1.0 (found at FPR 0).  Region B: 4 pixels, score 0.5.
    # 10 normal pixels: 2 score 0.7 (FPR 0.2 before B is reached), 8 score 0.0.
    # Curve: (0,0) -> (0,0.5) -> (0.2,0.5) -> (0.2,1) -> (1,1).
    # Same flat indices either way: one (4,4) image (A in row 0, B is row 2), or two (2,4) images (B in image 1).
    masks = np.zeros((2, 2, 4) if split_images else (1, 4, 4), dtype=np.uint8)
    maps = np.zeros(masks.shape)
    a, b, fp = [0, 1], [8, 9, 10, 11], [2, 3]
    masks.reshape(-1)[a + b] = 1
    maps.reshape(-1)[a], maps.reshape(-1)[b], maps.reshape(-1)[fp] = 1.0, 0.5, 0.7
    return masks, maps


@pytest.mark.parametrize("split_images", [False, True])
def test_aupro_two_regions_of_different_size(split_images):
    masks, maps = _two_region_case(split_images)
    assert masks.sum() == 6 and (masks == 0).sum() == 10
    # Per-region mean: (0.5*0.2 + 1.0*0.1) / 0.3 = 0.2/0.3 = 2/3.
    # (A pixel-weighted PRO would give (1/3*0.2 + 0.1)/0.3 = 0.556; dividing by the last FPR <= 0.3
    # instead of by 0.3, as anomalib < 2.2 did, would give 0.1/0.2 = 0.5.)
    assert metrics.aupro(masks, maps) == pytest.approx(2 / 3)
    # Up to FPR 1: 0.5*0.2 + 1.0*0.8 = 0.9.
    assert metrics.aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.9)


def test_aupro_interpolates_at_limit():
    # One 4-pixel region, 10 normal pixels.  Two region pixels at 0.9 -> (0, 0.5); one tied group at 0.5 of
    # 2 region + 4 normal pixels -> (0.4, 1.0), crossing the limit; 6 normal pixels at 0 -> (1, 1).
    # PRO at 0.3 on the segment (0,0.5)-(0.4,1): 0.5 + 0.5*0.3/0.4 = 0.875.
    # Area: (0.5 + 0.875)/2 * 0.3 = 0.20625; divided by 0.3: 0.6875.
    masks = np.zeros((1, 2, 7), dtype=np.uint8)
    masks[0, 0, :4] = 1
    maps = np.zeros(masks.shape)
    maps[0, 0, :2] = 0.9
    maps[0, 0, 2:4] = 0.5
    maps[0, 1, :4] = 0.5
    assert metrics.aupro(masks, maps) == pytest.approx(0.6875)


def test_aupro_regions_are_8_connected():
    # (0,0) and (1,1) touch by a corner: ONE region, half found at the top score; (4,4) is another region,
    # fully found.  8-connectivity: PRO = (0.5 + 1)/2 = 0.75 over FPR [0, 1) -> 0.75.
    # (4-connectivity would make three regions: (1 + 0 + 1)/3 = 0.667.)
    masks = np.zeros((1, 5, 5), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 4, 4] = 1
    maps = np.full(masks.shape, 0.5)
    maps[0, 0, 0] = maps[0, 4, 4] = 1.0
    maps[0, 1, 1] = 0.0
    assert metrics.aupro(masks, maps) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed, limit):
    rng = np.random.default_rng(seed)
    masks = (rng.random((3, 9, 9)) < 0.2).astype(np.uint8)
    masks[0, 0, 0], masks[0, -1, -1] = 1, 0
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 1)  # many ties
    assert metrics.aupro(masks, maps, limit) == pytest.approx(_aupro_brute(masks, maps, limit), abs=1e-12)


def test_aupro_bad_inputs_raise():
    with pytest.raises(ValueError):
        metrics.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))  # no region
    with pytest.raises(ValueError):
        metrics.aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))  # no normal pixel
    with pytest.raises(ValueError):
        metrics.aupro(np.ones((4, 4)), np.zeros((4, 4)))  # not (N, H, W)


# --------------------------------------------------------------------------------------- evaluate


def test_evaluate_keys_and_ranges():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 16, 16), dtype=np.uint8)
    masks[3:, 4:9, 5:11] = 1
    maps = rng.random(masks.shape) + masks
    labels = masks.reshape(6, -1).max(1)
    scores = maps.reshape(6, -1).max(1)
    out = metrics.evaluate(labels, scores, masks, maps)
    assert set(out) == {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max",
                        "pixel_aupro"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert out["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert out["pixel_f1_max"] == pytest.approx(metrics.f1_max(masks.ravel(), maps.ravel()))
    assert out["pixel_aupro"] == pytest.approx(metrics.aupro(masks, maps))


def test_per_defect_separates_a_large_subtle_defect_from_small_obvious_ones():
    """The embedded textures' case: a large, barely visible `colour` defect dominates the pooled pixel AUROC
    while every small local defect is found; per type the two stand apart, per kind too."""
    rng = np.random.default_rng(0)
    n, size = 12, 16
    types = ["good"] * 4 + ["scratch"] * 4 + ["colour"] * 4
    labels = np.array([t != "good" for t in types], dtype=int)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    maps = rng.normal(0, 0.1, (n, size, size))
    for i in range(4, 8):  # small defects, clearly found
        masks[i, 2:4, 2:4] = 1
        maps[i, 2:4, 2:4] += 5
    for i in range(8, 12):  # large defects, missed: their maps look normal
        masks[i, :, :12] = 1
    scores = maps.reshape(n, -1).max(1)
    out = metrics.per_defect(labels, types, scores, masks, maps, {"scratch": "local", "colour": "hard_global"})
    scratch, colour = out["defect_types"]["scratch"], out["defect_types"]["colour"]
    assert scratch["pixel_auroc"] == 1.0 and scratch["image_auroc"] == 1.0 and scratch["kind"] == "local"
    assert colour["pixel_auroc"] < 0.7 and colour["n"] == 4
    pooled = metrics.roc_auc(masks.ravel(), maps.ravel())
    assert pooled < 0.75  # the colour pixels (192 per image vs 4) decide the pooled number
    chosen = np.array([t in ("good", "scratch") for t in types])
    assert scratch["pixel_auroc"] == pytest.approx(roc_auc_score(masks[chosen].ravel(), maps[chosen].ravel()))
    assert out["defect_kinds"]["local"] == {"types": ["scratch"], **{k: scratch[k] for k in ("n", "image_auroc",
                                                                                             "pixel_auroc")}}
    assert set(out["defect_kinds"]) == {"local", "hard_global"}
    unlabelled = metrics.per_defect(labels, types, scores, masks, maps)
    assert unlabelled["defect_kinds"] == {} and unlabelled["defect_types"]["colour"]["kind"] == "unclassified"
    with pytest.raises(ValueError, match="disagree"):
        metrics.per_defect(1 - labels, types, scores, masks, maps)


@pytest.mark.parametrize("seed", range(4))
def test_one_sort_shared_by_subsets_gives_each_subsets_own_order(seed):
    """``_subset_order`` (per_defect's groups, pixel_metrics' PRO curve) equals sorting the subset itself,
    element for element, also through tie groups (quantised scores, -0.0 beside 0.0), so the metrics that
    reuse one sort keep every bit: per_defect's pixel AUROCs against roc_auc on each group, and the PRO
    curve against a separate sort."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=3000), 1)
    scores[rng.random(3000) < 0.05] = -0.0
    scores[rng.random(3000) < 0.05] = 0.0
    order, _ = metrics._sort_desc(scores)
    for keep in (rng.random(3000) < 0.3, rng.random(3000) < 0.9, np.arange(3000) % 7 == 0):
        expected, _ = metrics._sort_desc(scores[keep])
        assert np.array_equal(metrics._subset_order(order, keep), expected)

    n, size = 10, 12
    types = ["good"] * 4 + ["scratch"] * 3 + ["colour"] * 3
    labels = np.array([t != "good" for t in types], dtype=int)
    masks = (rng.random((n, size, size)) < 0.2).astype(np.uint8) * labels[:, None, None]
    maps = np.round(rng.random((n, size, size)) + masks * 0.3, 1).astype(np.float32)
    scores = maps.reshape(n, -1).max(1).astype(np.float64)
    out = metrics.per_defect(labels, types, scores, masks, maps, {"scratch": "local", "colour": "hard_global"})
    for defect in ("scratch", "colour"):
        chosen = np.array([t in ("good", defect) for t in types])
        assert out["defect_types"][defect]["pixel_auroc"] == metrics.roc_auc(masks[chosen].ravel(),
                                                                             maps[chosen].ravel())
    pixel = metrics.pixel_metrics(masks, maps)
    assert pixel["pixel_aupro"] == metrics.aupro(masks, maps)
    assert pixel["pixel_auroc"] == metrics.roc_auc(masks.ravel(), maps.ravel())
