"""Tests of the MKD baseline (baselines.mkd) on the small synthetic split of tests/synthetic.py (CFLOW's).

Whether MKD learns is tests/test_learning.py's question (on the CI data, against chance and against its
untrained student): on this split the untrained student already ranks the magenta square first (image AUROC
1.0, pixel 0.81-0.94 over seeds 0-4), so an AUROC here says nothing about training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.protocol import Split
from baselines.mkd import DEFAULT_PARAMS, PAPER_PARAMS, MKD, Student, distillation_loss
from synthetic import SIZE, fit_and_predict, synthetic_split

FAST = {"epochs": 12, "batch_size": 4}  # the default width (16); half the default's steps (batch 2), enough here


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    return synthetic_split(24, 0, seed=0), synthetic_split(8, 8, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    return fit_and_predict(MKD(FAST, seed=3), *data)[:3]


def test_student_shapes_and_loss():
    torch.manual_seed(0)
    student = Student([40, 112], [8, 16], width=4)
    outs = student(torch.randn(2, 3, 128, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 40, 16, 16), (2, 112, 8, 8)]
    targets = [o.detach() for o in outs]
    assert distillation_loss(outs, targets, 0.5).detach().abs().max() < 1e-6  # perfect student: zero loss
    scaled = [2 * t for t in targets]  # same direction, twice the size: only the MSE term is left
    mse = sum((t * t).mean(dim=(1, 2, 3)) for t in targets)
    assert torch.allclose(distillation_loss(targets, scaled, 0.5), 0.5 * mse, atol=1e-5)
    with pytest.raises(ValueError):
        Student([4], [12])


def test_prediction_shapes_and_ranges(data, fitted):
    _, test = data
    _, pred, _ = fitted
    assert pred.scores.shape == (len(test),) and pred.maps.shape == (len(test), SIZE, SIZE)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert pred.scores.min() >= 0.0 and pred.maps.min() >= 0.0


def test_training_loss_decreases_and_is_tracked(fitted):
    method, _, tracker = fitted
    assert len(method.history) == FAST["epochs"] and all(np.isfinite(method.history))
    assert method.history[-1] < 0.8 * method.history[0]
    assert [step for _, step in tracker.calls] == list(range(FAST["epochs"]))
    assert [m["train_loss"] for m, _ in tracker.calls] == pytest.approx(method.history)


@pytest.mark.parametrize("mode", ["gradient", "guided"])
def test_gradient_localization(data, fitted, mode):
    _, test = data
    method, pred, _ = fitted
    method.params["localization"] = mode
    try:
        grad = method.predict(test)
    finally:
        method.params["localization"] = "discrepancy"
    assert np.array_equal(grad.scores, pred.scores)  # the detection score does not depend on the maps
    assert grad.maps.shape == pred.maps.shape and np.isfinite(grad.maps).all()
    assert grad.maps.min() >= 0.0 and grad.maps.max() <= 1.0 + 1e-6
    assert not np.allclose(grad.maps, pred.maps)


def test_params():
    assert set(DEFAULT_PARAMS) == set(PAPER_PARAMS)
    assert PAPER_PARAMS["epochs"] == 601 and PAPER_PARAMS["lamda"] == 0.5 and PAPER_PARAMS["lr"] == 1e-3
    assert DEFAULT_PARAMS["localization"] == "discrepancy"
    assert MKD({"epochs": 1}).params == {**DEFAULT_PARAMS, "epochs": 1}
    with pytest.raises(ValueError, match="unknown MKD params"):
        MKD({"meta_epochs": 3})
    with pytest.raises(ValueError, match="localization"):
        MKD({"localization": "saliency"})


def test_refuses_mismatched_features(data, fitted):
    train, _ = data
    method, _, _ = fitted
    bad = synthetic_split(2, 0, seed=5)
    bad.features = [bad.features[0][:, :5], bad.features[1]]
    with pytest.raises(ValueError, match="channels"):
        method.predict(bad)
    with pytest.raises(RuntimeError):
        MKD().predict(train)
