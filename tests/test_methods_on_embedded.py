"""Every method on real embedded data (64 px, 16 training images): anomalies score above normal images
on the method's easiest category, maps have the test split's shape, and all numbers are finite."""
import numpy as np
import pytest

from adbench.metrics import roc_auc
from adbench.registry import method_class

# (impl, params for a short fit, easiest embedded category)
CASES = [
    ("patchcore", {}, "brick"),
    ("cflow", {"meta_epochs": 2, "sub_epochs": 2}, "coins"),
    ("mkd", {"epochs": 4}, "brick"),
    ("draem", {"epochs": 4}, "coins"),
    ("patchsvdd", {"epochs": 4}, "brick"),
    ("fod", {"d_model": [64, 128], "layers": 2, "heads": 4, "epochs": 2, "progress": False}, "coins"),
]


@pytest.mark.parametrize("impl,params,category", CASES, ids=[c[0] for c in CASES])
def test_method_detects_anomalies_on_its_easiest_category(embedded_splits, impl, params, category):
    train, test = embedded_splits(category)
    pred = method_class(impl)(params, seed=0).fit(train).predict(test)
    assert pred.maps.shape == (len(test), test.image_size, test.image_size)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert roc_auc(test.labels, pred.scores) > 0.6
