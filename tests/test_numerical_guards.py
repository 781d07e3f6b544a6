"""A NaN or infinite training loss stops every trained method at once, naming the method, the epoch, the
step and the loss terms; metrics are never written from non-finite maps."""
from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch

from adbench.evaluation import evaluate
from adbench.features.cache import save_split
from adbench.protocol import AnomalyMethod, NonFiniteLossError, Prediction, check_finite_losses
from adbench.methods.registry import IMPLEMENTATIONS, method_class
from synthetic import synthetic_split

#: The registry's methods that train (they declare the params that count their epochs).
TRAINED = sorted(impl for impl in IMPLEMENTATIONS if method_class(impl).epoch_params)

TRAIN = synthetic_split(4, 0, seed=0)


@pytest.mark.parametrize("impl", TRAINED)
def test_a_trained_method_names_its_loss_terms(impl):
    """A method that takes optimiser steps declares the loss terms its non-finite message names."""
    assert method_class(impl).loss_terms, f"{impl}: declare loss_terms on the class"


@pytest.mark.parametrize("impl", TRAINED)
def test_a_diverging_loss_stops_training_with_method_epoch_and_terms(impl):
    # lr 1e30: the first Adam step moves every weight by ~1e30, so the next forward pass overflows.
    method = method_class(impl)({**method_class(impl).tiny_params, "lr": 1e30}, seed=0)
    with pytest.raises(NonFiniteLossError) as err:
        method.fit(TRAIN)
    message = str(err.value)
    assert type(method).__name__.lower() in message.lower() or impl in message.lower()
    assert "epoch" in message and "step" in message
    assert all(term in message for term in method.loss_terms), (method.loss_terms, message)
    assert "nan" in message or "inf" in message


@pytest.mark.parametrize("impl", ["fod", "cflow", "mkd"])
def test_nan_in_the_cached_features_stops_training_at_the_first_step(impl):
    poisoned = synthetic_split(4, 0, seed=0)
    poisoned.features[0][0, 0, 0, 0] = float("nan")  # one bad number in a corrupt feature cache
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 "):
        method_class(impl)(method_class(impl).tiny_params, seed=0).fit(poisoned)


def test_check_finite_losses_names_every_term():
    check_finite_losses("X", 1, {"a": 1.0, "b": torch.tensor(2.0)}, step=3)  # finite: nothing happens
    with pytest.raises(NonFiniteLossError) as err:
        check_finite_losses("X", 4, {"a": 1.0, "b": torch.tensor(math.inf), "c": math.nan}, step=2)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith("X: non-finite training loss at epoch 4, step 2 (a = 1, b = inf, c = nan)")
    with pytest.raises(NonFiniteLossError, match=r"at epoch 7 \(a = -inf\)"):
        check_finite_losses("X", 7, {"a": -math.inf})


class NaNMaps(AnomalyMethod):
    """Predicts NaN maps: what a diverged model would hand to the evaluation."""

    name = "nanmaps"

    def fit(self, train, tracker=None):
        return self

    def predict(self, test):
        maps = np.full((len(test), test.image_size, test.image_size), np.nan, np.float32)
        return Prediction(scores=np.zeros(len(test)), maps=maps)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_no_metrics_are_written_from_non_finite_maps(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "method_class", lambda impl: NaNMaps)
    test = synthetic_split(2, 2, seed=1)
    save_split(test, tmp_path / "test.pt", {"image_size": test.image_size})
    NaNMaps({}, 0).save(tmp_path / "model.pt")
    (tmp_path / "run.json").write_text(json.dumps({"fit_seconds": 0.0, "method": "nanmaps", "impl": "nanmaps"}))
    out = tmp_path / "run"
    args = [tmp_path / "test.pt", tmp_path / "model.pt", tmp_path / "run.json", out]
    if "config" in inspect.signature(evaluate.evaluate_run).parameters:  # the older signature
        args = [{"methods": {"nanmaps": {"impl": "nanmaps"}}}, "nanmaps", *args]
    with pytest.raises(ValueError, match="non-finite scores or maps"):
        evaluate.evaluate_run(*args)
    assert not (out / "metrics.json").exists() and not list(tmp_path.rglob("metrics*"))
    assert not (out / "scores.csv").exists() and not (out / "maps.npz").exists()
