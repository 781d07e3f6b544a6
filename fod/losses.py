"""FOD's losses: reconstruction (Eq. 3), symmetric KL ``Div`` (Eq. 6), entropy ``Ent`` (Eq. 7), and the
minimax objective of the authors' code built from them (Eq. 8, 10, 11).

With the authors' ``KL(p||q) = sum_j p_j (log(p_j + eps) - log(q_j + eps))``, eps = 1e-4, one query row gives

    Div(T, S) = KL(T||S) + KL(S||T) = sum_j (T_j - S_j) (log(T_j + eps) - log(S_j + eps)),
    Ent(S)    = -sum_j S_j log(S_j + eps).

``correlation_terms`` computes both for every (batch, head, query) of one attention map and its prior.
It holds no full (B, heads, L, N) temporary: the prior rows and every element-wise intermediate are made
a block of rows at a time (about 4 MiB each).  When a backward pass will follow, the forward pass keeps two
of them, log(S + eps) and log(T + eps) - log(S + eps), for it: the logarithms are the costliest
element-wise operations, and keeping them made a training step at the paper's shapes about 12% faster
(``benchmarks/bench_fod_step.py``, 2 threads: 1.29 -> 1.14 s) for two map-sized tensors per attention map
until the backward pass (peak RSS 1.7 -> 2.1 GB).  The rest are rebuilt there, block by block, with the
same operations on the same blocks, so every value is the same bit for bit.  Because the minimax scheme needs Div with S
detached (to train the sigma heads) and with T detached (to train the attention), it returns Div twice:
``div_prior`` passes gradient only to T, ``div_attn`` only to S.  One backward pass of loss1 + loss2 then
gives exactly the gradients of the authors' two passes.

``level_losses`` reduces the three per-token terms over the tokens alike (``token_reduction``): ``mean``
(the authors' code) or ``sum`` (the paper read literally: Eq. 7 sums Ent over the rows i; Eq. 6's Div is a
vector over the rows, summed the same way so that Eq. 8 is a scalar; Eq. 3's per-patch error likewise, so
that Eq. 11 keeps the balance of its three terms).  ``sum`` is L times ``mean`` term by term, so the
relative weights, and under Adam the training up to its epsilon, are the same.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fod.config import FODConfig
from fod.model import Correlation, LevelOutput
from fod.prior import factor_grads, prior_block

EPS = 1e-4
_BLOCK_ELEMENTS = 1 << 20  # elements per row block: 4 MiB in float32, well below glibc's mmap threshold


def _row_blocks(shape: torch.Size) -> list[slice]:
    """Slices over the query dimension (-2) of a (..., L, N) tensor, each about ``_BLOCK_ELEMENTS`` large."""
    length = shape[-2]
    rows = max(1, _BLOCK_ELEMENTS // (math.prod(shape[:-2]) * shape[-1]))
    return [slice(start, min(start + rows, length)) for start in range(0, length, rows)]


class _CorrelationTerms(torch.autograd.Function):
    """(attn (B, h, L, N), log_fy (B, h, L, H), log_fx (B, h, L, W), key_pos (N, 2) or None, keep_logs: bool,
    True when a backward pass will follow) -> div_prior, div_attn, entropy, each (B, h, L)."""

    @staticmethod
    def forward(ctx, attn, log_fy, log_fx, key_pos, keep_logs):
        div = attn.new_empty(attn.shape[:-1])
        ent = attn.new_empty(attn.shape[:-1])
        logs = []  # with keep_logs: log_s and gap of each row block, for the backward pass
        for rows in _row_blocks(attn.shape):
            s = attn[..., rows, :]
            t = prior_block(log_fy[..., rows, :], log_fx[..., rows, :], key_pos).to(s.dtype)
            log_s = (s + EPS).log_()
            ent[..., rows] = (s * log_s).sum(-1).neg_()
            gap = (t + EPS).log_().sub_(log_s)  # log(T + eps) - log(S + eps)
            div[..., rows] = (t.sub_(s)).mul_(gap).sum(-1)
            if keep_logs:
                logs += [log_s, gap]
        ctx.save_for_backward(attn, log_fy, log_fx, key_pos, *logs)
        ctx.set_materialize_grads(False)
        return div, div.clone(), ent

    @staticmethod
    @once_differentiable
    def backward(ctx, g_prior, g_attn, g_ent):
        attn, log_fy, log_fx, key_pos, *logs = ctx.saved_tensors
        height, width = log_fy.shape[-1], log_fx.shape[-1]
        want_t = g_prior is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        want_s = (g_attn is not None or g_ent is not None) and ctx.needs_input_grad[0]
        d_attn = torch.empty_like(attn) if want_s else None
        d_fy = torch.empty_like(log_fy) if want_t else None
        d_fx = torch.empty_like(log_fx) if want_t else None
        for rows, log_s, gap in zip(_row_blocks(attn.shape), logs[0::2], logs[1::2], strict=True):
            s = attn[..., rows, :]
            t = prior_block(log_fy[..., rows, :], log_fx[..., rows, :], key_pos).to(s.dtype)
            s_eps, t_eps = s + EPS, t + EPS
            diff = t - s
            if want_t:  # dDiv/dT = gap + (T - S) / (T + eps); times T for the log-factors
                weighted = (diff / t_eps).add_(gap).mul_(g_prior[..., rows, None]).mul_(t)
                d_fy[..., rows, :], d_fx[..., rows, :] = factor_grads(weighted, height, width, key_pos)
            if want_s:  # dDiv/dS = -gap - (T - S) / (S + eps);  dEnt/dS = -log(S + eps) - S / (S + eps)
                out = d_attn[..., rows, :]
                if g_attn is None:
                    torch.mul(s.div(s_eps).add_(log_s), g_ent[..., rows, None].neg(), out=out)
                elif g_ent is None:
                    torch.mul(diff.div_(s_eps).add_(gap), g_attn[..., rows, None].neg(), out=out)
                else:
                    from_div = diff.div_(s_eps).add_(gap).mul_(g_attn[..., rows, None].neg())
                    torch.addcmul(from_div, s.div(s_eps).add_(log_s), g_ent[..., rows, None].neg(), out=out)
        return d_attn, d_fy, d_fx, None, None


class CorrelationTerms(NamedTuple):
    """Per-query terms of one attention map, each (B, heads, L).

    div_prior: Div(T, S) with gradient to the prior T only (S treated as a constant);
    div_attn: the same values, with gradient to the attention S only;
    entropy: Ent(S), gradient to S.
    """

    div_prior: torch.Tensor
    div_attn: torch.Tensor
    entropy: torch.Tensor


def correlation_terms(corr: Correlation) -> CorrelationTerms:
    """Div and Ent of every query row of ``corr`` (see the module docstring)."""
    keep_logs = torch.is_grad_enabled() and any(x.requires_grad for x in (corr.attn, corr.log_fy, corr.log_fx))
    return CorrelationTerms(*_CorrelationTerms.apply(corr.attn, corr.log_fy, corr.log_fx, corr.key_pos, keep_logs))


def token_divergence(corrs: list[Correlation]) -> torch.Tensor:
    """Div of Eq. 6 per token, averaged over heads and layers: K maps (B, h, L, N) -> (B, L)."""
    return torch.stack([correlation_terms(c).div_prior.mean(1) for c in corrs]).mean(0)


def reconstruction_error(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token patch-wise discrepancy, (B, L, C) x 2 -> (B, L).

    ``mse_cos`` (authors' code): mean over channels of the squared error + (1 - cosine);
    ``l2_cos`` (paper, Eq. 3/12): L2 norm of the error + (1 - cosine).
    """
    err = (recon - target).square().mean(-1) if kind == "mse_cos" else (recon - target).norm(dim=-1)
    return err + (1.0 - F.cosine_similarity(recon, target, dim=-1))


