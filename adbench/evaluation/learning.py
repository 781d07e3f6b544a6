"""Does a method learn?  The learning check, in one place (tests/test_learning.py runs it on the CI data,
benchmarks/learning_margins.py measures its margins).

A method class declares in ``learning_budget`` one or more configurations to check (``budgets``): the params
of a fit that takes seconds, whether that fit trains anything, and the bar of each statistic the
configuration is judged on.  ``fit_over`` fits a configuration on every category of a dataset for each of
``SEEDS`` and scores each category's test split; ``check`` averages two statistics over those category x seed
fits and passes when each named statistic exceeds its bar:

* ``image_auroc``: image AUROC, every anomalous test image against the normal ones;
* ``local_pixel_auroc``: pixel AUROC at matched positions (``matched_pixel_auroc``) over the local subset,
  the normal images and those with a local defect (a kind given by the dataset, e.g.
  ``adbench.data.embedded.DEFECT_KIND``), the defects a map can localise: each local defect's pixels in its own
  image's map against the same pixels in the maps of the subset's other images.  Comparing like positions
  makes a map that ignores its image score 1/2 whatever its spatial layout; the plain pixel AUROC would not
  (defects avoid the image border, so maps that are low at the border pass 0.65 by chance for some
  methods here: permuted maps reach 0.65-0.72 at their 98th percentile).

Chance.  Every bar is at least its statistic's floor, which a method that has learnt nothing passes with
probability < 0.02 at the CI data's counts (2 categories x 3 seeds, 8 normal and 12 anomalous test images
per category, 64 px):

* image: scores unrelated to the images rank the 20 test images uniformly at random, so each fit's AUROC is
  a Mann-Whitney U / (8 * 12) with its exact distribution, independent across fits (``image_chance``: the
  exact distribution of U, convolved once per fit);
* local pixel: the null is a map that does not depend on its image, i.e. the fits' own maps permuted over
  the images of the local subset (``local_pixel_chance``: a Monte Carlo over such permutations of the maps
  at hand); it depends on the maps, so the test computes it from every checked configuration's own fits.

Broken variants, for the mutation test: ``shuffled`` (scores and maps permuted together across each test
split's images: the output no longer belongs to its image) and ``training_skipped`` (every torch optimiser
step undone: the networks keep their initial weights; what forward passes change, e.g. BatchNorm's
running statistics, still changes).  A broken configuration must fail the check.

Fits run on one torch thread (``fit_over``), so the numbers do not depend on the machine's core count, only
on its kernels (AVX2 or AVX-512: measure both, ``benchmarks/learning_margins.py``).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from adbench.evaluation.metrics import roc_auc
from adbench.protocol import AnomalyMethod, Prediction, Split

#: The method seeds of every check: with 2 categories, 6 fits per configuration.
SEEDS: tuple[int, ...] = (0, 1, 2)
STATISTICS: tuple[str, ...] = ("image_auroc", "local_pixel_auroc")

# The floors, and what every configuration scores.  Measured (December 2026, the current pin, on an AMD EPYC
# machine with AVX-512) by benchmarks/learning_margins.py on the CI data, one torch thread, the asserted seeds
# 0-2, three kernel settings: native AVX-512 / the pin without MKL_CBWR (MKL's matrix products on its own
# branch for this CPU) / the workflow's full pin (adbench.methods.determinism: what every x86-64 machine
# computes, and what the tests run with); [worst]: the lowest mean over any 3 of seeds 0-4 in any setting;
# untrained: training skipped (the same in every setting); shuffled: the output permuted across test images
# (native).  Bars above a floor, and statistics a configuration is not judged on ("-"), are explained in its
# ``learning_budget``.
#
#   configuration  statistic    bar    trained                  [worst]  untrained  shuffled
#   patchcore      image        0.62   0.849 / 0.849 / 0.849    [0.830]  -          0.516
#                  local pixel  0.65   0.932 / 0.932 / 0.932    [0.882]  -          0.497
#   cflow          image        0.62   0.707 / 0.707 / 0.707    [0.684]  0.657      0.616
#                  local pixel  0.65   0.711 / 0.711 / 0.711    [0.703]  0.596      0.505
#   mkd            image        0.62   0.760 / 0.762 / 0.741    [0.701]  0.566      0.481
#                  local pixel  0.65   0.733 / 0.734 / 0.733    [0.718]  0.675      0.521
#   draem          image        -      0.769 / 0.793 / 0.793    [0.651]  0.408      0.522
#                  local pixel  0.65   0.857 / 0.745 / 0.745    [0.711]  0.492      0.460
#   patchsvdd      image        0.78   0.842 / 0.842 / 0.842    [0.818]  0.698      0.439
#                  local pixel  0.65   0.961 / 0.955 / 0.933    [0.920]  0.961      0.470
#   fod            image        -      0.717 / 0.616 / 0.708    [0.549]  0.469      0.540
#                  local pixel  0.65   0.770 / 0.812 / 0.818    [0.738]  0.405      0.527
#   fod, paper     image        0.62   0.752 / 0.745 / 0.778    [0.727]  0.552      0.484
#                  local pixel  0.65   0.826 / 0.813 / 0.821    [0.813]  0.677      0.514
#   knn_image      image        0.62   0.635 / 0.635 / 0.635    [0.635]  -          0.514
#                  local pixel  0.65   0.994 / 0.994 / 0.994    [0.994]  -          0.508
#
# Every trained configuration passes in every setting (its smallest margin: knn_image's image, +0.015, a
# method that does not train; among the paper's methods cflow's local pixel, +0.061); every broken one fails
# (untrained: the closest is cflow's local pixel, -0.054, and mkd's image, -0.054).  Under the previous pin
# (MKL_CBWR=AVX2, which MKL follows on Intel CPUs only, and the per-tensor Adam) the same holds; the numbers
# that moved are mkd's, draem's, patchsvdd's and the two fods' (the previous table is in git history).
#
#: Image AUROC floor.  Chance passes it with probability 0.0141 (exact, ``image_chance``: 6 fits of 8 normal
#: vs 12 anomalous images; a Monte Carlo of 200,000 draws of random scores at these counts, rng seed 0,
#: agrees within 0.001, tests/test_learning.py).  At a single fit it would be 0.19, at 0.6 over 6 fits 0.035.
IMAGE_FLOOR = 0.62
#: Local-defect pixel AUROC floor (``matched_pixel_auroc``).  Each configuration's own maps of seeds 0-2,
#: permuted over the local subset's images (``local_pixel_chance``, 100,000 draws, rng seed 0), pass it with
#: probability 0.0019 at most (patchcore and knn_image; the others 0-0.0012) in every setting; the 98th
#: percentiles of those nulls are 0.562-0.607 (December 2026's measurement, above).  tests/test_learning.py
#: recomputes it for every configuration it checks.
LOCAL_PIXEL_FLOOR = 0.65
FLOORS: dict[str, float] = {"image_auroc": IMAGE_FLOOR, "local_pixel_auroc": LOCAL_PIXEL_FLOOR}
#: Most chance may pass a bar with.
CHANCE_LIMIT = 0.02


# ------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """One configuration of a method to check.

    Attributes:
        cls: the method class.
        name: the configuration's name within the class's ``learning_budget`` (``default``, or e.g. a
            variant's name).
        params: the params of each fit (the method's defaults fill in the rest).
        trains: whether ``fit`` takes optimiser steps; False for a method that learns nothing by gradient
            descent (the ``training_skipped`` mutation does not apply to it).
        bars: statistic (one of ``STATISTICS``) -> the bar its mean over categories x seeds must exceed.
    """

    cls: type[AnomalyMethod]
    name: str
    params: dict[str, Any]
    trains: bool
    bars: dict[str, float]

    @property
    def label(self) -> str:
        """``<registry name>`` for the default configuration, else ``<registry name>-<name>``."""
        return self.cls.name if self.name == "default" else f"{self.cls.name}-{self.name}"


def budgets(cls: type[AnomalyMethod]) -> dict[str, Budget]:
    """The configurations ``cls.learning_budget`` declares, validated: name -> ``Budget``.

    ``learning_budget`` maps a configuration name to ``{"params": dict, "trains": bool, "bars": {statistic:
    bar}}``; every bar must be a number at least its statistic's floor (``FLOORS``) and at least one
    statistic must be named.

    Raises:
        ValueError: naming the class, the configuration and what is wrong (e.g. a missing declaration).
    """
    declared = getattr(cls, "learning_budget", None)
    if not declared or not isinstance(declared, Mapping):
        raise ValueError(f"{cls.__name__} declares no learning_budget: add one (adbench.evaluation.learning) so that the "
                         f"learning check can tell whether it learns")
    out = {}
    for name, entry in declared.items():
        where = f"{cls.__name__}.learning_budget[{name!r}]"
        if set(entry) != {"params", "trains", "bars"}:
            raise ValueError(f"{where} must have exactly the keys params, trains, bars; has {sorted(entry)}")
        bars = dict(entry["bars"])
        if not bars or set(bars) - set(STATISTICS):
            raise ValueError(f"{where}['bars'] must name one or more of {STATISTICS}; names {sorted(bars)}")
        low = {k: v for k, v in bars.items() if not float(v) >= FLOORS[k]}
        if low:
            raise ValueError(f"{where}['bars'] {low} below the floors {FLOORS}, which chance passes with "
                             f"probability < {CHANCE_LIMIT}")
        if not isinstance(entry["trains"], bool):
            raise ValueError(f"{where}['trains'] must be True or False")
        out[name] = Budget(cls, name, dict(entry["params"]), entry["trains"], {k: float(v) for k, v in bars.items()})
    return out


# ---------------------------------------------------------------------------------------------- fits
@dataclass(frozen=True)
class Fit:
    """One fit's output on one category's test split.

    Attributes:
        category: the category.
        seed: the method seed.
        test: the test split (labels (N,), defect_types, masks (N, H, W)).
        prediction: the method's scores (N,) and maps (N, H, W).
    """

    category: str
    seed: int
    test: Split
    prediction: Prediction


@contextlib.contextmanager
def training_skipped() -> Iterator[None]:
    """Within the block, every ``step`` of every torch optimiser leaves the parameters as they were (each
    step's values are restored by a global post-step hook), so a method's fit keeps its initial weights.
    Losses, gradients, optimiser state and what forward passes change (BatchNorm running statistics) still
    change."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    saved: dict[int, list[torch.Tensor]] = {}

    def params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def before(optimizer, args, kwargs):
        saved[id(optimizer)] = [p.detach().clone() for p in params(optimizer)]

    def after(optimizer, args, kwargs):
        with torch.no_grad():
            for p, value in zip(params(optimizer), saved.pop(id(optimizer))):
                p.copy_(value)

    handles = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def fit_over(budget: Budget, splits: Mapping[str, tuple[Split, Split]], seeds: Sequence[int] = SEEDS, *,
             untrained: bool = False) -> list[Fit]:
    """Fit ``budget``'s configuration on each category's training split for each seed and predict its test
    split, on one torch thread; ``untrained``: inside ``training_skipped``.

    Args:
        splits: category -> (train Split, test Split).
    Returns:
        one ``Fit`` per (category, seed), categories in ``splits``' order, then seeds.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fits = []
    try:
        for category, (train, test) in splits.items():
            for seed in seeds:
                with training_skipped() if untrained else contextlib.nullcontext():
                    method = budget.cls(budget.params, seed=seed).fit(train)
                fits.append(Fit(category, int(seed), test, method.predict(test)))
    finally:
        torch.set_num_threads(threads)
    return fits


def shuffled(fits: Sequence[Fit], seed: int = 0) -> list[Fit]:
    """The broken variant "output of another image": per fit, scores and maps permuted together across the
    test split's images by a permutation from ``numpy.random.default_rng((seed, i))``, i the fit's index."""
    out = []
    for i, fit in enumerate(fits):
        order = np.random.default_rng((seed, i)).permutation(len(fit.test))
        out.append(Fit(fit.category, fit.seed, fit.test,
                       Prediction(fit.prediction.scores[order], fit.prediction.maps[order])))
    return out


# ------------------------------------------------------------------------------------------ statistics
def local_subset(test: Split, kinds: Mapping[str, str]) -> np.ndarray:
    """(N,) bool: the normal images and those whose defect type's kind (``kinds``) is ``local``."""
    return np.array([t == "good" or kinds.get(t) == "local" for t in test.defect_types])


def matched_pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel AUROC at matched positions.  masks: (n, H, W) in {0, 1}; maps: (n, H, W) float.

    Positives: the pixels of each image's mask, in that image's map; negatives: the same pixels in the maps
    of the n - 1 other images.  All (image, mask) blocks are ranked together (``adbench.evaluation.metrics.roc_auc``).
    """
    values, labels = [], []
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(1)):
        where = masks[i].astype(bool)
        values.append(maps[:, where].ravel())  # (n * |mask_i|,), image-major
        own = np.zeros((len(maps), int(where.sum())))
        own[i] = 1
        labels.append(own.ravel())
    return roc_auc(np.concatenate(labels), np.concatenate(values))


def fit_statistics(fit: Fit, kinds: Mapping[str, str]) -> dict[str, float]:
    """``image_auroc`` and ``local_pixel_auroc`` (``matched_pixel_auroc`` over ``local_subset`` by ``kinds``)
    of one fit."""
    keep = local_subset(fit.test, kinds)
    return {"image_auroc": roc_auc(fit.test.labels, fit.prediction.scores),
            "local_pixel_auroc": matched_pixel_auroc(fit.test.masks.numpy()[keep], fit.prediction.maps[keep])}


@dataclass
class CheckResult:
    """The check of one configuration: ``per_fit`` [(category, seed, statistics)], ``means`` (statistic ->
    mean over the fits), ``bars`` and ``passed`` (every barred mean above its bar)."""

    label: str
    per_fit: list[tuple[str, int, dict[str, float]]]
    means: dict[str, float]
    bars: dict[str, float]
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = all(self.means[k] > bar for k, bar in self.bars.items())

    def report(self) -> str:
        """One line per statistic: mean, bar, verdict, then the per-fit values."""
        lines = []
        for k in STATISTICS:
            bar = self.bars.get(k)
            verdict = "not judged" if bar is None else ("above" if self.means[k] > bar else "NOT above") + f" {bar}"
            values = " ".join(f"{c}/{s}={v[k]:.3f}" for c, s, v in self.per_fit)
            lines.append(f"{self.label} {k}: mean {self.means[k]:.3f} ({verdict}); {values}")
        return "\n".join(lines)


def check(budget: Budget, fits: Sequence[Fit], kinds: Mapping[str, str]) -> CheckResult:
    """The learning check of ``budget`` on ``fits`` (``fit_over``'s, or a broken variant of them)."""
    per_fit = [(f.category, f.seed, fit_statistics(f, kinds)) for f in fits]
    means = {k: float(np.mean([v[k] for _, _, v in per_fit])) for k in STATISTICS}
    return CheckResult(budget.label, per_fit, means, dict(budget.bars))


# ---------------------------------------------------------------------------------------------- chance
def mann_whitney_pmf(n_normal: int, n_anomalous: int) -> np.ndarray:
    """Exact distribution of U = #(normal, anomalous) pairs ranked correctly under uniformly random
    scores without ties: (n_normal * n_anomalous + 1,) float64, entry u = P(U = u); AUROC = U / (mn)."""
    counts = [[np.ones(1)] * (n_anomalous + 1) for _ in range(n_normal + 1)]
    for m in range(1, n_normal + 1):
        for n in range(1, n_anomalous + 1):
            # the highest score is anomalous (it beats all m normals) or normal (it beats none)
            out = np.zeros(m * n + 1)
            top_anomalous, top_normal = counts[m][n - 1], counts[m - 1][n]
            out[m:m + len(top_anomalous)] += top_anomalous
            out[:len(top_normal)] += top_normal
            counts[m][n] = out
    pmf = counts[n_normal][n_anomalous]
    return pmf / pmf.sum()


def image_chance(bar: float, counts: Sequence[tuple[int, int]]) -> float:
    """P(mean image AUROC over independent fits > ``bar``) for scores unrelated to the images, exactly.

    ``counts``: one (n_normal, n_anomalous) per fit.  Each fit's AUROC is U_i / (m_i n_i); on the common
    grid 1 / L (L = lcm of the m_i n_i) the sum is an integer whose distribution is the convolution of the
    per-fit distributions.
    """
    grid = math.lcm(*(m * n for m, n in counts))
    total = np.ones(1)
    for m, n in counts:
        pmf = mann_whitney_pmf(m, n)
        spread = np.zeros(grid + 1)
        spread[np.arange(len(pmf)) * (grid // (m * n))] = pmf
        total = np.convolve(total, spread)
    means = np.arange(len(total)) / (grid * len(counts))
    return float(total[means > bar + 1e-12].sum())


def image_chance_monte_carlo(bar: float, counts: Sequence[tuple[int, int]], draws: int, seed: int = 0) -> float:
    """``image_chance`` by simulation: ``draws`` sets of uniform random scores at ``counts``, AUROC by
    ``adbench.evaluation.metrics``' definition (Mann-Whitney with ranks)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for m, n in counts:
        ranks = rng.random((draws, m + n)).argsort(1).argsort(1) + 1  # 1-based ranks; anomalous = last n
        total += (ranks[:, m:].sum(1) - n * (n + 1) / 2) / (m * n)
    return float(np.mean(total / len(counts) > bar))


def rank_table(masks: np.ndarray, maps: np.ndarray, matched: bool = True) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A pixel AUROC under maps permuted over the images, in closed form.  masks, maps: (n, H, W).

    ``matched``: ``matched_pixel_auroc``; else the plain pixel AUROC (every mask pixel against every other
    pixel of the n maps).  Whatever image each map is given to, the values ranked are the same (matched: every
    map at every mask's pixels; plain: every pixel), so their mid-ranks are fixed.  Returns (R, defects, P, N):
    R[j, c] = sum of the ranks of map j's values at the pixels of mask ``defects[c]`` (the images whose mask
    is not empty), P positive and N negative values.  With image i given map pi(i), the AUROC is
    (sum_c R[pi(defects[c]), c] - P (P + 1) / 2) / (P N); the identity gives the unpermuted AUROC.
    """
    n = len(maps)
    flat, where = maps.reshape(n, -1).astype(np.float64), masks.reshape(n, -1).astype(bool)
    defects = np.flatnonzero(where.any(1))
    n_pos = int(where.sum())
    if not matched:
        ranks = rankdata(flat, axis=None).reshape(flat.shape)
        return ranks @ where[defects].T.astype(np.float64), defects, n_pos, flat.size - n_pos
    blocks = [flat[:, where[i]] for i in defects]  # (n, |mask_i|) each
    ranks = rankdata(np.concatenate([b.ravel() for b in blocks]))
    table, start = np.zeros((n, len(defects))), 0
    for c, block in enumerate(blocks):
        table[:, c] = ranks[start:start + block.size].reshape(block.shape).sum(1)
        start += block.size
    return table, defects, n_pos, (n - 1) * n_pos


def permutation_null(masks: np.ndarray, maps: np.ndarray, draws: int, rng: np.random.Generator,
                     matched: bool = True) -> np.ndarray:
    """(draws,) pixel AUROCs (``rank_table``'s kind) of ``maps`` permuted uniformly over the n images: the
    values a map that does not belong to its image gets.  masks, maps: (n, H, W)."""
    table, defects, n_pos, n_neg = rank_table(masks, maps, matched)
    perms = rng.random((draws, len(maps))).argsort(1)  # perms[d, i]: the image whose map image i gets
    rank_sums = table[perms[:, defects], np.arange(len(defects))].sum(1)
    return (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def local_pixel_chance(fits: Sequence[Fit], bar: float, kinds: Mapping[str, str], draws: int = 100_000,
                       seed: int = 0) -> tuple[float, float]:
    """Chance level of ``local_pixel_auroc`` for these fits' maps: each fit's maps permuted uniformly over
    the images of its local subset (the map no longer belongs to its image; masks stay), ``draws`` times
    (``numpy.random.default_rng(seed)``).  Returns (P(mean over the fits > ``bar``), the mean's 98th
    percentile)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(draws)
    for fit in fits:
        keep = local_subset(fit.test, kinds)
        total += permutation_null(fit.test.masks.numpy()[keep], fit.prediction.maps[keep], draws, rng)
    means = total / len(fits)
    return float(np.mean(means > bar)), float(np.quantile(means, 1 - CHANCE_LIMIT))
