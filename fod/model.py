"""The pure torch model of FOD: one transformer of I2Correlation layers per feature level.

Shapes: B images, L = H * W tokens on the level's (H, W) grid (row-major), C backbone channels,
d = d_model, h heads, N reference tokens.  The training loop is in ``fod.method``, the losses in
``fod.losses``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from fod.prior import log_factors, sigma_from_logits
from fod.tokens import grid_positions


class Correlation(NamedTuple):
    """One attention map and its target prior (``fod.prior``).

    attn: (B, h, L, N) softmax maps, rows over the N keys;
    log_fy: (B, h, L, H), log_fx: (B, h, L, W) normalised log-factors of the prior T;
    key_pos: (N, 2) int64 grid cells of the keys, or None when the keys are the full grid in row-major order.
    """

    attn: torch.Tensor
    log_fy: torch.Tensor
    log_fx: torch.Tensor
    key_pos: torch.Tensor | None


class LevelOutput(NamedTuple):
    """recon: (B, L, C) reconstructed tokens; intra / inter: one ``Correlation`` per layer (empty when the
    branch is off)."""

    recon: torch.Tensor
    intra: list[Correlation]
    inter: list[Correlation]


def sincos_encoding(d_model: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin/cos positional encoding, (H * W, d): the first half of the channels encodes the
    column, the second half the row, each as interleaved sin/cos of geometric frequencies."""
    half = d_model // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * -(math.log(1e4) / half))
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freq  # (W, half / 2)
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freq  # (H, half / 2)
    pe = torch.zeros(height, width, d_model, dtype=torch.float64)
    pe[:, :, 0:half:2] = cols.sin()[None]
    pe[:, :, 1:half:2] = cols.cos()[None]
    pe[:, :, half::2] = rows.sin()[:, None]
    pe[:, :, half + 1 :: 2] = rows.cos()[:, None]
    return pe.reshape(height * width, d_model).float()


