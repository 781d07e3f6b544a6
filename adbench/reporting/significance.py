"""Is FOD better than each baseline?  Paired tests per category, and rank tests across categories.

Per category (the same test images scored by two methods):

* ``delong``: DeLong, DeLong & Clarke-Pearson (1988) test of two correlated image AUROCs, computed with
  the midrank placement values of Sun & Xu (2014) in O(N log N).
* ``paired_bootstrap_image`` / ``paired_bootstrap_pixel``: percentile bootstrap CIs of the AUROC
  difference, resampling test images (within each class) with replacement.  Pixels of one image are
  correlated, so for pixel AUROC the image is the resampling unit, never the pixel.
* ``holm``: Holm-Bonferroni adjustment across the categories of a dataset.

Across categories (one seed-mean AUROC per category and method): ``wilcoxon_per_baseline`` (signed-rank
test of the reference against each baseline) and ``friedman_nemenyi`` (Friedman test, Nemenyi post-hoc
p-values, average ranks and the critical difference of Demšar 2006).

``compare_runs`` applies the per-category tests to the run folders (``scores.csv``, ``maps.npz``) and the
test masks in the feature cache; ``summarise`` words the result; ``write_significance`` writes both.
All AUROC differences are reference minus baseline: positive means the reference (FOD) is better.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from adbench.evaluation.metrics import check_binary, check_scores
from adbench.methods.runs import atomic_path, read_maps, run_folder, write_atomic

__all__ = ["DeLongResult", "delong_placements", "delong", "holm", "paired_bootstrap_image",
           "paired_bootstrap_pixel", "wilcoxon_per_baseline", "FriedmanNemenyi", "friedman_nemenyi",
           "critical_difference", "compare_runs", "seed_means", "summarise", "write_significance"]

PIXEL_BINS = 2048


# ----------------------------------------------------------------------------------------------- DeLong
class DeLongResult(NamedTuple):
    """AUROCs of scorers a and b, ``diff = auc_a - auc_b``, its DeLong standard error ``se``,
    ``z = diff / se``, the two-sided normal ``p_value``; ``se_a``/``se_b``: each AUROC's own DeLong standard
    error; ``note``: why the test is degenerate, when it is (empty otherwise)."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    se_a: float
    se_b: float
    note: str = ""


def delong_placements(labels, scores) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's placement values of one scorer, from midranks (ties count half).

    labels: (N,) in {0, 1}; scores: (N,) finite, higher = more anomalous.  Returns ``(auc, v10, v01)``:
    ``v10`` (m,), for each anomalous image the fraction of normal images scored below it;
    ``v01`` (n,), for each normal image the fraction of anomalous images scored above it.  Both average to
    the AUROC.  With midranks over all images (``tz``) and within each class (``tx``, ``ty``):
    ``v10 = (tz_pos - tx) / n`` and ``v01 = 1 - (tz_neg - ty) / m`` (Sun & Xu 2014).
    """
    labels, scores = _check_labelled(labels, scores, "scores")
    pos, neg = scores[labels], scores[~labels]
    m, n = pos.size, neg.size
    tz = stats.rankdata(np.concatenate([pos, neg]))
    v10 = (tz[:m] - stats.rankdata(pos)) / n
    v01 = 1.0 - (tz[m:] - stats.rankdata(neg)) / m
    return float(v10.mean()), v10, v01


def delong(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong's paired test of AUROC(a) = AUROC(b) on the same N images.

    labels: (N,) in {0, 1}, at least 2 of each; scores_a, scores_b: (N,) finite.  The variance of the
    difference is ``var(v10_a - v10_b) / m + var(v01_a - v01_b) / n`` (sample variances of the placement
    values, m anomalous and n normal images).  When that variance is exactly 0 the normal test is
    undefined: with no difference (identical scores, or both scorers separating the classes perfectly)
    ``z = 0`` and ``p = 1``; with a difference (e.g. a perfect scorer against a constant one) ``z = ±inf``
    and ``p = 0``.  Either way ``note`` says so.
    """
    labels, scores_a = _check_labelled(labels, scores_a, "scores_a")
    _, scores_b = _check_labelled(labels, scores_b, "scores_b")
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 anomalous and 2 normal images, got {m} and {n}")
    auc_a, x_a, y_a = delong_placements(labels, scores_a)
    auc_b, x_b, y_b = delong_placements(labels, scores_b)
    d10, d01 = x_a - x_b, y_a - y_b
    diff = auc_a - auc_b
    se_a = math.sqrt(x_a.var(ddof=1) / m + y_a.var(ddof=1) / n)
    se_b = math.sqrt(x_b.var(ddof=1) / m + y_b.var(ddof=1) / n)
    if np.ptp(d10) == 0 and np.ptp(d01) == 0:  # placements differ by constants: zero variance, exactly
        if diff == 0:
            why = ("identical scores" if np.array_equal(scores_a, scores_b)
                   else "both scorers rank every anomalous/normal pair alike (e.g. both separate perfectly)")
            return DeLongResult(auc_a, auc_b, 0.0, 0.0, 0.0, 1.0, se_a, se_b,
                                f"zero DeLong variance ({why}): no evidence of a difference, p set to 1")
        return DeLongResult(auc_a, auc_b, diff, 0.0, math.copysign(math.inf, diff), 0.0, se_a, se_b,
                            "zero DeLong variance with a nonzero difference (e.g. a perfect scorer against "
                            "a constant one): p = 0 by the formula; rely on the bootstrap CI")
    se = math.sqrt(d10.var(ddof=1) / m + d01.var(ddof=1) / n)
    z = diff / se
    return DeLongResult(auc_a, auc_b, diff, se, z, float(2 * stats.norm.sf(abs(z))), se_a, se_b)


