"""The RBF target correlations (Eq. 5) in separable form."""
import math

import pytest
import torch

from fod.prior import factor_grads, log_factors, prior_block, sigma_from_logits
from fod.tokens import grid_positions


def dense_direct(sigma, grid, key_pos, isotropic):
    """T straight from Eq. 5 (anisotropic: the authors' form), normalised by row: (B, h, L, N)."""
    h, w = grid
    q = grid_positions(h, w).double()
    k = (grid_positions(h, w) if key_pos is None else key_pos).double()
    dy2 = (q[:, None, 0] - k[None, :, 0]) ** 2
    dx2 = (q[:, None, 1] - k[None, :, 1]) ** 2
    vy, vx = sigma[..., 0:1] ** 2, sigma[..., 1:2] ** 2
    if isotropic:
        vy = vx = vy + vx
    t = torch.exp(-dy2 / (2 * vy) - dx2 / (2 * vx)) / (2 * math.pi * sigma[..., 0:1] * sigma[..., 1:2])
    return t / t.sum(-1, keepdim=True)


@pytest.mark.parametrize("isotropic", [False, True])
def test_prior_rows_sum_to_one_and_peak_at_the_token_itself(isotropic):
    sigma = torch.rand(2, 3, 12, 2, dtype=torch.float64) * 1.5 + 0.2
    t = prior_block(*log_factors(sigma, (3, 4), None, isotropic), None)
    assert t.shape == (2, 3, 12, 12)
    torch.testing.assert_close(t.sum(-1), torch.ones(2, 3, 12, dtype=torch.float64))
    assert torch.equal(t.argmax(-1), torch.arange(12).expand(2, 3, 12))


@pytest.mark.parametrize("isotropic", [False, True])
def test_separable_prior_equals_eq5(isotropic):
    sigma = torch.rand(1, 2, 20, 2, dtype=torch.float64) * 1.8 + 0.1
    t = prior_block(*log_factors(sigma, (4, 5), None, isotropic), None)
    torch.testing.assert_close(t, dense_direct(sigma, (4, 5), None, isotropic))


def test_prior_on_arbitrary_key_cells_equals_eq5():
    key_pos = torch.tensor([[0, 0], [0, 0], [3, 4], [1, 2], [2, 2], [3, 0]])
    sigma = torch.rand(2, 2, 20, 2, dtype=torch.float64) * 1.8 + 0.1
    t = prior_block(*log_factors(sigma, (4, 5), key_pos, False), key_pos)
    assert t.shape == (2, 2, 20, 6)
    torch.testing.assert_close(t, dense_direct(sigma, (4, 5), key_pos, False))


def test_tiny_sigma_concentrates_the_prior_on_the_token_itself():
    sigma = torch.full((1, 1, 9, 2), 1e-3)
    t = prior_block(*log_factors(sigma, (3, 3), None, False), None)
    torch.testing.assert_close(t[0, 0], torch.eye(9))


def test_anisotropic_prior_spreads_along_the_wider_axis():
    sigma = torch.tensor([0.3, 1.5]).expand(1, 1, 25, 2)  # narrow in rows, wide in columns
    t = prior_block(*log_factors(sigma, (5, 5), None, False), None)[0, 0, 12].view(5, 5)  # centre token
    assert t[2, 3] > 10 * t[3, 2]


def test_sigma_mapping_range_and_layout():
    raw = torch.tensor([[[-100.0, 0.0, 100.0, 0.0]]])  # (B=1, L=1, 2 * heads=4)
    sigma = sigma_from_logits(raw, heads=2)
    assert sigma.shape == (1, 2, 1, 2)
    assert sigma[0, 0, 0, 0] < 1e-4  # 3 ** (0 + 1e-5) - 1
    torch.testing.assert_close(sigma[0, 0, 0, 1], torch.tensor(3**0.5 - 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(sigma[0, 1, 0, 0], torch.tensor(2.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("key_pos", [None, torch.tensor([[0, 1], [2, 3], [2, 3], [1, 0]])])
def test_factor_grads_is_the_adjoint_of_prior_block(key_pos):
    fy = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    fx = torch.randn(2, 12, 4, dtype=torch.float64, requires_grad=True)
    t = prior_block(fy, fx, key_pos)
    upstream = torch.randn_like(t)
    t.backward(upstream)
    d_fy, d_fx = factor_grads(upstream * t.detach(), 3, 4, key_pos)
    torch.testing.assert_close(d_fy, fy.grad)
    torch.testing.assert_close(d_fx, fx.grad)


def test_prior_with_far_keys_and_tiny_sigma_stays_a_distribution():
    """Coreset references leave cells empty; with sigma near its floor the factors reach -1e11 in float32.
    Rows must still sum to 1 and put their mass on the nearest occupied cell (this once gave NaN)."""
    from fod.prior import log_factors, prior_block

    grid = (6, 6)
    keys = torch.tensor([[5, 5], [5, 4], [0, 5]])
    sigma = torch.full((1, 2, 36, 2), 1.2e-5)
    log_fy, log_fx = log_factors(sigma, grid, keys, isotropic=False)
    t = prior_block(log_fy, log_fx, keys)
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t.sum(-1), torch.ones(1, 2, 36, dtype=t.dtype), atol=1e-5, rtol=0)
    assert t[0, 0, 35].argmax() == 0 and t[0, 0, 5].argmax() == 2  # query (5,5) -> key 0; (0,5) -> key 2
