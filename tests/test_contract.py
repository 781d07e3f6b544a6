"""The method contract, for every method of the registry (``adbench.methods.registry.IMPLEMENTATIONS``): a new method
gets these checks by being registered, with the budget it declares (``tiny_params``) on the synthetic split.

Shapes and finiteness of ``predict``, save/load round trip, what a seed means (``deterministic``), refused
params, and the declarations the runner, ``make estimate`` and the figures read.  The device contract is in
tests/test_devices.py, the non-finite guards in tests/test_numerical_guards.py and the learning check in
tests/test_learning.py, each parametrised over the registry too.
"""
from __future__ import annotations

import numpy as np
import pytest
from synthetic import synthetic_split

from adbench.protocol import AnomalyMethod, Prediction
from adbench.spec import UnknownParamsError
from adbench.methods.registry import IMPLEMENTATIONS, method_class

IMPLS = sorted(IMPLEMENTATIONS)


@pytest.fixture(scope="module")
def splits():
    return synthetic_split(6, 0, seed=0), synthetic_split(3, 3, seed=1)


@pytest.fixture(scope="module")
def fitted(splits):
    """impl -> (method fitted with seed 7, its prediction on the test split)."""
    out = {}
    for impl in IMPLS:
        method = method_class(impl)(method_class(impl).tiny_params, seed=7).fit(splits[0])
        out[impl] = method, method.predict(splits[1])
    return out


@pytest.mark.parametrize("impl", IMPLS)
def test_predict_gives_one_finite_score_and_map_per_test_image(impl, splits, fitted):
    method, pred = fitted[impl]
    test = splits[1]
    assert isinstance(method, AnomalyMethod) and method.name == impl
    assert isinstance(pred, Prediction)
    assert pred.scores.shape == (len(test),) and pred.maps.shape == (len(test), test.image_size, test.image_size)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_save_and_load_restore_the_predictions(impl, splits, fitted, tmp_path):
    method, pred = fitted[impl]
    method.save(tmp_path / "model.pt")
    loaded = method_class(impl).load(tmp_path / "model.pt")
    again = loaded.predict(splits[1])
    np.testing.assert_array_equal(again.scores, pred.scores)
    np.testing.assert_array_equal(again.maps, pred.maps)
    assert loaded.params == method.params and loaded.seed == method.seed
    assert getattr(loaded, "history", None) == getattr(method, "history", None)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_seed_reproduces_its_fit_and_another_seed_is_another_draw_unless_deterministic(impl, splits, fitted):
    """The runner fits a ``deterministic`` method once, whatever run.seeds holds: its seeds must not matter."""
    cls = method_class(impl)
    _, pred = fitted[impl]
    same = cls(cls.tiny_params, seed=7).fit(splits[0]).predict(splits[1])
    np.testing.assert_array_equal(same.maps, pred.maps)
    other = cls(cls.tiny_params, seed=8).fit(splits[0]).predict(splits[1])
    assert np.array_equal(other.maps, pred.maps) == cls.deterministic, (
        f"{impl}: deterministic = {cls.deterministic}, but seeds 7 and 8 "
        f"{'differ' if cls.deterministic else 'give the same maps'}")


@pytest.mark.parametrize("impl", IMPLS)
def test_a_misspelt_param_is_refused_with_the_known_ones(impl):
    with pytest.raises(UnknownParamsError) as err:
        method_class(impl)({"no_such_param": 1})
    assert err.value.unknown == ["no_such_param"] and set(method_class(impl).check_params({})) <= set(err.value.known)


@pytest.mark.parametrize("impl", IMPLS)
def test_the_declarations_the_runner_and_the_cost_model_read(impl):
    """``inputs`` says what the runner hands the method, ``passes`` what ``make estimate`` multiplies by,
    ``monitor_interval`` whether the runner hands it the test split while training."""
    cls = method_class(impl)
    params = cls.check_params({})
    assert cls.inputs(params) <= {"images", "features", "backbone"} and cls.inputs(params)
    assert isinstance(cls.passes(params), int) and cls.passes(params) >= 1
    assert cls.monitor_interval(params) >= 0
    assert cls.monitor_interval(params) == 0 or cls.monitors_test
    assert isinstance(cls.records_curves, bool) and isinstance(cls.deterministic, bool)
