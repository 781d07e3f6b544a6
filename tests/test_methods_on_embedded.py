"""Every method on real embedded data (64 px, 16 training images): anomalies score above normal images
on the method's easiest category, maps have the test split's shape, and all numbers are finite.

The budgets are a few seconds and the test split is small (8 normal, 12 anomalous images), so one fit's
image AUROC moves with the seed.  benchmarks/learning_margins.py measures every case for seeds 0-4 with
AVX2 and with AVX-512 kernels; the numbers in the comments below are its minima.
"""
import statistics

import numpy as np
import pytest

from adbench.metrics import roc_auc
from adbench.registry import method_class

THRESHOLD = 0.6  # image AUROC; random scores give 0.5 +- 0.14 on this split

# (impl, params for a short fit, easiest embedded category, seeds: the median of their image AUROCs is asserted)
CASES = [
    ("patchcore", {}, "brick", (0,)),  # min 0.917
    # the default budget (8 passes at lr 2e-3), seeds 0-4: 0.85 0.72 0.71 0.74 0.74, the same with AVX2 and
    # AVX-512 kernels (at the old 4 passes at 2e-4 on coins one seed in five fell to 0.54)
    ("cflow", {}, "brick", (0,)),
    # batch 2 (more steps for 1.5x the compute): min 0.76; at 4 epochs of batch 8 it was 0.60-0.66
    ("mkd", {"epochs": 6, "batch_size": 2}, "brick", (0,)),
    ("draem", {"epochs": 4}, "coins", (0,)),  # see NOT_LEARNING
    ("patchsvdd", {"epochs": 4}, "brick", (0,)),  # min 0.71
    ("fod", {"d_model": [64, 128], "layers": 2, "heads": 4, "epochs": 2, "progress": False}, "coins", (0,)),
]

#: Methods that do not learn the embedded categories within a test's budget: a problem of the method (reported,
#: not hidden), so their AUROC claim is an expected failure; shapes and finiteness are still asserted.
NOT_LEARNING = {
    "draem": "DRAEM does not learn the embedded data at test budgets: image AUROC over seeds 0-4 on coins "
             "0.30-0.63 (4 epochs; its anomaly map is ~0.530 everywhere, so the ranking is noise that flips "
             "with the CPU's ISA) and 0.38-0.57 (12 epochs of batch 4); on brick 0.18-0.64, median ~0.4",
    "fod": "FOD does not learn the embedded data at test budgets: image AUROC over seeds 0-4 on coins 0.24-0.67 "
           "(this budget), 0.46-0.80 at lr 1e-3 with 2-4 epochs; on brick 0.31-0.56, median ~0.38",
}


@pytest.mark.parametrize("impl,params,category,seeds", CASES, ids=[c[0] for c in CASES])
def test_method_detects_anomalies_on_its_easiest_category(embedded_splits, impl, params, category, seeds):
    train, test = embedded_splits(category)
    aurocs = []
    for seed in seeds:
        pred = method_class(impl)(params, seed=seed).fit(train).predict(test)
        assert pred.maps.shape == (len(test), test.image_size, test.image_size)
        assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
        aurocs.append(roc_auc(test.labels, pred.scores))
    auroc = statistics.median(aurocs)
    if impl in NOT_LEARNING and not auroc > THRESHOLD:
        pytest.xfail(f"{NOT_LEARNING[impl]} (here {auroc:.3f}; benchmarks/learning_margins.py)")
    assert auroc > THRESHOLD