def _check_labelled(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool labels with both classes and (N,) finite float64 scores, or a ValueError naming ``name``."""
    labels = check_binary(labels, "labels")
    scores = check_scores(scores, name)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels and {name} must be 1-D of equal length, got {labels.shape} and {scores.shape}")
    if labels.all() or not labels.any():
        raise ValueError("labels hold one class only; an AUROC needs both normal (0) and anomalous (1) images")
    return labels, scores


# ------------------------------------------------------------------------------------------------- Holm
def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    p_values: (K,) array-like; NaN entries stay NaN and do not count towards K.  The i-th smallest of the
    K valid p-values becomes ``max_{j <= i} min(1, (K - j + 1) p_(j))``: monotone in p, capped at 1.
    """
    p = np.asarray(p_values, dtype=np.float64).copy()
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    k = order.size
    p[order] = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    return p


# ------------------------------------------------------------------------------------------- bootstrap
def paired_bootstrap_image(labels, scores_a, scores_b, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float, float]:
    """Image AUROC(a) - AUROC(b) and its percentile bootstrap CI.

    labels, scores_a, scores_b: (N,) arrays of the same N test images.  Each resample draws the anomalous
    and the normal images separately with replacement (so both classes keep their counts) and evaluates
    both scorers on the same draw.  Exact: every distinct score is its own histogram bin.
    Returns ``(diff, lo, hi)``: the difference on all images and the ``level`` CI.
    """
    labels, scores_a = _check_labelled(labels, scores_a, "scores_a")
    _, scores_b = _check_labelled(labels, scores_b, "scores_b")
    units = np.arange(labels.size)
    hist_a = _unit_histograms(scores_a, labels, units, labels.size, bins=None)
    hist_b = _unit_histograms(scores_b, labels, units, labels.size, bins=None)
    return _bootstrap_diff(hist_a, hist_b, labels, n_boot, seed, level)


def paired_bootstrap_pixel(masks, maps_a, maps_b, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                           bins: int | None = PIXEL_BINS) -> tuple[float, float, float]:
    """Pixel AUROC(a) - AUROC(b) with images as the resampling unit, and its percentile bootstrap CI.

    masks: (N, H, W) in {0, 1}; maps_a, maps_b: (N, H, W) finite anomaly maps.  Resamples draw images
    with anomalous pixels and images without separately, with replacement.

    Approximation: each method's pixel scores are cut into ``bins`` bins at their quantiles (equal scores
    always share a bin; ``None``, or at most ``bins`` distinct scores: one bin per distinct score, exact).
    Each image is reduced to histograms of its anomalous and normal pixels over those bins, a resample's
    AUROC comes from the weighted sum of its images' histograms, and an anomalous and a normal pixel in
    the same bin count half, as a tie would.  Hence the error of each AUROC is at most
    ``0.5 * sum_b P_b Q_b / (P Q)`` (P_b, Q_b: anomalous and normal pixels in bin b), about ``1 / (2 bins)``
    when normal pixels dominate; in practice far smaller (below 1e-3 at 2048 bins, see the tests).
    Returns ``(diff, lo, hi)``: the binned difference on all images and the ``level`` CI.
    """
    masks = check_binary(masks, "masks")
    maps_a, maps_b = check_scores(maps_a, "maps_a"), check_scores(maps_b, "maps_b")
    if masks.ndim != 3 or maps_a.shape != masks.shape or maps_b.shape != masks.shape:
        raise ValueError(f"masks, maps_a and maps_b must be (N, H, W) of one shape, got "
                         f"{masks.shape}, {maps_a.shape} and {maps_b.shape}")
    if masks.all() or not masks.any():
        raise ValueError("masks hold one class only; pixel AUROC needs anomalous and normal pixels")
    return _bootstrap_diff(_pixel_histograms(masks, maps_a, bins), _pixel_histograms(masks, maps_b, bins),
                           masks.any((1, 2)), n_boot, seed, level)


def _pixel_histograms(masks: np.ndarray, maps: np.ndarray, bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (N, K) histograms of anomalous and of normal pixels; masks (N, H, W) bool, maps (N, H, W)."""
    n = masks.shape[0]
    return _unit_histograms(maps.reshape(-1), masks.reshape(-1), np.repeat(np.arange(n), masks[0].size), n, bins)


def _unit_histograms(values: np.ndarray, positive: np.ndarray, units: np.ndarray, n_units: int,
                     bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit counts of positive and of negative samples in each score bin, low scores first.

    values, positive, units: (P,) scores, bool labels and unit index in [0, n_units).  Bins are one per
    distinct value if ``bins`` is None or not smaller than the number of distinct values, else cut at the
    ``bins``-quantiles.  Returns two (n_units, K) float64 arrays.
    """
    distinct = np.unique(values)
    if bins is None or distinct.size <= bins:
        edges = distinct[1:]
    else:
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    k = edges.size + 1
    cell = units * k + np.searchsorted(edges, values, side="right")
    pos = np.bincount(cell[positive], minlength=n_units * k).reshape(n_units, k)
    neg = np.bincount(cell[~positive], minlength=n_units * k).reshape(n_units, k)
    return pos.astype(np.float64), neg.astype(np.float64)


def _hist_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from (..., K) positive and negative counts over ascending score bins; same-bin pairs count half."""
    below = np.cumsum(neg, axis=-1) - neg
    return (pos * (below + 0.5 * neg)).sum(-1) / (pos.sum(-1) * neg.sum(-1))


def _pair_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """(n_units, n_units) matrix M of correctly ranked pairs: M[u, v] counts the pairs (a positive sample of
    unit u, a negative sample of unit v) in which the positive scores higher, ties counting half.

    pos, neg: (n_units, K) counts over ascending score bins.  A resample drawing unit u w[u] times has the
    AUROC ``w @ M @ w / ((w @ pos.sum(1)) * (w @ neg.sum(1)))``: the numerator is bilinear in the draw
    counts, because the number of negatives below a bin is.
    """
    below = np.cumsum(neg, axis=-1) - neg
    return pos @ (below + 0.5 * neg).T


def _resampled_auc(hist: tuple[np.ndarray, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """AUROC of each resample: hist ``(pos, neg)`` (n_units, K) counts, counts (R, n_units) draw counts -> (R,).

    Every quantity is a count or half a count, so while the positive times the negative samples stay below
    2**53 every sum is exact in float64, and this equals ``_hist_auc`` of the resampled histograms bit for
    bit, at the cost of an (n_units, n_units) matrix instead of an (R, K) one per resample block.
    """
    pos, neg = hist
    return ((counts @ _pair_counts(pos, neg)) * counts).sum(-1) / ((counts @ pos.sum(1)) * (counts @ neg.sum(1)))


def _bootstrap_diff(hist_a, hist_b, strata: np.ndarray, n_boot: int, seed: int,
                    level: float) -> tuple[float, float, float]:
    """Point difference and percentile CI of AUROC(a) - AUROC(b) over stratified unit resamples.

    hist_a, hist_b: ``(pos, neg)`` pairs of (n_units, K) histograms; strata: (n_units,) bool, units are
    resampled with replacement within each stratum.  A resample is a (n_units,) vector of draw counts.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, strata.size))
    for members in (np.flatnonzero(strata), np.flatnonzero(~strata)):
        if members.size:
            counts[:, members] = rng.multinomial(members.size, np.full(members.size, 1.0 / members.size), n_boot)
    point = _hist_auc(hist_a[0].sum(0), hist_a[1].sum(0)) - _hist_auc(hist_b[0].sum(0), hist_b[1].sum(0))
    diffs = _resampled_auc(hist_a, counts) - _resampled_auc(hist_b, counts)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(point), float(lo), float(hi)


