"""adbench.reporting.significance against hand-derived numbers and independent computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage, stats
from sklearn.metrics import roc_auc_score

from adbench.features.cache import save_split
from adbench.protocol import Split
from adbench.methods.runs import run_folder
from adbench.reporting.significance import (
    _hist_auc, _resampled_auc, _unit_histograms, compare_runs, critical_difference, delong, delong_placements, friedman_nemenyi,
    holm, paired_bootstrap_image, paired_bootstrap_pixel, summarise, wilcoxon_per_baseline, write_significance,
)


def correlated_scores(rng, m: int, n: int, mu_a: float, mu_b: float, rho: float):
    """Binormal scorers on m anomalous + n normal images: a ~ N(mu_a y, 1), b ~ N(mu_b y, 1), their noise
    correlated by rho, so AUROC_a = Phi(mu_a / sqrt 2) (likewise b)."""
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    z1, z2 = rng.standard_normal((2, m + n))
    return y, mu_a * y + z1, mu_b * y + rho * z1 + math.sqrt(1 - rho ** 2) * z2


def pairwise_kernel(y, s):
    """psi(x_i, y_j) = 1 if anomalous i outscores normal j, 1/2 on a tie: (m, n), O(mn), no ranks."""
    pos, neg = s[y == 1], s[y == 0]
    return (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])


# --------------------------------------------------------------------------------------------- DeLong
def test_delong_worked_example_by_hand():
    # anomalous x = (0.9, 0.6, 0.4), normal y = (0.5, 0.3, 0.6, 0.1); one tie (0.6, 0.6).
    # v10_i = share of normals below x_i, ties half: 0.9 -> 4/4; 0.6 -> (3 + 1/2)/4 = 7/8; 0.4 -> 2/4.
    # v01_j = share of anomalous above y_j, ties half: 0.5 -> 2/3; 0.3 -> 1; 0.6 -> (1 + 1/2)/3 = 1/2; 0.1 -> 1.
    # AUROC = mean v10 = (1 + 7/8 + 1/2)/3 = 19/24 = mean v01 = (2/3 + 1 + 1/2 + 1)/4.
    # S10 = sample var of v10 = ((5/24)^2 + (2/24)^2 + (7/24)^2)/2 = 78/576/2 = 39/576;
    # S01 = ((3/24)^2 + (5/24)^2 + (7/24)^2 + (5/24)^2)/3 = 108/576/3 = 36/576;
    # var(AUROC) = S10/m + S01/n = 13/576 + 9/576 = 22/576 = 11/288.
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.6, 0.4, 0.5, 0.3, 0.6, 0.1]
    auc, v10, v01 = delong_placements(labels, scores)
    np.testing.assert_allclose(v10, [1, 7 / 8, 1 / 2])
    np.testing.assert_allclose(v01, [2 / 3, 1, 1 / 2, 1])
    assert auc == pytest.approx(19 / 24)
    result = delong(labels, scores, [0.8, 0.1, 0.7, 0.2, 0.4, 0.3, 0.5])
    assert result.auc_a == pytest.approx(19 / 24)
    assert result.se_a ** 2 == pytest.approx(11 / 288)


def test_delong_against_pairwise_structural_components_and_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.permutation(np.r_[np.ones(23, int), np.zeros(31, int)])
    a = rng.integers(0, 6, y.size) + 2 * y  # integer scores: many ties, within and across classes
    b = rng.integers(0, 4, y.size) + y + (a > 4)
    result = delong(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert result.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    # DeLong's original O(mn) definition: placements are row/column means of the kernel matrix.
    ka, kb = pairwise_kernel(y, a), pairwise_kernel(y, b)
    m, n = ka.shape
    v10 = np.stack([ka.mean(1), kb.mean(1)])
    v01 = np.stack([ka.mean(0), kb.mean(0)])
    cov = np.cov(v10) / m + np.cov(v01) / n
    assert result.se_a ** 2 == pytest.approx(cov[0, 0], rel=1e-10)
    assert result.se_b ** 2 == pytest.approx(cov[1, 1], rel=1e-10)
    assert result.se ** 2 == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], rel=1e-10)
    z = (ka.mean() - kb.mean()) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert result.z == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)


def test_delong_variance_of_difference_matches_a_20k_paired_bootstrap():
    rng = np.random.default_rng(2)
    y, a, b = correlated_scores(rng, 150, 150, 1.0, 0.7, 0.6)
    se = delong(y, a, b).se
    # Independent: stratified bootstrap as multinomial draw counts c (anomalous) and d (normal) applied
    # to the pairwise kernel of the difference, AUROC_a - AUROC_b = c K d^T / (m n).
    k = pairwise_kernel(y, a) - pairwise_kernel(y, b)
    m, n = k.shape
    c = rng.multinomial(m, np.full(m, 1 / m), 20000).astype(float)
    d = rng.multinomial(n, np.full(n, 1 / n), 20000).astype(float)
    diffs = ((c @ k) * d).sum(1) / (m * n)
    assert se ** 2 == pytest.approx(diffs.var(), rel=0.10)


def test_delong_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(3)
    p = []
    for _ in range(300):
        y = np.r_[np.ones(50, int), np.zeros(50, int)]
        shared = rng.standard_normal(100)
        a = y + shared + 0.8 * rng.standard_normal(100)  # exchangeable: same law, same correlation
        b = y + shared + 0.8 * rng.standard_normal(100)
        p.append(delong(y, a, b).p_value)
    p = np.asarray(p)
    assert 0.02 <= (p < 0.05).mean() <= 0.09
    assert 0.40 <= (p < 0.5).mean() <= 0.60


def test_delong_degenerate_cases():
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.5, 0.3, 0.1])
    same = delong(y, s, s.copy())
    assert (same.z, same.p_value, same.se) == (0.0, 1.0, 0.0) and "identical scores" in same.note
    both_perfect = delong(y, [5, 6, 7, 1, 2, 3], [0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    assert (both_perfect.auc_a, both_perfect.auc_b, both_perfect.z, both_perfect.p_value) == (1, 1, 0, 1)
    assert "zero DeLong variance" in both_perfect.note
    against_constant = delong(y, [5, 6, 7, 1, 2, 3], np.ones(6))
    assert against_constant.diff == 0.5 and against_constant.z == math.inf and against_constant.p_value == 0
    assert against_constant.note
    assert delong(y, s, s[::-1]).note == ""


@pytest.mark.parametrize("labels, a, b, message", [
    ([1, 0, 1, 0], [1, 2, 3], [1, 2, 3, 4], "equal length"),
    ([1, 1, 1, 1], [1, 2, 3, 4], [1, 2, 3, 4], "one class"),
    ([1, 0, 1, 0], [1, np.nan, 3, 4], [1, 2, 3, 4], "scores_a contain NaN"),
    ([1, 0, 1, 0], [1, 2, 3, 4], [1, 2, np.inf, 4], "scores_b contain NaN or infinite"),
    ([1, 0, 2, 0], [1, 2, 3, 4], [1, 2, 3, 4], "only 0 and 1"),
    ([1, 0, 0, 0], [1, 2, 3, 4], [1, 2, 3, 4], "at least 2 anomalous and 2 normal"),
])
def test_delong_rejects_bad_input(labels, a, b, message):
    with pytest.raises(ValueError, match=message):
        delong(labels, a, b)


# ----------------------------------------------------------------------------------------------- Holm
def test_holm_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 (K = 4) -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04, 0.03, 0.005]), [0.03, np.nan, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6, 0.01]), [1.0, 1.0, 0.03])
    assert holm([]).size == 0


# ------------------------------------------------------------------------------------------ bootstrap
def test_image_bootstrap_ci_covers_the_true_difference():
    rng = np.random.default_rng(4)
    truth = stats.norm.cdf(1.2 / math.sqrt(2)) - stats.norm.cdf(0.7 / math.sqrt(2))
    hits = []
    for i in range(200):
        y, a, b = correlated_scores(rng, 60, 60, 1.2, 0.7, 0.5)
        diff, lo, hi = paired_bootstrap_image(y, a, b, n_boot=400, seed=i)
        if i < 5:
            assert diff == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
        assert lo <= diff <= hi
        hits.append(lo <= truth <= hi)
    assert 0.89 <= np.mean(hits) <= 0.99


def test_image_bootstrap_ci_width_agrees_with_delong():
    y, a, b = correlated_scores(np.random.default_rng(5), 100, 120, 1.0, 0.6, 0.5)
    _, lo, hi = paired_bootstrap_image(y, a, b, n_boot=3000, seed=0)
    assert (hi - lo) == pytest.approx(2 * stats.norm.ppf(0.975) * delong(y, a, b).se, rel=0.15)


def test_bootstraps_stratify_so_a_rare_class_is_never_drawn_out():
    # 3 anomalous among 33: an unstratified resample lacks them with probability (30/33)^33 = 4%, which
    # would leave undefined AUROCs among 2000 resamples.  Likewise 2 anomalous images among 30 for pixels.
    rng = np.random.default_rng(9)
    y = np.r_[np.ones(3, int), np.zeros(30, int)]
    assert np.isfinite(paired_bootstrap_image(y, y + rng.random(33), rng.random(33))).all()
    masks = np.zeros((30, 4, 4), np.uint8)
    masks[:2, :2, :2] = 1
    assert np.isfinite(paired_bootstrap_pixel(masks, masks + rng.random(masks.shape), rng.random(masks.shape))).all()


def realistic_maps(rng, n: int = 50, size: int = 128):
    """Smooth anomaly maps of two methods (float16, like maps.npz) and blob masks on half of the images."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n // 2):
        cy, cx, ry, rx = rng.uniform(20, size - 20, 2).tolist() + rng.uniform(4, 16, 2).tolist()
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = []
    for strength, blur in ((1.5, 4.0), (1.0, 2.0)):
        noise = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 3, 3)) * 6
        signal = ndimage.gaussian_filter(masks.astype(float), (0, blur, blur)) * strength
        maps.append(np.exp(noise + signal).astype(np.float16))
    return masks, maps[0], maps[1]


