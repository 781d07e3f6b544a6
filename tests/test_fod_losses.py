"""Eq. 3, 6, 7 and the minimax objective (Eq. 8, 10, 11 with the authors' detach scheme)."""
import math

import pytest
import torch
from torch.autograd import gradcheck

import fod.losses as losses
from fod.config import resolve
from fod.losses import correlation_terms, level_losses, reconstruction_error
from fod.method import build_levels
from fod.model import Correlation
from fod.prior import log_factors, prior_block
from fod.tokens import grid_positions

GRID = (3, 4)
CELLS = torch.tensor([[0, 0], [0, 0], [2, 3], [1, 1], [2, 0]])


def random_corr(key_pos=None, batch=2, heads=2, requires_grad=False):
    length = GRID[0] * GRID[1]
    keys = length if key_pos is None else len(key_pos)
    attn = torch.softmax(torch.randn(batch, heads, length, keys, dtype=torch.float64), -1)
    sigma = torch.rand(batch, heads, length, 2, dtype=torch.float64) * 1.5 + 0.3
    return attn.requires_grad_(requires_grad), sigma.requires_grad_(requires_grad)


def terms(attn, sigma, key_pos=None, isotropic=False):
    return correlation_terms(Correlation(attn, *log_factors(sigma, GRID, key_pos, isotropic), key_pos))


def kl(p, q):
    return (p * ((p + 1e-4).log() - (q + 1e-4).log())).sum(-1)


@pytest.mark.parametrize("key_pos", [None, CELLS])
def test_div_of_a_distribution_with_itself_is_zero(key_pos):
    _, sigma = random_corr(key_pos)
    prior = prior_block(*log_factors(sigma, GRID, key_pos, False), key_pos)
    assert terms(prior, sigma, key_pos).div_prior.abs().max() == 0


def test_entropy_of_a_uniform_row_is_log_n():
    n = GRID[0] * GRID[1]
    attn = torch.full((1, 2, n, n), 1.0 / n, dtype=torch.float64)
    entropy = terms(attn, random_corr(batch=1)[1]).entropy
    torch.testing.assert_close(entropy, torch.full_like(entropy, -math.log(1.0 / n + 1e-4)))
    torch.testing.assert_close(entropy, torch.full_like(entropy, math.log(n)), atol=n * 1e-4, rtol=0)


@pytest.mark.parametrize("key_pos", [None, CELLS])
def test_div_is_the_symmetric_kl_of_eq6(key_pos):
    attn, sigma = random_corr(key_pos)
    prior = prior_block(*log_factors(sigma, GRID, key_pos, False), key_pos)
    out = terms(attn, sigma, key_pos)
    torch.testing.assert_close(out.div_prior, kl(prior, attn) + kl(attn, prior))
    torch.testing.assert_close(out.div_attn, out.div_prior)
    torch.testing.assert_close(out.entropy, -(attn * (attn + 1e-4).log()).sum(-1))


@pytest.mark.parametrize("block", [1 << 20, 17])  # one block, and blocks of one or two rows
@pytest.mark.parametrize("key_pos", [None, CELLS])
def test_gradients_of_each_term_match_finite_differences(monkeypatch, key_pos, block):
    monkeypatch.setattr(losses, "_BLOCK_ELEMENTS", block)
    attn, sigma = random_corr(key_pos, batch=1, heads=1, requires_grad=True)
    assert gradcheck(lambda s: terms(attn.detach(), s, key_pos).div_prior, (sigma,))
    assert gradcheck(lambda a: terms(a, sigma.detach(), key_pos, isotropic=True).div_attn, (attn,))
    assert gradcheck(lambda a: terms(a, sigma.detach(), key_pos).entropy, (attn,))
    assert gradcheck(lambda a: tuple(terms(a, sigma.detach(), key_pos)[1:]), (attn,))


def test_div_prior_reaches_only_the_prior_and_div_attn_only_the_attention():
    attn, sigma = random_corr(requires_grad=True)
    out = terms(attn, sigma)
    g_attn, g_sigma = torch.autograd.grad(out.div_prior.sum(), (attn, sigma), allow_unused=True)
    assert g_attn is None and g_sigma.abs().sum() > 0
    out = terms(attn, sigma)
    g_attn, g_sigma = torch.autograd.grad((out.div_attn + out.entropy).sum(), (attn, sigma), allow_unused=True)
    assert g_sigma is None and g_attn.abs().sum() > 0


def test_reconstruction_error_kinds():
    recon = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    target = torch.tensor([[[0.0, 4.0], [1.0, 1.0]]])
    torch.testing.assert_close(reconstruction_error(recon, target, "mse_cos"), torch.tensor([[12.5 + 1.0, 0.0]]))
    torch.testing.assert_close(reconstruction_error(recon, target, "l2_cos"), torch.tensor([[5.0 + 1.0, 0.0]]))


# ---- on a small FOD level --------------------------------------------------------------------------