# ------------------------------------------------------------------------------- across the categories
def wilcoxon_per_baseline(auroc: pd.DataFrame, reference: str = "fod") -> pd.DataFrame:
    """Wilcoxon signed-rank test (two-sided) of ``reference`` against every other column.

    auroc: categories x methods (one value per category, e.g. the seed mean).  Per baseline, the paired
    differences ``reference - baseline`` over the categories where both have a value; zero differences
    are dropped (scipy's ``zero_method="wilcox"``).  scipy's p is exact (or exhaustive over sign flips)
    at these sizes, so with n non-zero differences it cannot be below ``2 / 2**n`` (``min_p``): with 5
    categories 0.0625, i.e. never significant at 0.05.  Returns one row per baseline:
    ``baseline, n, statistic, p_value, median_diff, min_p`` (no non-zero difference: p = 1).
    """
    _check_columns(auroc, [reference])
    rows = []
    for baseline in (c for c in auroc.columns if c != reference):
        d = (auroc[reference] - auroc[baseline]).dropna().to_numpy(dtype=np.float64)
        nonzero = int(np.count_nonzero(d))
        stat, p = (stats.wilcoxon(d) if nonzero else (math.nan, 1.0 if d.size else math.nan))
        rows.append({"baseline": baseline, "n": d.size, "statistic": float(stat), "p_value": float(p),
                     "median_diff": float(np.median(d)) if d.size else math.nan,
                     "min_p": min(1.0, 2.0 / 2 ** nonzero) if nonzero else math.nan})
    return pd.DataFrame(rows, columns=["baseline", "n", "statistic", "p_value", "median_diff", "min_p"])


