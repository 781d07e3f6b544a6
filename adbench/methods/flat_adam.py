"""Adam over parameters laid out in one contiguous buffer per group: fewer kernel calls, the same updates.

``torch.optim.Adam`` on the CPU (neither ``foreach`` nor ``fused`` by default there, and ``foreach`` on the
CPU still dispatches per tensor) issues about eight small kernels per parameter tensor per step.  A small
model has many small tensors: FOD's two levels at the default budget hold 64 of them, so that with its
per-level steps (two Adam steps per training step) the optimizer took about 4.4 of a training step's
35 ms (2.2 ms per Adam step, AVX2 pinned, one thread), most of it dispatch: 0.8 ms per step when flat.
``FlatAdam`` copies each group's parameters into one flat ``Parameter``, makes every original parameter a
view of it and steps torch's fused Adam on it: one kernel per group and step.  Fused, because the
per-tensor Adam takes its square roots through MKL's vector math, whose last bit depends on the CPU's
vendor (``adbench.methods.portable``).

The same numbers to float32 rounding: Adam is element-wise (each element of a parameter is updated from the
same element of its gradient and moments, with the same Python scalars), so the flat update computes
every element as the per-tensor update (``torch.optim.Adam(fused=True)``) does, except that fused Adam's
vector body and its scalar tail round an update differently, so an element's place in the buffer can
move its last bit (3e-8 after a dozen steps in ``tests/test_flat_adam.py``, which checks it at tensor
sizes that are not multiples of the vector width, with and without ``zero_grad(set_to_none=False)``).
Gradients keep Adam's semantics too: a group whose parameters have no gradient yet (``None``) is skipped as Adam skips
them; at the first ``step`` that finds gradients, they are copied into one flat gradient and every
parameter's ``.grad`` becomes a view of it, so that later backward passes accumulate into it in place
(as they accumulate into a kept ``.grad``).  ``zero_grad(set_to_none=True)`` drops both, and the next
step copies again.  A parameter without a gradient in a group that has one counts as a zero gradient,
which leaves it exactly as it is while its moments are zero (Adam's update is then 0 / eps).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def _views(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views of the 1-D ``flat`` shaped like each of ``params``."""
    views, offset = [], 0
    for p in params:
        views.append(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return views


class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (default betas and eps, no weight decay) over ``groups``: each group (an
    iterable of parameters, e.g. one model's or one level's) becomes one flat parameter; the original
    parameters become views of it and stay usable as before (forward, ``state_dict``)."""

    def __init__(self, groups: Iterable[Iterable[nn.Parameter]], lr: float) -> None:
        self.members: list[list[nn.Parameter]] = []
        flats = []
        for group in groups:
            params = list(group)
            if not params:
                raise ValueError("FlatAdam: an empty parameter group")
            if len({(p.device, p.dtype) for p in params}) != 1:
                raise ValueError("FlatAdam: a group's parameters must share one device and dtype")
            flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
            for p, view in zip(params, _views(flat.data, params)):
                p.data = view
            self.members.append(params)
            flats.append(flat)
        super().__init__(flats, lr=lr, fused=True)  # the same on every CPU (adbench.methods.portable)
        # A step pre-hook, not an override of step(): torch wraps every optimizer class's own step() with the
        # global step hooks, so an override would run them twice (adbench.evaluation.learning's
        # training_skipped restores the parameters from one of them).
        self.register_step_pre_hook(lambda optimizer, args, kwargs: optimizer._gather_grads())

    def _flats(self) -> list[nn.Parameter]:
        return self.param_groups[0]["params"]

    @torch.no_grad()
    def _gather_grads(self) -> None:
        """Before each step: give each flat parameter whose members have gradients a flat gradient (the
        members' gradients become views of it)."""
        for flat, params in zip(self._flats(), self.members):
            if flat.grad is not None or all(p.grad is None for p in params):
                continue
            flat.grad = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
            for p, view in zip(params, _views(flat.grad, params)):
                p.grad = view

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)  # zeroes the flat gradients (the members' views) in place
        for params in self.members:
            for p in params:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None and p.grad._base is None:  # a gradient made since the last step
                    p.grad.zero_()