@pytest.mark.parametrize("seed", [7, 11, 12])
def test_a_resample_auroc_from_the_pair_matrix_equals_the_resampled_histograms_bit_for_bit(seed):
    """The bootstrap's AUROC of a resample, w M w over the draw counts w (``_resampled_auc``), against the
    AUROC of the resampled histograms themselves, at the sizes of a pixel bootstrap (50 images of 128 x 128
    pixels in 2,048 bins), ties included: every sum is a count or half a count, so they must be equal."""
    masks, map_a, _ = realistic_maps(np.random.default_rng(seed))
    n = masks.shape[0]
    pos, neg = _unit_histograms(map_a.reshape(-1).astype(np.float64), masks.reshape(-1).astype(bool),
                                np.repeat(np.arange(n), masks[0].size), n, 2048)
    counts = np.random.default_rng(seed + 1).multinomial(n, np.full(n, 1.0 / n), 200).astype(np.float64)
    direct = _hist_auc(counts @ pos, counts @ neg)
    assert np.array_equal(_resampled_auc((pos, neg), counts), direct)
    assert np.unique(direct).size > 100  # the resamples differ, so the comparison is not of one value


def test_pixel_histogram_auroc_is_within_1e3_of_exact():
    masks, map_a, map_b = realistic_maps(np.random.default_rng(6))
    flat = masks.reshape(-1)
    exact_a = roc_auc_score(flat, map_a.reshape(-1).astype(np.float32))
    exact_b = roc_auc_score(flat, map_b.reshape(-1).astype(np.float32))
    units = np.repeat(np.arange(masks.shape[0]), masks[0].size)
    for maps, exact in ((map_a, exact_a), (map_b, exact_b)):
        values = maps.reshape(-1).astype(np.float64)
        assert np.unique(values).size > 2048  # so the 2048 bins really approximate
        pos, neg = _unit_histograms(values, flat.astype(bool), units, masks.shape[0], 2048)
        assert _hist_auc(pos.sum(0), neg.sum(0)) == pytest.approx(exact, abs=1e-3)
        pos, neg = _unit_histograms(values, flat.astype(bool), units, masks.shape[0], None)
        assert _hist_auc(pos.sum(0), neg.sum(0)) == pytest.approx(exact, abs=1e-9)
    diff, lo, hi = paired_bootstrap_pixel(masks, map_a, map_b, n_boot=300, seed=0)
    assert diff == pytest.approx(exact_a - exact_b, abs=1e-3)
    assert lo < diff < hi
    assert paired_bootstrap_pixel(masks, map_a, map_a, n_boot=50) == (0.0, 0.0, 0.0)


