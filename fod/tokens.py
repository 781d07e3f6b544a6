"""Backbone feature maps -> token sequences, and the token grid.

Tokens are one per spatial cell of a feature map, in row-major order: token ``i`` sits in row
``i // W`` and column ``i % W`` of the (H, W) grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled(features: torch.Tensor, pool: bool) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): the authors' 3x3 average pool (stride 1, zero padding counted) or as is."""
    return F.avg_pool2d(features, kernel_size=3, stride=1, padding=1) if pool else features


def feature_tokens(features: torch.Tensor, pool: bool) -> torch.Tensor:
    """(N, C, H, W) feature maps -> (N, H*W, C) tokens, pooled first when ``pool``."""
    return pooled(features, pool).flatten(2).transpose(1, 2).contiguous()


def grid_positions(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(H*W, 2) int64 (row, column) of every cell of an (H, W) grid, row-major."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.stack([rows, cols], dim=1)