def small_level(params=None, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = resolve({"d_model": [16], "heads": 2, "layers": 2, **(params or {})})
    level = build_levels(cfg, [{"channels": 6, "grid": list(GRID), "n_reference": 12}])[0].to(dtype)
    if cfg.inter:
        level.set_reference(torch.randn(12, 6, dtype=dtype), grid_positions(*GRID))
    return level, cfg, torch.randn(3, 12, 6, dtype=dtype)


def grads(level, loss):
    params = dict(level.named_parameters())
    got = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
    return {name: g for name, g in zip(params, got)}


def reaches(grad_map, name):
    """Whether the gradient is above float64 round-off (subtracting rec leaves ~1e-17 residues)."""
    return grad_map[name] is not None and grad_map[name].abs().max() > 1e-12


def test_one_backward_pass_equals_the_authors_two_passes():
    level, cfg, tokens = small_level()
    out = level_losses(level(tokens), tokens, cfg)
    (out.loss1 + out.loss2).backward()
    one_pass = {n: p.grad.clone() for n, p in level.named_parameters()}
    level.zero_grad(set_to_none=True)
    out = level_losses(level(tokens), tokens, cfg)
    out.loss1.backward(retain_graph=True)
    out.loss2.backward()
    for name, param in level.named_parameters():
        torch.testing.assert_close(param.grad, one_pass[name], rtol=1e-5, atol=1e-7, msg=name)


def test_each_loss_reaches_the_parameters_of_the_minimax_scheme():
    """loss1's correlation part trains the sigma heads and not the attention; loss2's the attention (q, k)
    and not the sigma heads; rec never the sigma heads.

    loss1's part also flows upstream through the sigma heads' input (the layer input, as in the authors'
    code), i.e. into earlier layers, so q/k/v are checked on the last layer.
    """
    level, cfg, tokens = small_level(dtype=torch.float64)
    out = level(tokens)
    both = level_losses(out, tokens, cfg)
    rec = reconstruction_error(out.recon, tokens, cfg.rec).mean()
    g1, g2, g_rec = grads(level, both.loss1 - rec), grads(level, both.loss2 - rec), grads(level, rec)
    names = [n for n, _ in level.named_parameters()]
    sigma_heads = [n for n in names if ".sigma." in n]
    last_qk = [n for n in names if n.startswith("layers.1.") and ("attn.q." in n or "attn.k.weight" in n)]
    last_v = [n for n in names if n.startswith("layers.1.") and "attn.v." in n]
    assert len(sigma_heads) == 8 and len(last_qk) == 6 and len(last_v) == 4
    for name in sigma_heads:
        assert reaches(g1, name) and not reaches(g2, name) and not reaches(g_rec, name), name
    for name in last_qk:
        assert reaches(g2, name) and not reaches(g1, name), name
    for name in last_v:  # the maps do not depend on the values
        assert not reaches(g1, name) and not reaches(g2, name) and reaches(g_rec, name), name


def test_batch_gradient_is_the_mean_of_the_per_image_gradients():
    level, cfg, tokens = small_level(dtype=torch.float64)
    out = level_losses(level(tokens), tokens, cfg)
    batched = grads(level, out.loss1 + out.loss2)
    singles = []
    for i in range(len(tokens)):
        one = level_losses(level(tokens[i : i + 1]), tokens[i : i + 1], cfg)
        singles.append(grads(level, one.loss1 + one.loss2))
    for name, g in batched.items():
        torch.testing.assert_close(g, sum(s[name] for s in singles) / len(singles), msg=name)


@pytest.mark.parametrize("grid", [(3, 4), (6, 8)])
def test_token_sum_scales_rec_div_and_ent_alike(grid):
    """``token_reduction: sum`` (the paper variant) is L times ``mean`` for every term and every gradient,
    so the ratio of Ent to Div (and to rec) is the same under both and does not grow with L; an entropy
    summed over the tokens against a token-mean Div (the old paper variant) fails this by a factor L."""
    length = grid[0] * grid[1]
    params = {"variant": "paper", "d_model": [16], "heads": 2, "layers": 2}
    cfg_sum, cfg_mean = resolve(params), resolve({**params, "token_reduction": "mean"})
    assert cfg_sum.token_reduction == "sum"
    torch.manual_seed(0)
    level = build_levels(cfg_sum, [{"channels": 6, "grid": list(grid), "n_reference": length}])[0].double()
    level.set_reference(torch.randn(length, 6, dtype=torch.float64), grid_positions(*grid))
    tokens = torch.randn(2, length, 6, dtype=torch.float64)
    out = level(tokens)
    summed, mean = level_losses(out, tokens, cfg_sum), level_losses(out, tokens, cfg_mean)
    assert set(summed.parts) == {"rec", "intra_div", "intra_entropy", "inter_div", "inter_entropy", "loss1", "loss2"}
    for key, value in mean.parts.items():
        assert summed.parts[key] == pytest.approx(length * value, rel=1e-9), key
    ratio = summed.parts["intra_entropy"] / summed.parts["intra_div"]
    assert ratio == pytest.approx(mean.parts["intra_entropy"] / mean.parts["intra_div"], rel=1e-9)
    g_sum, g_mean = grads(level, summed.loss1 + summed.loss2), grads(level, mean.loss1 + mean.loss2)
    for name, g in g_mean.items():
        if g is not None:
            torch.testing.assert_close(g_sum[name], length * g, msg=name)


def test_lambda2_zero_drops_the_entropy_terms():
    level, cfg, tokens = small_level()
    out = level(tokens)
    no_ent = level_losses(out, tokens, resolve({"d_model": [16], "heads": 2, "lambda2": 0.0})).parts
    with_ent = level_losses(out, tokens, cfg).parts
    expected = with_ent["loss2"] + 0.5 * (with_ent["intra_entropy"] - with_ent["inter_entropy"])
    assert no_ent["loss2"] == pytest.approx(expected, rel=1e-5)


def test_patchwise_only_trains_on_rec_once():
    level, cfg, tokens = small_level({"intra": False, "inter": False, "score": "rec"})
    out = level_losses(level(tokens), tokens, cfg)
    assert out.loss2.item() == 0.0 and out.loss1.item() == pytest.approx(out.parts["rec"])
    assert set(out.parts) == {"rec", "loss1", "loss2"}