def test_pixel_bootstrap_resamples_images_not_pixels():
    # One image's pixels all agree: it decides the sign of the difference alone.  Resampling images
    # must show that uncertainty, so the CI must be much wider than a naive pixel-level bootstrap's.
    # 16 x 16 pixels per image: over seeds 0-29 the ratio of the two CI widths is at least 3.4 (at 8 x 8 it fell to
    # 1.7 for some seeds: too few pixels per image for the naive CI to be clearly narrower)
    rng = np.random.default_rng(7)
    masks = np.zeros((20, 16, 16), np.uint8)
    masks[:10, 4:12, 4:12] = 1
    map_a = rng.random(masks.shape) + masks * rng.uniform(0, 1.5, (20, 1, 1))  # image-level random boost
    map_b = rng.random(masks.shape) + masks * 0.75
    _, lo, hi = paired_bootstrap_pixel(masks, map_a, map_b, n_boot=1000, bins=None)
    _, naive_lo, naive_hi = paired_bootstrap_image(masks.reshape(-1), map_a.reshape(-1), map_b.reshape(-1),
                                                   n_boot=300)  # every pixel its own unit
    assert hi - lo > 2 * (naive_hi - naive_lo)


def test_pixel_bootstrap_rejects_bad_input():
    masks = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="one class"):
        paired_bootstrap_pixel(masks, np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))
    masks[0, 0, 0] = 1
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap_pixel(masks, np.zeros((3, 4, 5)), np.zeros((3, 4, 4)))


