"""The benchmark's re-implementation of the authors' computation computes what ``fod`` computes.

So the benchmark's time ratio compares the same mathematics: same loss values, same gradients (ours in
one backward pass, theirs in two), and the same parameters after several optimizer steps (ours with
``level_steps: per_level``, theirs with torch 1.13's zeroing ``zero_grad`` and one step per level).
"""
import copy
import importlib.util
from pathlib import Path

import torch

from fod.config import resolve
from fod.losses import level_losses
from fod.method import build_levels, training_step
from fod.tokens import feature_tokens, grid_positions

_BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_fod_step.py"
_spec = importlib.util.spec_from_file_location("bench_fod_step", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SHAPES = [{"channels": 6, "grid": [4, 5], "n_reference": 20}, {"channels": 10, "grid": [3, 3], "n_reference": 9}]
CFG = resolve({"d_model": [16, 32], "heads": 4, "layers": 2})


def levels_and_features(n_images):
    torch.manual_seed(0)
    levels = build_levels(CFG, SHAPES).double()
    for level, shape in zip(levels, SHAPES):
        reference = torch.randn(shape["n_reference"], shape["channels"], dtype=torch.float64)
        level.set_reference(reference, grid_positions(*shape["grid"]))
    images = [[torch.randn(1, s["channels"], *s["grid"], dtype=torch.float64) for s in SHAPES] for _ in range(n_images)]
    projs = [[(a.double(), b.double()) for a, b in per_level] for per_level in bench.make_out_projs(levels)]
    return levels, images, projs


def test_authors_losses_and_two_pass_gradients_equal_ours():
    levels, images, projs = levels_and_features(1)
    level, tokens = levels[0], feature_tokens(images[0][0], pool=True)
    ours = level_losses(level(tokens), tokens, CFG)
    (ours.loss1 + ours.loss2).backward()
    ours_grads = {n: p.grad.clone() for n, p in level.named_parameters()}
    level.zero_grad(set_to_none=True)
    loss1, loss2 = bench.authors_level_losses(level, projs[0], tokens)
    torch.testing.assert_close(loss1, ours.loss1)
    torch.testing.assert_close(loss2, ours.loss2)
    loss1.backward(retain_graph=True)
    loss2.backward()
    for name, param in level.named_parameters():
        if not name.endswith("k.bias"):  # zero up to round-off on both sides
            torch.testing.assert_close(param.grad, ours_grads[name], msg=name)


def test_authors_training_steps_equal_ours_with_per_level_steps():
    ours, images, projs = levels_and_features(3)
    theirs = copy.deepcopy(ours)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-3)
    extra = [p for per_level in projs for pair in per_level for lin in pair for p in lin.parameters()]
    opt_theirs = torch.optim.Adam(list(theirs.parameters()) + extra, lr=1e-3)
    for features in images:
        training_step(ours, opt_ours, features, CFG)
        bench.authors_step(theirs, projs, opt_theirs, features)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        if not name.endswith("k.bias"):  # Adam turns round-off gradients of a no-op parameter into steps
            torch.testing.assert_close(a, b, msg=name)