class FriedmanNemenyi(NamedTuple):
    """Friedman chi-square ``statistic`` and ``p_value``; ``nemenyi``: methods x methods pairwise p-values;
    ``ranks``: average rank per method (1 = highest AUROC); ``cd``: Nemenyi critical difference in ranks."""

    statistic: float
    p_value: float
    nemenyi: pd.DataFrame
    ranks: pd.Series
    cd: float


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference for k methods ranked on n categories (Demšar 2006):
    ``q_alpha(k, inf) / sqrt(2) * sqrt(k (k + 1) / (6 n))``, q from the studentized range distribution."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf)
    return float(q / math.sqrt(2) * math.sqrt(k * (k + 1) / (6 * n)))


def friedman_nemenyi(auroc: pd.DataFrame, alpha: float = 0.05) -> FriedmanNemenyi:
    """Friedman test over methods (columns) blocked by categories (rows), Nemenyi post-hoc p-values
    (``scikit_posthocs.posthoc_nemenyi_friedman``), average ranks and the critical difference at ``alpha``.

    auroc: categories x methods with no missing value, at least 3 methods and 2 categories.
    """
    import scikit_posthocs

    if auroc.isna().any().any():
        missing = auroc.index[auroc.isna().any(axis=1)].tolist()
        raise ValueError(f"friedman_nemenyi needs every method on every category; missing values in {missing}")
    k, n = auroc.shape[1], auroc.shape[0]
    if k < 3 or n < 2:
        raise ValueError(f"the Friedman test needs at least 3 methods and 2 categories, got {k} and {n}")
    values = auroc.to_numpy(dtype=np.float64)
    statistic, p = stats.friedmanchisquare(*values.T)
    ranks = pd.Series(stats.rankdata(-values, axis=1).mean(0), index=auroc.columns, name="average_rank")
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(pd.DataFrame(values, columns=auroc.columns))
    return FriedmanNemenyi(float(statistic), float(p), nemenyi, ranks, critical_difference(k, n, alpha))