# -------------------------------------------------------------------------------- across categories
def test_wilcoxon_small_n_hits_its_exact_floor_and_drops_missing():
    auroc = pd.DataFrame({"fod": [0.9, 0.8, 0.95, 0.7, 0.85, 0.6], "a": [0.8, 0.75, 0.9, 0.6, 0.84, np.nan],
                          "b": [0.9, 0.8, 0.95, 0.7, 0.85, 0.6]}, index=list("uvwxyz"))
    table = wilcoxon_per_baseline(auroc).set_index("baseline")
    # 5 categories, all fod > a: the most extreme of 2^5 sign patterns, two-sided p = 2/32
    assert table.loc["a", "n"] == 5 and table.loc["a", "statistic"] == 0
    assert table.loc["a", "p_value"] == pytest.approx(2 / 32) and table.loc["a", "min_p"] == pytest.approx(2 / 32)
    assert table.loc["a", "median_diff"] == pytest.approx(0.05)
    assert table.loc["b", "p_value"] == 1.0 and table.loc["b", "median_diff"] == 0


def test_friedman_nemenyi_by_hand():
    auroc = pd.DataFrame({"fod": [0.90, 0.95, 0.70, 0.99], "a": [0.80, 0.96, 0.60, 0.80],
                          "b": [0.70, 0.50, 0.90, 0.85]}, index=["c1", "c2", "c3", "c4"])
    # ranks (1 = best) per row: c1 1,2,3; c2 2,1,3; c3 2,3,1; c4 1,3,2 -> mean 1.5, 2.25, 2.25
    fn = friedman_nemenyi(auroc)
    np.testing.assert_allclose(fn.ranks[["fod", "a", "b"]], [1.5, 2.25, 2.25])
    # chi2_F = 12 N / (k (k+1)) * (sum R_j^2 - k (k+1)^2 / 4) = 4 * (2.25 + 2 * 5.0625 - 12) = 1.5,
    # and chi2 with 2 degrees of freedom has sf(x) = exp(-x / 2)
    assert fn.statistic == pytest.approx(1.5) and fn.p_value == pytest.approx(math.exp(-0.75))
    # Nemenyi: |R_i - R_j| / sqrt(k (k+1) / (6 N)) * sqrt 2 against the studentized range (k, inf)
    q = 0.75 / math.sqrt(3 * 4 / 24) * math.sqrt(2)
    assert fn.nemenyi.loc["fod", "a"] == pytest.approx(stats.studentized_range.sf(q, 3, np.inf), rel=1e-3)
    assert fn.nemenyi.loc["a", "b"] == pytest.approx(1.0)
    ties = auroc.assign(a=[0.80, 0.96, 0.70, 0.80])  # c3 now ties fod and a: midranks 2.5, 2.5
    np.testing.assert_allclose(friedman_nemenyi(ties).ranks[["fod", "a", "b"]], [1.625, 2.125, 2.25])