class CorrelationAttention(nn.Module):
    """Multi-head attention that returns its softmax maps and, optionally, per-token prior sigmas.

    Scaling 1/sqrt(head_dim).  No output projection: the authors compute one and discard its result.
    """

    def __init__(self, d_model: int, heads: int, with_sigma: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.sigma = nn.Linear(d_model, 2 * heads) if with_sigma else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: (B, L, d) queries; context: (B, N, d) or shared (N, d) keys/values.

        Returns z (B, L, d) = attn @ V, attn (B, h, L, N), sigma (B, h, L, 2) or None.
        """
        batch, length, d_model = x.shape
        head_dim = d_model // self.heads
        q = self.q(x).view(batch, length, self.heads, head_dim).transpose(1, 2) * head_dim**-0.5
        k = self.k(context).unflatten(-1, (self.heads, head_dim)).transpose(-3, -2)  # (..., h, N, head_dim)
        v = self.v(context).unflatten(-1, (self.heads, head_dim)).transpose(-3, -2)
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        z = (attn @ v).transpose(1, 2).reshape(batch, length, d_model)
        sigma = sigma_from_logits(self.sigma(x), self.heads) if self.sigma is not None else None
        return z, attn, sigma


class I2CorrelationLayer(nn.Module):
    """One layer: intra branch (self-attention, maps S_g), inter branch (queries from the image, keys and
    values from the reference, maps S_e), fusion, FFN.

    Both branches read the same input x.  Fusion: Z = LN(Z_g - Z_e), or LN(x + Z_g - Z_e) with
    ``residual`` (the paper's Eq. 1); with a single branch (or none: plain self-attention, the
    patch-wise-only ablation) Z = LN(x + Z_branch).  Then out = LN(Z + FFN(Z)) (Eq. 2).
    """

    def __init__(self, d_model: int, heads: int, ffn_ratio: int, intra: bool, inter: bool, residual: bool) -> None:
        super().__init__()
        self.self_attn = CorrelationAttention(d_model, heads, with_sigma=intra) if intra or not inter else None
        self.cross_attn = CorrelationAttention(d_model, heads, with_sigma=True) if inter else None
        self.residual = residual
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_ratio * d_model), nn.GELU(), nn.Linear(ffn_ratio * d_model, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None):
        """x: (B, L, d); reference: (N, d) embedded reference tokens (inter branch) or None.

        Returns (out (B, L, d), (attn, sigma) of the intra branch or None, (attn, sigma) of the inter branch or None).
        """
        intra = inter = None
        if self.self_attn is not None:
            z_g, *intra = self.self_attn(x, x)
        if self.cross_attn is not None:
            z_e, *inter = self.cross_attn(x, reference)
        if intra is not None and inter is not None:
            z = z_g - z_e + x if self.residual else z_g - z_e
        else:
            z = x + (z_g if intra is not None else z_e)
        z = self.norm1(z)
        return self.norm2(z + self.ffn(z)), intra, inter


class FODLevel(nn.Module):
    """FOD's transformer for one feature level: token projection + positional encoding, K I2Correlation
    layers, final LayerNorm, projection back to C channels.

    With the inter branch it holds the reference tokens as buffers: ``reference`` (N, C) and
    ``reference_pos`` (N, 2) int64 grid cells, embedded by their own projection plus the encoding of
    their cells.
    """

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        d_model: int,
        heads: int,
        layers: int,
        ffn_ratio: int,
        intra: bool,
        inter: bool,
        residual: bool,
        isotropic: bool,
        n_reference: int,
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.with_intra, self.with_inter, self.isotropic = intra, inter, isotropic
        self.embed = _token_projection(channels, d_model)
        self.register_buffer("pos", sincos_encoding(d_model, *self.grid), persistent=False)
        if inter:
            self.ref_embed = _token_projection(channels, d_model)
            self.register_buffer("reference", torch.zeros(n_reference, channels))
            self.register_buffer("reference_pos", torch.zeros(n_reference, 2, dtype=torch.long))
        self.layers = nn.ModuleList(
            I2CorrelationLayer(d_model, heads, ffn_ratio, intra, inter, residual) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, channels)

    def set_reference(self, features: torch.Tensor, positions: torch.Tensor) -> None:
        """features: (N, C) reference tokens; positions: (N, 2) int64 (row, column) cells on this level's grid."""
        self.reference = features.detach().to(self.reference)
        self.reference_pos = positions.to(self.reference_pos)

    def forward(self, tokens: torch.Tensor) -> LevelOutput:
        """tokens: (B, L, C) -> LevelOutput."""
        height, width = self.grid
        x = self.embed(tokens) + self.pos
        reference = key_pos = None
        if self.with_inter:
            cells = self.reference_pos
            reference = self.ref_embed(self.reference) + self.pos[cells[:, 0] * width + cells[:, 1]]
            full_grid = grid_positions(height, width, cells.device)
            key_pos = None if torch.equal(cells, full_grid) else cells
        intra, inter = [], []
        for layer in self.layers:
            x, branch_g, branch_e = layer(x, reference)
            if self.with_intra:
                intra.append(self._correlation(branch_g, None))
            if self.with_inter:
                inter.append(self._correlation(branch_e, key_pos))
        return LevelOutput(self.head(self.norm(x)), intra, inter)

    def _correlation(self, branch: list[torch.Tensor], key_pos: torch.Tensor | None) -> Correlation:
        attn, sigma = branch
        return Correlation(attn, *log_factors(sigma, self.grid, key_pos, self.isotropic), key_pos)


def _token_projection(channels: int, d_model: int) -> nn.Linear:
    """C -> d projection of a token (the authors' 1x1 convolution), Kaiming-normal initialised as theirs."""
    proj = nn.Linear(channels, d_model)
    nn.init.kaiming_normal_(proj.weight, mode="fan_in", nonlinearity="leaky_relu")
    return proj
