"""The learning check (adbench.evaluation.learning) on the CI data, for every configuration that a registered method's
``learning_budget`` declares, and its mutation test: each configuration passes, and each deliberately broken
variant of it (its output shuffled across the test images; its training skipped) fails.

The CI data: config/ci.yaml's embedded categories and generator (16 training images, 8 normal and 12
anomalous test images per category) at its 64 px, tests/conftest.py's ``embedded_splits``.  Every fit runs
once per session: the broken "shuffled" variant permutes the cached fits' outputs, the "untrained" one is
fitted once per configuration.  The floors, their chance probabilities and every configuration's measured
values (seeds 0-2, native AVX-512 and pinned AVX2 kernels) are in adbench/evaluation/learning.py;
``python benchmarks/learning_margins.py all`` measures them again (seeds 0-4, both kernel settings).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from adbench.evaluation import learning
from adbench.data.datasets import defect_kinds
from adbench.methods.registry import IMPLEMENTATIONS, method_class

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ("brick", "coins")  # config/ci.yaml's (checked below); tests/conftest.py generates them
N_NORMAL, N_ANOMALOUS = 8, 12  # config/ci.yaml's test images per category (checked below)
KINDS = defect_kinds("embedded")
BUDGETS = [b for impl in IMPLEMENTATIONS for b in learning.budgets(method_class(impl)).values()]
# (b) applies to configurations that train: chosen by their learning_budget, not by name
MUTATIONS = [(b, "shuffled") for b in BUDGETS] + [(b, "untrained") for b in BUDGETS if b.trains]


@pytest.fixture(scope="module")
def fits(embedded_splits):
    """``fn(budget, untrained=False) -> [Fit]`` over CATEGORIES x learning.SEEDS, each fitted once per session."""
    splits = {c: embedded_splits(c) for c in CATEGORIES}
    cache = {}

    def get(budget: learning.Budget, untrained: bool = False) -> list[learning.Fit]:
        key = (budget.label, untrained)
        if key not in cache:
            cache[key] = learning.fit_over(budget, splits, untrained=untrained)
        return cache[key]

    return get


def test_the_check_runs_on_the_ci_data(embedded_splits):
    from conftest import SMALL, SPLIT_SIZE

    ci = yaml.safe_load((ROOT / "config" / "ci.yaml").read_text())
    embedded = ci["datasets"]["embedded"]
    assert tuple(embedded["categories"]) == CATEGORIES and ci["backbone"]["image_size"] == SPLIT_SIZE
    assert embedded["generator"] == {k: getattr(SMALL, k) for k in embedded["generator"]}
    assert (embedded["generator"]["n_test_good"], embedded["generator"]["n_test_anomalous"]) == (N_NORMAL, N_ANOMALOUS)
    for category in CATEGORIES:
        test = embedded_splits(category)[1]
        assert (int((test.labels == 0).sum()), int(test.labels.sum())) == (N_NORMAL, N_ANOMALOUS)


def test_every_registered_method_declares_a_valid_budget():
    for impl in IMPLEMENTATIONS:
        assert learning.budgets(method_class(impl)), impl
    labels = [b.label for b in BUDGETS]
    assert len(set(labels)) == len(labels)


def test_budgets_are_validated():
    from adbench.protocol import AnomalyMethod

    class Undeclared(AnomalyMethod):
        name = "undeclared"
        fit = predict = state_dict = load_state_dict = None

    with pytest.raises(ValueError, match="declares no learning_budget"):
        learning.budgets(Undeclared)
    for bars, match in (({"image_auroc": 0.6}, "below the floors"), ({}, "must name"),
                        ({"pixel_auroc": 0.9}, "must name")):
        Undeclared.learning_budget = {"default": {"params": {}, "trains": True, "bars": bars}}
        with pytest.raises(ValueError, match=match):
            learning.budgets(Undeclared)


def test_image_floor_chance_is_exact_and_below_002():
    """Chance passes IMAGE_FLOOR with probability < 0.02 at the CI counts; the exact convolution agrees with a
    Monte Carlo of 200,000 draws of random scores (rng seed 0)."""
    counts = [(N_NORMAL, N_ANOMALOUS)] * (len(CATEGORIES) * len(learning.SEEDS))
    exact = learning.image_chance(learning.IMAGE_FLOOR, counts)
    assert exact < learning.CHANCE_LIMIT
    assert exact == pytest.approx(0.014099, abs=1e-6)
    assert learning.image_chance_monte_carlo(learning.IMAGE_FLOOR, counts, 200_000) == pytest.approx(exact, abs=0.001)
    # a single fit's AUROC has the textbook null: mean 1/2, variance (m + n + 1) / (12 m n)
    pmf = learning.mann_whitney_pmf(N_NORMAL, N_ANOMALOUS)
    auroc = np.arange(len(pmf)) / (N_NORMAL * N_ANOMALOUS)
    assert (pmf * auroc).sum() == pytest.approx(0.5)
    variance = (N_NORMAL + N_ANOMALOUS + 1) / (12 * N_NORMAL * N_ANOMALOUS)
    assert (pmf * (auroc - 0.5) ** 2).sum() == pytest.approx(variance)
    # mixed counts: the common grid
    assert learning.image_chance(0.5, [(8, 12), (8, 4)]) == pytest.approx(
        learning.image_chance_monte_carlo(0.5, [(8, 12), (8, 4)], 200_000), abs=0.005)


def test_matched_pixel_auroc_and_its_permutation_null(embedded_splits):
    """``matched_pixel_auroc`` is the AUROC of each defect's pixels against the same pixels of the other images;
    ``rank_table`` gives it, and the plain pixel AUROC, for any assignment of maps to images (ties included); a
    map that ignores its image scores 1/2 at matched positions, however it is laid out, while the plain pixel
    AUROC does not."""
    from adbench.evaluation.metrics import roc_auc
    from adbench.protocol import Prediction

    test = embedded_splits("brick")[1]
    keep = learning.local_subset(test, KINDS)
    assert keep.sum() == N_NORMAL + sum(KINDS.get(t) == "local" for t in test.defect_types)
    masks = test.masks.numpy()[keep]
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 5, masks.shape).astype(np.float32)  # many ties
    positives, negatives = [], []
    for i in np.flatnonzero(masks.any(axis=(1, 2))):
        where = masks[i].astype(bool)
        positives.append(maps[i][where])
        negatives.append(np.delete(maps, i, axis=0)[:, where].ravel())
    labels = np.r_[np.ones(sum(map(len, positives))), np.zeros(sum(map(len, negatives)))]
    expected = roc_auc(labels, np.concatenate(positives + negatives))
    assert learning.matched_pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    for matched, auroc in ((True, learning.matched_pixel_auroc), (False, lambda m, v: roc_auc(m.ravel(), v.ravel()))):
        table, defects, n_pos, n_neg = learning.rank_table(masks, maps, matched)
        for perm in (np.arange(len(maps)), rng.permutation(len(maps)), rng.permutation(len(maps))):
            got = (table[perm[defects], np.arange(len(defects))].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
            assert got == pytest.approx(auroc(masks, maps[perm]), abs=1e-12)
    # one fixed layout for every image (low at the border, where no local defect lies), plus noise
    yy, xx = np.mgrid[:test.image_size, :test.image_size]
    layout = np.minimum.reduce([yy, xx, test.image_size - 1 - yy, test.image_size - 1 - xx]).astype(np.float32)
    maps = layout + rng.normal(0, 1, (len(test),) + layout.shape).astype(np.float32)
    assert roc_auc(masks.ravel(), maps[keep].ravel()) > 0.65  # the plain pixel AUROC passes the floor
    fit = learning.Fit("brick", 0, test, Prediction(np.zeros(len(test)), maps))
    assert learning.fit_statistics(fit, KINDS)["local_pixel_auroc"] == pytest.approx(0.5, abs=0.03)
    p, q98 = learning.local_pixel_chance([fit], 0.5, KINDS, draws=20_000)
    assert p == pytest.approx(0.5, abs=0.1) and q98 < learning.LOCAL_PIXEL_FLOOR


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda b: b.label)
def test_method_learns(fits, budget):
    """Each configuration sits above its bars on the CI data, and chance passes each of its bars with
    probability < 0.02 (image: exact; local pixel: its own maps permuted over the images, 100,000 draws)."""
    result = learning.check(budget, fits(budget), KINDS)
    assert result.passed, result.report()
    counts = [(int((f.test.labels == 0).sum()), int(f.test.labels.sum())) for f in fits(budget)]
    if "image_auroc" in budget.bars:
        assert learning.image_chance(budget.bars["image_auroc"], counts) < learning.CHANCE_LIMIT
    if "local_pixel_auroc" in budget.bars:
        p, q98 = learning.local_pixel_chance(fits(budget), budget.bars["local_pixel_auroc"], KINDS)
        assert p < learning.CHANCE_LIMIT, f"{budget.label}: shuffled maps pass the local pixel bar with p = {p}"


@pytest.mark.parametrize("budget,mutation", MUTATIONS, ids=lambda v: v if isinstance(v, str) else v.label)
def test_a_broken_method_fails_the_check(fits, budget, mutation):
    """(a) shuffled: scores and maps permuted across the test images; (b) untrained: every optimiser step
    undone.  Either must fail the check that the unbroken configuration passes (test_method_learns)."""
    broken = learning.shuffled(fits(budget)) if mutation == "shuffled" else fits(budget, untrained=True)
    result = learning.check(budget, broken, KINDS)
    assert not result.passed, f"the {mutation} variant passes the learning check:\n{result.report()}"
    assert learning.check(budget, fits(budget), KINDS).passed  # the unbroken one does (same cached fits)


def test_the_margin_benchmark_runs_in_a_pinned_process(tmp_path):
    """benchmarks/learning_margins.py measures the kernel setting its process starts with and imports the test
    modules (so this conftest) after torch: it must run under the workflow's pin, as ``all`` starts it, and
    record that setting.  Its cheapest case that builds the CI splits, one seed."""
    import json
    import os
    import subprocess
    import sys

    from adbench.methods.determinism import ISA_VARIABLES, isa_environment

    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES + ("ADBENCH_TEST_CPU_ISA",)}
    out = tmp_path / "margins.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "learning_margins.py"), "run", "--cases",
                           "patchcore_embedded", "--seeds", "0", "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT, env={**env, **isa_environment("avx2")}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["setting"] == "avx2"
    assert set(record["values"]) == {"patchcore_embedded.image", "patchcore_embedded.local"}