def test_critical_difference_matches_demsar_table():
    demsar = 2.850 * math.sqrt(6 * 7 / (6 * 15))  # q_0.05(k = 6) = 2.850 tabulated in Demšar (2006)
    assert critical_difference(6, 15) == pytest.approx(demsar, abs=0.005)
    assert critical_difference(6, 15) == pytest.approx(1.95, abs=0.02)
    assert friedman_nemenyi(pd.DataFrame(np.random.default_rng(0).random((15, 6)))).cd == critical_difference(6, 15)


# -------------------------------------------------------------------------------------- run folders
N_IMAGES, SIZE = 40, 16
STRENGTH = {"fod": 3.0, "patchcore": 2.5, "cflow": 0.2}


def write_runs(root, seeds_of):
    """Feature caches (via save_split) and run folders as adbench.evaluation.evaluate writes them, two categories."""
    rng = np.random.default_rng(8)
    labels = np.r_[np.ones(N_IMAGES // 2, np.int64), np.zeros(N_IMAGES // 2, np.int64)]
    ids = [f"test/{'crack' if l else 'good'}/{i:03d}" for i, l in enumerate(labels)]
    masks = np.zeros((N_IMAGES, SIZE, SIZE), np.uint8)
    masks[labels == 1, 4:10, 5:12] = 1
    for category in ("c1", "c2"):
        split = Split(ids=ids, labels=labels, defect_types=["crack" if l else "good" for l in labels],
                      images=torch.zeros(N_IMAGES, 3, SIZE, SIZE, dtype=torch.uint8),
                      masks=torch.from_numpy(masks), features=[torch.zeros(N_IMAGES, 2, 2, 2)], strides=(8,),
                      backbone="test")
        save_split(split, root / "features" / "ds" / category / "tiny_16" / "test.pt", {"category": category})
        for method, seeds in seeds_of.items():
            for seed in seeds:
                folder = root / "ds" / category / method / f"seed{seed}"
                folder.mkdir(parents=True)
                scores = STRENGTH[method] * labels + rng.standard_normal(N_IMAGES)
                maps = (STRENGTH[method] * masks + rng.standard_normal(masks.shape)).astype(np.float16)
                pd.DataFrame({"id": ids, "label": labels, "defect_type": split.defect_types,
                              "score": scores}).to_csv(folder / "scores.csv", index=False)
                np.savez_compressed(folder / "maps.npz", maps=maps, ids=np.asarray(ids))
    return masks


def test_compare_runs_pairs_seeds_and_matches_direct_computation(tmp_path):
    seeds_of = {"fod": [0, 1], "patchcore": [0], "cflow": [0, 1]}
    masks = write_runs(tmp_path, seeds_of)
    kw = dict(seeds_of=seeds_of, feature_tag="tiny_16", n_boot=200)
    table = compare_runs(tmp_path, "ds", ["c1", "c2"], ["fod", "patchcore", "cflow"], **kw)
    pairs = sorted(set(zip(table["baseline"], table["reference_seed"], table["baseline_seed"])))
    assert pairs == [("cflow", 0, 0), ("cflow", 1, 1), ("patchcore", 0, 0), ("patchcore", 1, 0)]
    assert len(table) == 8
    for row in table.itertuples():
        ref = pd.read_csv(f"{run_folder(tmp_path, 'ds', row.category, 'fod', row.reference_seed)}/scores.csv")
        base = pd.read_csv(f"{run_folder(tmp_path, 'ds', row.category, row.baseline, row.baseline_seed)}/scores.csv")
        assert row.image_auroc_reference == pytest.approx(roc_auc_score(ref["label"], ref["score"]))
        assert row.image_auroc_baseline == pytest.approx(roc_auc_score(base["label"], base["score"]))
        assert row.delong_p == pytest.approx(delong(ref["label"], ref["score"], base["score"]).p_value)
        assert row.image_diff_lo <= row.image_auroc_diff <= row.image_diff_hi
        exact = [roc_auc_score(masks.reshape(-1), np.load(f"{run_folder(tmp_path, 'ds', row.category, m, s)}/maps.npz")
                               ["maps"].reshape(-1).astype(np.float32))
                 for m, s in (("fod", row.reference_seed), (row.baseline, row.baseline_seed))]
        assert row.pixel_auroc_diff == pytest.approx(exact[0] - exact[1], abs=1e-3)
    for _, group in table.groupby(["baseline", "reference_seed", "baseline_seed"]):  # Holm over the 2 categories
        lo, hi = sorted(group["delong_p"])
        assert sorted(group["delong_p_holm"]) == pytest.approx([min(1, 2 * lo), min(1, max(2 * lo, hi))])
    cflow = table[table["baseline"] == "cflow"]
    assert (cflow["delong_p_holm"] < 0.05).all() and (cflow["pixel_diff_lo"] > 0).all()

    csv_out, md_out = tmp_path / "significance.csv", tmp_path / "significance.md"
    write_significance(tmp_path, "ds", ["c1", "c2"], ["fod", "patchcore", "cflow"], csv_out=csv_out,
                       md_out=md_out, **kw)
    pd.testing.assert_frame_equal(pd.read_csv(csv_out).drop(columns="delong_note"),
                                  table.drop(columns="delong_note"), check_dtype=False)
    text = md_out.read_text()
    assert "| cflow | 2 | 2/2 | 0/2 | 2/2 | 0/2 |" in text
    for words in ("DeLong", "Holm", "Wilcoxon signed-rank", "Friedman test over 3 methods and 2 categories",
                  "Nemenyi critical difference", "cannot fall below 2/2^n"):
        assert words in text


def test_summarise_reports_ranges_over_seed_pairings():
    rows = [{"category": c, "baseline": "x", "reference": "fod", "reference_seed": s, "baseline_seed": s,
             "image_auroc_diff": 0.1, "delong_p_holm": p, "pixel_diff_lo": -0.1, "pixel_diff_hi": 0.1,
             "n_boot": 100} for c, s, p in [("c1", 0, 0.01), ("c2", 0, 0.01), ("c1", 1, 0.01), ("c2", 1, 0.2)]]
    across = pd.DataFrame({"fod": [0.9, 0.8], "x": [0.8, 0.75]}, index=["c1", "c2"])
    text = summarise(pd.DataFrame(rows), across)
    assert "| x | 2 | 1–2/2 | 0/2 | 0/2 | 0/2 |" in text and "Friedman test skipped" in text


def reorder(folder, order):
    """Rewrite a run folder's scores.csv and maps.npz in another image order."""
    pd.read_csv(f"{folder}/scores.csv").iloc[order].to_csv(f"{folder}/scores.csv", index=False)
    with np.load(f"{folder}/maps.npz") as blob:
        np.savez_compressed(f"{folder}/maps.npz", maps=blob["maps"][order], ids=blob["ids"][order])


def test_compare_runs_names_both_files_when_ids_differ(tmp_path):
    seeds_of = {"fod": [0], "cflow": [0]}
    write_runs(tmp_path, seeds_of)
    folder = run_folder(tmp_path, "ds", "c2", "cflow", 0)
    order = [1, 0] + list(range(2, N_IMAGES))  # the run was made on a reordered test split
    reorder(folder, order)
    with pytest.raises(ValueError) as err:
        compare_runs(tmp_path, "ds", ["c1", "c2"], ["fod", "cflow"], seeds_of=seeds_of, feature_tag="tiny_16",
                     n_boot=10)
    assert f"{run_folder(tmp_path, 'ds', 'c2', 'fod', 0)}/scores.csv" in str(err.value)
    assert f"{folder}/scores.csv" in str(err.value)
    reorder(run_folder(tmp_path, "ds", "c2", "fod", 0), order)  # both runs agree, the cache does not
    with pytest.raises(ValueError, match="feature cache"):
        compare_runs(tmp_path, "ds", ["c2"], ["fod", "cflow"], seeds_of=seeds_of, feature_tag="tiny_16", n_boot=10)
    with pytest.raises(ValueError, match="share no seed"):
        compare_runs(tmp_path, "ds", ["c1"], ["fod", "cflow"], seeds_of={"fod": [0, 1], "cflow": [2, 3]},
                     feature_tag="tiny_16")
    with pytest.raises(ValueError, match=r"seeds_of has no seeds for method 'cflow'"):
        compare_runs(tmp_path, "ds", ["c1"], ["fod", "cflow"], seeds_of={"fod": [0]}, feature_tag="tiny_16")


def test_compare_runs_keeps_the_order_of_float16_overflow(tmp_path):
    seeds_of = {"fod": [0], "cflow": [0]}
    masks = write_runs(tmp_path, seeds_of)
    fod = run_folder(tmp_path, "ds", "c1", "fod", 0)
    with np.load(f"{fod}/maps.npz") as blob, np.errstate(over="ignore"):  # 1e5 overflows float16: inf on
        np.savez_compressed(f"{fod}/maps.npz", maps=(masks * 1e5).astype(np.float16), ids=blob["ids"])  # anomalies
    row = compare_runs(tmp_path, "ds", ["c1"], ["fod", "cflow"], seeds_of=seeds_of, feature_tag="tiny_16",
                       n_boot=50).iloc[0]
    cflow = np.load(f"{run_folder(tmp_path, 'ds', 'c1', 'cflow', 0)}/maps.npz")["maps"].astype(np.float32)
    assert row.pixel_auroc_diff == pytest.approx(1 - roc_auc_score(masks.reshape(-1), cflow.reshape(-1)), abs=1e-3)


@pytest.mark.parametrize("magnitude", [1e-7, 1.0, 1e6])
def test_maps_npz_keeps_tiny_and_huge_maps_to_float16_precision(tmp_path, magnitude):
    """write_maps stores float16 relative to the maps' maximum: the file holds the maps to float16's relative
    precision, and its pixel AUROC equals the float32 one, however small (PatchSVDD's ~1e-6) or large the
    values; unscaled float16 loses both ends."""
    from adbench.methods.runs import read_maps, write_maps

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 16, 16), dtype=np.uint8)
    masks[3:, 4:9, 4:9] = 1
    maps = (np.exp(rng.normal(size=masks.shape) + 1.5 * masks) * magnitude).astype(np.float32)
    write_maps(tmp_path / "maps.npz", maps, [f"i{k}" for k in range(6)])
    loaded, ids = read_maps(tmp_path / "maps.npz")
    assert ids == [f"i{k}" for k in range(6)] and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, maps, rtol=1e-3, atol=np.abs(maps).max() * 2**-24)
    exact = roc_auc_score(masks.ravel(), maps.ravel())
    assert roc_auc_score(masks.ravel(), loaded.ravel()) == pytest.approx(exact, abs=1e-4)
    if magnitude != 1.0:  # the old unscaled float16 misses the same tolerance (subnormals, or inf)
        with np.errstate(over="ignore", invalid="ignore"):
            raw = maps.astype(np.float16).astype(np.float32)
            assert not np.allclose(raw, maps, rtol=1e-3, atol=np.abs(maps).max() * 2**-24)