# ------------------------------------------------------------------------------------- the run folders
def compare_runs(results_root: str | Path, dataset: str, categories: list[str], methods: list[str],
                 reference: str = "fod", *, seeds_of: dict[str, list[int]], feature_tag: str,
                 n_boot: int = 2000, pixel_bins: int = PIXEL_BINS, seed: int = 0) -> pd.DataFrame:
    """Per-category paired comparison of ``reference`` with every other method of ``methods``.

    Reads each run's ``scores.csv`` and ``maps.npz`` (``adbench.methods.runs.run_folder``) and the test masks from
    ``<results_root>/features/<dataset>/<category>/<feature_tag>/test.pt``.  Seed pairing: a method with a
    single seed (PatchCore: no training randomness) is paired with every seed of the other; otherwise
    seed k with seed k, over the seeds both have.  One row per (category, baseline, seed pairing):
    image AUROCs, DeLong's se, z, p and Holm-adjusted p (Holm across ``categories``, per baseline and seed
    pairing), the image bootstrap CI, and the pixel AUROC difference (``pixel_bins`` bins) with its CI.
    Differences are reference - baseline.
    """
    for method in [reference, *methods]:
        if method not in seeds_of or not seeds_of[method]:
            raise ValueError(f"seeds_of has no seeds for method {method!r}; give e.g. seeds_of[{method!r}] = [0]")
    rows = []
    for category in categories:
        cache = Path(results_root) / "features" / dataset / category / feature_tag / "test.pt"
        masks, mask_ids = _load_masks(cache)
        if masks.all() or not masks.any():
            raise ValueError(f"the test masks in {cache} hold one class only; pixel AUROC needs both")
        runs: dict[tuple[str, int], tuple[pd.DataFrame, np.ndarray, Path]] = {}
        hists: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}  # each run's pixel histograms, once

        def run(method: str, s: int):
            if (method, s) not in runs:
                runs[method, s] = _load_run(Path(run_folder(results_root, dataset, category, method, s)))
            return runs[method, s]

        def pixel_histograms(method: str, s: int):
            if (method, s) not in hists:
                hists[method, s] = _pixel_histograms(masks, runs[method, s][1], pixel_bins)
            return hists[method, s]

        for baseline in (m for m in methods if m != reference):
            for ref_seed, base_seed in _seed_pairs(seeds_of[reference], seeds_of[baseline], baseline, reference):
                ref, base = run(reference, ref_seed), run(baseline, base_seed)
                _check_pair(ref, base, mask_ids, masks.shape, cache)
                labels = ref[0]["label"].to_numpy()
                a, b = ref[0]["score"].to_numpy(), base[0]["score"].to_numpy()
                test = delong(labels, a, b)
                _, lo, hi = paired_bootstrap_image(labels, a, b, n_boot, seed)
                pixel, pixel_lo, pixel_hi = _bootstrap_diff(
                    pixel_histograms(reference, ref_seed), pixel_histograms(baseline, base_seed),
                    masks.any((1, 2)), n_boot, seed, 0.95)
                rows.append({
                    "dataset": dataset, "category": category, "baseline": baseline, "reference": reference,
                    "reference_seed": ref_seed, "baseline_seed": base_seed, "n_images": labels.size,
                    "n_anomalous": int(labels.sum()), "image_auroc_reference": test.auc_a,
                    "image_auroc_baseline": test.auc_b, "image_auroc_diff": test.diff, "delong_se": test.se,
                    "delong_z": test.z, "delong_p": test.p_value, "image_diff_lo": lo, "image_diff_hi": hi,
                    "pixel_auroc_diff": pixel, "pixel_diff_lo": pixel_lo, "pixel_diff_hi": pixel_hi,
                    "n_boot": n_boot, "delong_note": test.note})
    table = pd.DataFrame(rows)
    if table.empty:
        raise ValueError(f"nothing to compare on {dataset}: methods {methods} hold no baseline besides {reference!r}")
    table.insert(table.columns.get_loc("delong_p") + 1, "delong_p_holm", table.groupby(
        ["baseline", "reference_seed", "baseline_seed"])["delong_p"].transform(holm))
    return table


