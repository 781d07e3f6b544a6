"""FlatAdam (adbench/methods/flat_adam.py) updates every parameter as torch.optim.Adam(fused=True) does, to
float32 rounding: fused Adam's vector body and scalar tail round an element's update differently, so its
place in the flat buffer can move its last bit (``ROUNDING``).

The sizes are chosen so that tensors end in partial vectors (7, 13, 5, 91 elements): an element's update
must not depend on where it sits in the buffer.  The FOD cases run ``fod.method.training_step`` in both
of its modes: ``per_level`` (zero, backward and step level by level, so a level without gradients yet is
skipped at the first step and is updated with zero gradients later) and ``joint``; CFLOW's case fits
it with FlatAdam and with torch.optim.Adam(fused=True) under both of its ``zero_grad`` readings.
"""
import copy

import pytest
import torch
from torch import nn

from adbench.methods.flat_adam import FlatAdam
from fod.config import resolve
from fod.method import build_levels, level_optimizer, training_step
from fod.tokens import grid_positions


def _pair(model: nn.Module, groups) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module, FlatAdam]:
    twin = copy.deepcopy(model)
    return model, torch.optim.Adam(model.parameters(), lr=3e-3, fused=True), twin, FlatAdam(groups(twin), lr=3e-3)


# The largest difference allowed between FlatAdam's and the per-tensor Adam's parameters after the tests'
# dozen steps at lr 3e-3: a few units in the last place of values of order 1 (measured: 3e-8), far below
# one step's update (~3e-3), so a skipped, doubled or misassigned update still fails.
ROUNDING = 1e-6


def _close(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.allclose(x, y, rtol=0, atol=ROUNDING) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def _bitwise_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def _two_nets() -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(nn.Sequential(nn.Linear(7, 13), nn.GELU(), nn.Linear(13, 5)) for _ in range(2))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_equals_adam_stepping_one_group_at_a_time(set_to_none):
    """As CFlow's or FOD's per-level steps: each backward reaches one group; the other has no gradient
    (None, skipped) or a zeroed one (updated with it, as Adam does)."""
    plain_model, plain_opt, flat_model, flat_opt = _pair(_two_nets(), lambda m: [net.parameters() for net in m])
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        x = torch.randn(9, 7, generator=gen)
        which = step % 2
        for model, opt in ((plain_model, plain_opt), (flat_model, flat_opt)):
            opt.zero_grad(set_to_none=set_to_none)
            model[which](x).square().mean().backward()
            opt.step()
        assert _close(plain_model, flat_model), f"step {step}"
    assert not _bitwise_equal(plain_model, _two_nets())  # it trained


def test_a_group_without_gradients_is_skipped_and_holds_no_state():
    _, _, model, opt = _pair(_two_nets(), lambda m: [net.parameters() for net in m])
    before = copy.deepcopy(model)
    model[0](torch.ones(2, 7)).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model[1].parameters(), before[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(model[0].parameters(), before[0].parameters()))
    flats = opt.param_groups[0]["params"]
    assert flats[0] in opt.state and flats[1] not in opt.state


def test_parameters_stay_views_and_the_state_dict_round_trips():
    _, _, model, opt = _pair(_two_nets(), lambda m: [net.parameters() for net in m])
    flat = opt.param_groups[0]["params"][0]
    assert all(p.data_ptr() >= flat.data_ptr() for p in model[0].parameters())
    model[0](torch.ones(2, 7)).sum().backward()
    opt.step()
    fresh = _two_nets()
    fresh.load_state_dict(model.state_dict())
    assert _bitwise_equal(fresh, model)


def test_the_global_step_hooks_run_once_per_step():
    """The learning check's "untrained" mutation (adbench.evaluation.learning.training_skipped) undoes every
    step through torch's global step hooks: with FlatAdam too, the parameters stay as they were."""
    from adbench.evaluation.learning import training_skipped

    _, _, model, opt = _pair(_two_nets(), lambda m: [net.parameters() for net in m])
    before = copy.deepcopy(model)
    with training_skipped():
        for _ in range(3):
            opt.zero_grad()
            model[0](torch.ones(2, 7)).sum().backward()
            opt.step()
    assert _bitwise_equal(model, before)


def test_rejects_an_empty_group():
    with pytest.raises(ValueError, match="empty parameter group"):
        FlatAdam([[]], lr=1e-3)


SHAPES = [{"channels": 6, "grid": [4, 5], "n_reference": 13}, {"channels": 10, "grid": [3, 3], "n_reference": 9}]


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("variant", ["official", "paper"])  # level_steps per_level / joint
def test_fod_training_steps_equal_adam(variant, seed):
    cfg = resolve({"d_model": [16, 32], "heads": 4, "layers": 1, "variant": variant})
    torch.manual_seed(seed)
    levels = build_levels(cfg, SHAPES)
    for level, shape in zip(levels, SHAPES):
        positions = grid_positions(*shape["grid"])[: shape["n_reference"]]
        level.set_reference(torch.randn(shape["n_reference"], shape["channels"]), positions)
    plain, flat = levels, copy.deepcopy(levels)
    plain_opt, flat_opt = torch.optim.Adam(plain.parameters(), lr=3e-3, fused=True), level_optimizer(flat, 3e-3)  # as FOD.fit
    gen = torch.Generator().manual_seed(seed + 2)
    for step in range(6):
        features = [torch.randn(2, s["channels"], *s["grid"], generator=gen) for s in SHAPES]
        plain_parts = training_step(plain, plain_opt, features, cfg)
        flat_parts = training_step(flat, flat_opt, features, cfg)
        assert plain_parts == pytest.approx(flat_parts, rel=1e-5), f"step {step}"
        assert _close(plain, flat), f"step {step}"


@pytest.mark.parametrize("zero_grad", ["zeros", "none"])  # CFLOW's two readings of zero_grad()
def test_cflow_trains_as_with_adam(monkeypatch, zero_grad):
    """CFLOW steps one flow at a time (idle flows: zeroed or no gradients); FlatAdam groups by flow."""
    import baselines.cflow as cflow
    from synthetic import synthetic_split

    class PlainAdam(torch.optim.Adam):
        def __init__(self, groups, lr):
            super().__init__([p for group in groups for p in group], lr=lr, fused=True)

    train, test = synthetic_split(8, 0, seed=0), synthetic_split(3, 3, seed=1)
    params = {**cflow.CFlow.tiny_params, "zero_grad": zero_grad}
    flat = cflow.CFlow(params, seed=0).fit(train).predict(test)
    monkeypatch.setattr(cflow, "FlatAdam", PlainAdam)
    plain = cflow.CFlow(params, seed=0).fit(train).predict(test)
    assert abs(flat.maps - plain.maps).max() < 1e-4 and abs(flat.scores - plain.scores).max() < 1e-4
