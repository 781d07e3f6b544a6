"""Target correlations (the paper's Eq. 5): a Gaussian (RBF) prior over token positions, kept separable.

Query token i, in grid cell (y_i, x_i), gets a distribution over the key tokens j in cells (y_j, x_j):

    T[i, j] = exp(-(y_i - y_j)^2 / (2 vy_i) - (x_i - x_j)^2 / (2 vx_i)) / Z_i,

with per-token, per-head variances from a learned sigma head, distances in token units, and Z_i making
each row sum to 1.  Anisotropic (authors' code): vy = sigma_y^2, vx = sigma_x^2.  Isotropic (the paper's
Eq. 5): vy = vx = sigma_x^2 + sigma_y^2.  Eq. 5's factor 1 / (2 pi sigma_x sigma_y) cancels in Z_i.

The kernel is a row term times a column term, so the prior is carried as two small log-factors,
``log_fy`` (B, heads, L, H) and ``log_fx`` (B, heads, L, W), with the normaliser folded in:

    T[i, j] = exp(log_fy[i, y_j] + log_fx[i, x_j]).

Key cells come as ``key_pos`` (N, 2) int64 (row, column), or ``None`` for the full (H, W) grid in
row-major order (N = H * W; the intra branch and the position-aligned mean reference).  Dense rows of T
are built only by ``prior_block``, a few rows at a time (see ``fod.losses``).
"""
from __future__ import annotations

import torch

from fod.tokens import grid_positions


def sigma_from_logits(raw: torch.Tensor, heads: int) -> torch.Tensor:
    """Sigma-head output (B, L, 2 * heads) -> sigmas (B, heads, L, 2) in token units.

    ``[..., 0]`` is the row (vertical) sigma, ``[..., 1]`` the column one.  The authors' mapping
    sigma = 3 ** (sigmoid(5 s) + 1e-5) - 1 keeps each in (0, 2).
    """
    batch, length, _ = raw.shape
    s = raw.view(batch, length, heads, 2).transpose(1, 2)
    return torch.pow(3.0, torch.sigmoid(5.0 * s) + 1e-5) - 1.0


def log_factors(
    sigma: torch.Tensor, grid: tuple[int, int], key_pos: torch.Tensor | None, isotropic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised log-factors of the prior.

    sigma: (B, heads, L, 2) from ``sigma_from_logits``; grid: (H, W) of the query tokens (L = H * W),
    whose cells also index the keys; key_pos: (N, 2) key cells or None (full grid).
    Returns log_fy (B, heads, L, H) and log_fx (B, heads, L, W) such that
    sum_j exp(log_fy[..., i, y_j] + log_fx[..., i, x_j]) = 1 for every query i (float64 when key_pos is
    given, else sigma's dtype).
    """
    height, width = grid
    cells = grid_positions(height, width, sigma.device).to(sigma.dtype)
    dy2 = (cells[:, :1] - torch.arange(height, device=sigma.device, dtype=sigma.dtype)) ** 2  # (L, H)
    dx2 = (cells[:, 1:] - torch.arange(width, device=sigma.device, dtype=sigma.dtype)) ** 2  # (L, W)
    var = sigma.square()
    var_y, var_x = var[..., 0], var[..., 1]
    if isotropic:
        var_y = var_x = var_y + var_x
    log_fy = -dy2 / (2.0 * var_y.unsqueeze(-1))
    log_fx = -dx2 / (2.0 * var_x.unsqueeze(-1))
    if key_pos is None:  # Z_i = (sum over rows) * (sum over columns)
        return log_fy - log_fy.logsumexp(-1, keepdim=True), log_fx - log_fx.logsumexp(-1, keepdim=True)
    # Float64 here: with a small sigma and no key near the query (coreset references leave cells empty)
    # the factors reach -1e11, where float32 keeps only ~1e4 of absolute precision, so folding the
    # normaliser into log_fy would lose it and rows would no longer sum to 1 (or overflow to inf).
    log_fy, log_fx = log_fy.double(), log_fx.double()
    occupied, counts = torch.unique(key_pos, dim=0, return_counts=True)  # (P, 2), (P,)
    log_z = (log_fy[..., occupied[:, 0]] + log_fx[..., occupied[:, 1]] + counts.double().log()).logsumexp(-1)
    return log_fy - log_z.unsqueeze(-1), log_fx


def prior_block(log_fy: torch.Tensor, log_fx: torch.Tensor, key_pos: torch.Tensor | None) -> torch.Tensor:
    """Dense prior rows: log_fy (..., R, H), log_fx (..., R, W) -> T (..., R, N)."""
    if key_pos is None:
        return (log_fy.exp().unsqueeze(-1) * log_fx.exp().unsqueeze(-2)).flatten(-2)
    return (log_fy.index_select(-1, key_pos[:, 0]) + log_fx.index_select(-1, key_pos[:, 1])).exp_()


def factor_grads(
    weighted: torch.Tensor, height: int, width: int, key_pos: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``prior_block`` for log-factors: weighted = dL/dT * T (..., R, N) -> (..., R, H), (..., R, W).

    Since dT[i, j] / dlog_fy[i, a] = T[i, j] when y_j = a (else 0), the gradient of a log-factor entry is
    the sum of ``weighted`` over the keys in that row (column).
    """
    if key_pos is None:
        cells = weighted.unflatten(-1, (height, width))
        return cells.sum(-1), cells.sum(-2)
    d_fy = weighted.new_zeros(*weighted.shape[:-1], height).index_add_(-1, key_pos[:, 0], weighted)
    d_fx = weighted.new_zeros(*weighted.shape[:-1], width).index_add_(-1, key_pos[:, 1], weighted)
    return d_fy, d_fx
