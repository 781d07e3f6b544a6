"""Tests of the CFLOW-AD baseline (baselines.cflow) on the small synthetic split of tests/synthetic.py.

Whether CFLOW learns is tests/test_learning.py's question (on the CI data, against chance and against its
untrained flows): on this split untrained flows already rank the magenta square first (image AUROC 1.0, pixel
0.97 over seeds 0-4), so an AUROC here says nothing about training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adbench.protocol import Split
from adbench.spec import ParamError
from baselines.cflow import DEFAULT_PARAMS, PAPER_PARAMS, CFlow, CouplingBlock, positional_encoding_2d
from synthetic import SIZE, fit_and_predict, synthetic_split

# Small but complete: 8 coupling blocks, 128-d condition; smaller fibre batches so a short fit takes steps.
FAST = {"meta_epochs": 3, "sub_epochs": 2, "fiber_batch": 128, "lr": 1e-3}


@pytest.fixture(scope="module")
def data() -> tuple[Split, Split]:
    return synthetic_split(24, 0, seed=0), synthetic_split(8, 8, seed=1)


@pytest.fixture(scope="module")
def fitted(data):
    return fit_and_predict(CFlow(FAST, seed=3), *data)[:3]


def test_coupling_block_is_invertible_with_exact_log_det():
    torch.manual_seed(0)
    from scipy.stats import special_ortho_group

    rotation = special_ortho_group.rvs(5, random_state=0)
    block = CouplingBlock(5, 4, clamp=1.9, rotation=rotation).double()
    with torch.no_grad():  # exactly orthogonal in float64 (the buffer was rounded to float32); non-trivial coupling
        block.rotation.copy_(torch.as_tensor(rotation))
        for p in block.subnet.parameters():
            p.mul_(20)
        block.global_scale.add_(torch.randn(5, dtype=torch.float64))
    x, cond = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    y, log_det = block(x, cond)
    assert torch.allclose(block.inverse(y, cond), x, atol=1e-10)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: block(v[None], cond[i : i + 1])[0][0], x[i])
        assert log_det[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-9)
    # soft clamping: every coupling log-scale stays within +-1.9
    a = 0.1 * block.subnet(torch.cat([x[:, :3], cond], 1))
    assert (1.9 * torch.tanh(a[:, :2])).abs().max() <= 1.9


def test_positional_encoding_layout():
    pe = positional_encoding_2d(8, 3, 5)  # half = 4 channels per axis, frequencies 1 and 1e-2
    assert pe.shape == (8, 3, 5)
    col, row = 4, 2
    freqs = [1.0, 1e4 ** (-2 / 4)]
    expected = [math.sin(col * freqs[0]), math.cos(col * freqs[0]), math.sin(col * freqs[1]), math.cos(col * freqs[1]),
                math.sin(row * freqs[0]), math.cos(row * freqs[0]), math.sin(row * freqs[1]), math.cos(row * freqs[1])]
    assert pe[:, row, col].tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError):
        positional_encoding_2d(6, 2, 2)


def test_prediction_shapes_and_ranges(data, fitted):
    _, test = data
    _, pred, _ = fitted
    assert pred.scores.shape == (len(test),) and pred.maps.shape == (len(test), SIZE, SIZE)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert pred.maps.min() >= 0.0
    assert np.allclose(pred.scores, pred.maps.reshape(len(test), -1).max(axis=1))


def test_training_loss_decreases_and_is_tracked(fitted):
    method, _, tracker = fitted
    n_epochs = FAST["meta_epochs"] * FAST["sub_epochs"]
    assert len(method.history) == n_epochs and all(np.isfinite(method.history))
    assert method.history[-1] < method.history[0]
    assert [step for _, step in tracker.calls] == list(range(n_epochs))
    assert [m["train_loss"] for m, _ in tracker.calls] == pytest.approx(method.history)
    assert {"lr", "train_loss_s8", "train_loss_s16"} <= set(tracker.calls[0][0])


def test_learning_rate_schedule():
    method = CFlow({"meta_epochs": 10, "lr_warm_epochs": 2, "lr": 1e-3})
    floor = 1e-3 * 0.1**3
    cosine = [floor + (1e-3 - floor) * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(10)]
    assert method._lr(0, 0, 50) == pytest.approx(1e-4)  # warm-up starts at lr / 10 ...
    assert method._lr(1, 25, 50) == pytest.approx(1e-4 + 0.75 * (cosine[2] - 1e-4))  # ... rises linearly ...
    assert [method._lr(e, 7, 50) for e in range(2, 10)] == pytest.approx(cosine[2:])  # ... then cosine per meta-epoch


def test_params():
    assert set(DEFAULT_PARAMS) == set(PAPER_PARAMS)
    assert PAPER_PARAMS["meta_epochs"] * PAPER_PARAMS["sub_epochs"] == 200 and PAPER_PARAMS["lr"] == 2e-4
    method = CFlow({"meta_epochs": 1})
    assert method.params == {**DEFAULT_PARAMS, "meta_epochs": 1}
    with pytest.raises(ValueError, match="unknown CFLOW params"):
        CFlow({"epochs": 3})
    with pytest.raises(ValueError, match="feature cache"):
        CFlow({"augment_rotation_deg": 5})


@pytest.mark.parametrize("mode, idle_moves", [("none", False), ("zeros", True)])
def test_zero_grad_zeros_lets_adam_move_the_idle_flow_as_torch_1x_did(data, mode, idle_moves):
    """The public code's optimizer.zero_grad() under torch 1.x zeroed gradients, so each step for one
    level's flow also moved the other flow on Adam's momentum (zero_grad: zeros, PAPER_PARAMS); today's
    set_to_none leaves it alone (zero_grad: none, the default)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    method = CFlow({**FAST, "meta_epochs": 1, "sub_epochs": 2, "zero_grad": mode}, seed=3)
    seen, before = [], {}

    def active(flow) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in flow.parameters())

    def pre(optimizer, args, kwargs):
        before["idle"] = [p.detach().clone() for p in method.flows[0].parameters()]

    def post(optimizer, args, kwargs):
        if active(method.flows[1]) and not active(method.flows[0]):  # a step for flow 1 only
            seen.append(any(not torch.equal(a, p) for a, p in zip(before["idle"], method.flows[0].parameters())))

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        method.fit(data[0])
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) > 2 and set(seen) == {idle_moves}
    with pytest.raises(ParamError, match="zero_grad = 'sometimes': must be one of none, zeros"):
        CFlow({"zero_grad": "sometimes"})


def test_refuses_mismatched_features(data, fitted):
    train, _ = data
    method, _, _ = fitted
    bad = synthetic_split(2, 0, seed=5)
    bad.features = [bad.features[0][:, :5], bad.features[1]]
    with pytest.raises(ValueError, match="channels"):
        method.predict(bad)
    with pytest.raises(RuntimeError):
        CFlow().predict(train)
