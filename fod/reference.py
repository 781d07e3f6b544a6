"""Reference ("external") features of the inter branch, built once per category from the training split.

``mean_reference``: the paper's choice (Sec. 3.4) and the authors' code: the per-position mean over all
training images of the (pooled) features; N = L tokens, position-aligned with the image tokens.

``coreset_reference``: the Table 4 ablation.  A greedy k-centre (farthest-point) subsample, as in
PatchCore, of all training patch tokens of the level, N = L tokens so that the branch costs the same as
with the mean.  The cells the reference tokens are placed at (their positional encoding and the
positions the inter prior T^e measures distances to) depend on ``positions``:

  ``drop`` (the paper's reading of its Table 4: the coreset "can't preserve the position information"):
      the tokens' source cells are discarded and the coreset is laid on the grid as a sequence, in
      selection order, token k at row-major cell k, as the authors' code lays any reference of L tokens.
      The RBF prior is still applied, but the cells it sees carry no information about where a token
      came from: every query attends to the whole position-free coreset.
  ``keep``: each token keeps the grid cell it came from, so the prior still favours reference tokens
      from near the query's position (several tokens may share a cell, and some cells have none).
"""
from __future__ import annotations

import torch

from adbench.methods import neighbours
from fod.tokens import feature_tokens, grid_positions

_CHUNK = 64  # images per chunk when pooling


def mean_reference(features: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """features: (M, C, H, W) training features -> reference (H*W, C) per-position mean, positions (H*W, 2)."""
    total = sum(feature_tokens(chunk, pool).sum(0) for chunk in features.split(_CHUNK))
    return total / features.shape[0], grid_positions(*features.shape[-2:])


def coreset_reference(
    features: torch.Tensor, pool: bool, generator: torch.Generator, positions: str, proj_dim: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """features: (M, C, H, W) -> reference (H*W, C) greedy k-centre subsample of the M*H*W tokens, in
    selection order, and their cells (H*W, 2) int64: the source cells (``positions="keep"``) or the grid
    in row-major order (``"drop"``; see the module docstring).

    Distances are Euclidean, measured after a Gaussian random projection to ``proj_dim`` dimensions
    (skipped when C <= proj_dim); the first centre is drawn with ``generator``.
    """
    if positions not in ("keep", "drop"):
        raise ValueError(f"coreset positions must be 'keep' or 'drop', got {positions!r}")
    tokens = torch.cat([feature_tokens(chunk, pool) for chunk in features.split(_CHUNK)])  # (M, L, C)
    length, channels = tokens.shape[1:]
    bank = tokens.reshape(-1, channels)
    chosen = greedy_k_center(bank, length, generator, proj_dim)
    cells = grid_positions(*features.shape[-2:])
    return bank[chosen], cells[chosen % length] if positions == "keep" else cells


def greedy_k_center(points: torch.Tensor, k: int, generator: torch.Generator, proj_dim: int = 0) -> torch.Tensor:
    """Indices (k,) of a farthest-point subsample of points (P, D): start at a random point, then repeatedly
    add the point farthest (Euclidean) from everything chosen so far; distances after a Gaussian random
    projection to ``proj_dim`` dimensions when 0 < proj_dim < D.

    FOD's variant of ``adbench.methods.neighbours.greedy_k_center``: one random start point, squared distances,
    every distance updated at each step.
    """
    return neighbours.greedy_k_center(
        points, k, generator, projection_dim=proj_dim, projection="gaussian", start_points=None, squared=True
    )