def _seed_pairs(ref_seeds: list[int], base_seeds: list[int], baseline: str, reference: str) -> list[tuple[int, int]]:
    if len(base_seeds) == 1:
        return [(s, base_seeds[0]) for s in ref_seeds]
    if len(ref_seeds) == 1:
        return [(ref_seeds[0], s) for s in base_seeds]
    shared = [s for s in ref_seeds if s in base_seeds]
    if not shared:
        raise ValueError(f"{reference} (seeds {ref_seeds}) and {baseline} (seeds {base_seeds}) share no seed "
                         f"to pair; give them common seeds, or {baseline} a single seed")
    return [(s, s) for s in shared]


def _load_masks(cache: Path) -> tuple[np.ndarray, list[str]]:
    """(N, H, W) bool test masks and the N ids of the feature cache ``cache``."""
    from adbench.features.cache import load_split

    split = load_split(cache)
    return split.masks.numpy().astype(bool), list(split.ids)


def _check_pair(ref, base, ids: list[str], shape: tuple[int, ...], cache: Path) -> None:
    """Two loaded runs (``_load_run``) scored the same images, in the same order, as the feature cache."""
    (ref_scores, ref_maps, ref_file), (base_scores, base_maps, base_file) = ref, base
    if ref_scores["id"].tolist() != base_scores["id"].tolist():
        raise ValueError(f"the image ids of {ref_file} and {base_file} differ (or their order): the two runs "
                         f"were made on different test splits; rerun the stale one")
    if not ref_scores["label"].equals(base_scores["label"]):
        raise ValueError(f"labels differ between {ref_file} and {base_file}: rerun both")
    if ref_scores["id"].tolist() != ids or ref_maps.shape != shape or base_maps.shape != shape:
        raise ValueError(f"{ref_file} and {base_file} (maps {ref_maps.shape}, {base_maps.shape}) do not match the "
                         f"test split of the feature cache {cache} (masks {shape}, ids and their order): rerun "
                         f"them on the current cache")


def _load_run(folder: Path):
    """``(scores.csv frame, (N, H, W) float32 maps, scores.csv path)`` of one run folder; the ids stored
    with the maps must be those of scores.csv, in order.  Files written before ``adbench.methods.runs.write_maps``
    scaled the maps may hold ±inf where values passed float16's range; they become ±70000 (past every
    finite float16), which keeps their order, all an AUROC uses."""
    scores_file, maps_file = folder / "scores.csv", folder / "maps.npz"
    for f in (scores_file, maps_file):
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: run it first (`snakemake {folder}/metrics.json`)")
    scores = pd.read_csv(scores_file)
    maps, map_ids = read_maps(maps_file)
    if map_ids != scores["id"].tolist() or maps.shape[0] != len(scores):
        raise ValueError(f"{maps_file} and {scores_file} hold different images (ids or order): the folder "
                         f"mixes two runs; rerun it (`snakemake --force {folder}/metrics.json`)")
    if np.isnan(maps).any() or not np.isfinite(scores["score"]).all():
        raise ValueError(f"{folder} holds NaN or infinite scores or NaN maps: rerun it "
                         f"(`snakemake --force {folder}/metrics.json`)")
    return scores, np.nan_to_num(maps, posinf=7e4, neginf=-7e4), scores_file


def _check_columns(frame: pd.DataFrame, needed: list[str]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} are missing; the frame has {list(frame.columns)}")


# ------------------------------------------------------------------------------------------- reporting
def seed_means(table: pd.DataFrame) -> pd.DataFrame:
    """Categories x methods seed-mean image AUROC, from the rows of ``compare_runs``."""
    ref = table.drop_duplicates(["category", "reference", "reference_seed"])
    base = table.drop_duplicates(["category", "baseline", "baseline_seed"])
    long = pd.concat([
        ref[["category", "reference", "image_auroc_reference"]].set_axis(["category", "method", "auroc"], axis=1),
        base[["category", "baseline", "image_auroc_baseline"]].set_axis(["category", "method", "auroc"], axis=1)])
    wide = long.groupby(["category", "method"], sort=False)["auroc"].mean().unstack("method")
    methods = list(dict.fromkeys(long["method"]))
    return wide.reindex(index=list(dict.fromkeys(table["category"])), columns=methods)