class LevelLosses(NamedTuple):
    """The two losses of the authors' minimax scheme for one feature level, and detached parts to log.

    loss1 = rec + l1 Div_intra(T, S.detach) - l1 Div_inter(T, S.detach): its correlation part reaches the
        sigma heads (through T) and, since a sigma head's input is not detached, the layers before it;
    loss2 = rec - l1 Div_intra(T.detach, S) - l2 Ent_intra + l1 Div_inter(T.detach, S) + l2 Ent_inter: its
        correlation part reaches only the attention (q, k and what feeds them).
    Without correlation branches loss1 = rec and loss2 = 0.  Train on loss1 + loss2 (rec counts twice
    whenever a branch is on, as in the authors' two backward calls).
    """

    loss1: torch.Tensor
    loss2: torch.Tensor
    parts: dict[str, float]


def over_tokens(per_token: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, L) per-token loss -> scalar: the mean over the batch of each image's mean (``mean``) or sum
    (``sum``) over its L tokens (``token_reduction``; the same reduction for rec, Div and Ent)."""
    return per_token.mean() if reduction == "mean" else per_token.sum(-1).mean()


def level_losses(out: LevelOutput, target: torch.Tensor, cfg: FODConfig) -> LevelLosses:
    """Losses of one level: ``out`` from ``FODLevel`` on tokens ``target`` (B, L, C).

    rec (Eq. 3), Div (Eq. 6) and Ent (Eq. 7) are per-token terms, averaged over heads and layers and
    reduced over the tokens by ``cfg.token_reduction`` (mean or sum, all three alike), then over the batch
    by the mean.
    """
    reduction = cfg.token_reduction
    rec = over_tokens(reconstruction_error(out.recon, target, cfg.rec), reduction)
    parts = {"rec": rec.item()}
    loss1, loss2 = rec, (rec if (out.intra or out.inter) else torch.zeros_like(rec))
    for branch, sign, corrs in (("intra", 1.0, out.intra), ("inter", -1.0, out.inter)):
        if not corrs:
            continue
        terms = [correlation_terms(c) for c in corrs]  # each term (B, heads, L); mean(1): over heads
        div_prior = torch.stack([over_tokens(t.div_prior.mean(1), reduction) for t in terms]).mean()
        div_attn = torch.stack([over_tokens(t.div_attn.mean(1), reduction) for t in terms]).mean()
        entropy = torch.stack([over_tokens(t.entropy.mean(1), reduction) for t in terms]).mean()
        loss1 = loss1 + sign * cfg.lambda1 * div_prior
        loss2 = loss2 - sign * cfg.lambda1 * div_attn
        if cfg.lambda2:
            loss2 = loss2 - sign * cfg.lambda2 * entropy
        parts[f"{branch}_div"] = div_prior.item()
        parts[f"{branch}_entropy"] = entropy.item()
    parts["loss1"], parts["loss2"] = loss1.item(), loss2.item()
    return LevelLosses(loss1, loss2, parts)