def summarise(table: pd.DataFrame, across: pd.DataFrame, alpha: float = 0.05) -> str:
    """Markdown summary: per baseline, in how many categories the reference is significantly better or
    worse (DeLong, Holm p < ``alpha``) and where the pixel CI excludes 0; the Wilcoxon signed-rank test on
    ``across`` (categories x methods seed-mean AUROCs); the Friedman test, average ranks and Nemenyi CD.
    ``table``: the ``compare_runs`` rows of one dataset."""
    _check_columns(table, ["category", "baseline", "reference", "reference_seed", "baseline_seed",
                           "image_auroc_diff", "delong_p_holm", "pixel_diff_lo", "pixel_diff_hi", "n_boot"])
    reference = table["reference"].iloc[0]
    n_cat = table["category"].nunique()
    lines = [f"## {reference} against each baseline\n",
             f"Per category, image AUROC: DeLong's paired test (fast midrank version), p Holm-adjusted across "
             f"the {n_cat} categories per baseline and seed pairing; better/worse: Holm p < {alpha}.  Pixel "
             f"AUROC: {int(table['n_boot'].iloc[0])}-resample paired bootstrap over images, 95% percentile CI "
             f"of the difference above/below 0.  Ranges span the seed pairings.\n",
             f"| baseline | seed pairings | {reference} better | {reference} worse | pixel CI > 0 | pixel CI < 0 |",
             "|---|---:|---:|---:|---:|---:|"]
    for baseline, rows in table.groupby("baseline", sort=False):
        pairing = [rows["reference_seed"], rows["baseline_seed"]]
        sig = rows["delong_p_holm"] < alpha
        counts = [mask.groupby(pairing).sum()
                  for mask in (sig & (rows["image_auroc_diff"] > 0), sig & (rows["image_auroc_diff"] < 0),
                               rows["pixel_diff_lo"] > 0, rows["pixel_diff_hi"] < 0)]
        cells = [f"{c.min()}/{n_cat}" if c.min() == c.max() else f"{c.min()}–{c.max()}/{n_cat}" for c in counts]
        lines.append(f"| {baseline} | {len(counts[0])} | " + " | ".join(cells) + " |")

    wil = wilcoxon_per_baseline(across, reference)
    lines += ["", f"Across categories (seed-mean image AUROC): Wilcoxon signed-rank test, two-sided, "
                  f"{reference} − baseline.\n",
              "| baseline | n | W | p | median diff |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.baseline} | {r.n} | {r.statistic:.1f} | {r.p_value:.4f} | {r.median_diff:+.4f} |"
              for r in wil.itertuples()]
    small = wil[wil["n"] < 6]
    if not small.empty:
        lines.append(f"\nWith n < 6 categories the exact two-sided p cannot fall below 2/2^n (n: non-zero "
                     f"differences; here {', '.join(f'{r.baseline} {r.min_p:.4f}' for r in small.itertuples())}), "
                     f"so p < 0.05 is out of reach below 6.")
    complete = across.dropna()
    if complete.shape[1] >= 3 and complete.shape[0] >= 2:
        fn = friedman_nemenyi(complete, alpha)
        ranks = ", ".join(f"{m} {r:.2f}" for m, r in fn.ranks.sort_values().items())
        lines += ["", f"Friedman test over {complete.shape[1]} methods and {complete.shape[0]} categories: "
                      f"chi² = {fn.statistic:.2f}, p = {fn.p_value:.4g}.  Average ranks (1 = best): {ranks}.  "
                      f"Nemenyi critical difference (α = {alpha}): {fn.cd:.2f} ranks."]
    else:
        lines += ["", "Friedman test skipped: it needs at least 3 methods on 2 categories with no gap."]
    return "\n".join(lines) + "\n"


def write_significance(results_root: str | Path, dataset: str, categories: list[str], methods: list[str],
                       reference: str = "fod", *, seeds_of: dict[str, list[int]], feature_tag: str,
                       csv_out: str | Path, md_out: str | Path, n_boot: int = 2000,
                       pixel_bins: int = PIXEL_BINS) -> pd.DataFrame:
    """``compare_runs`` to ``csv_out`` and its ``summarise`` (seed means from the same rows) to ``md_out``."""
    table = compare_runs(results_root, dataset, categories, methods, reference, seeds_of=seeds_of,
                         feature_tag=feature_tag, n_boot=n_boot, pixel_bins=pixel_bins)
    with atomic_path(csv_out) as tmp:
        table.to_csv(tmp, index=False)
    write_atomic(md_out, f"# Significance on `{dataset}`\n\n" + summarise(table, seed_means(table)))
    return table
