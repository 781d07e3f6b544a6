"""PatchCore (Roth et al., CVPR 2022), faithful to its public code, on the suite's cached features.

Faithful: locally aware patch features (each level unfolded into 3x3 neighbourhoods, zero padded; the
stride-16 level bilinearly upsampled to the stride-8 grid; each level's neighbourhood vector
adaptive-average-pooled to ``pretrain_embed_dim``, the levels stacked and pooled to ``target_embed_dim``);
the approximate greedy k-centre coreset (distances after a random linear projection to ``projection_dim``,
initial distances = mean distance to ``coreset_start_points`` random points); test patch score = Euclidean
distance to the nearest memory entry (``num_neighbors`` = 1); image score = max patch score; pixel map =
patch scores bilinearly upsampled to the image and Gaussian-smoothed (``smoothing_sigma`` = 4 px).

Adapted: the shared backbone (any of ``adbench.backbone.BACKBONES``) replaces WideResNet-50's
layer2/layer3; the features come from the cache instead of a forward pass.  ``coreset_ratio: 1.0`` keeps
the whole memory bank (exact search).

Shapes: ``N`` images, level-0 grid ``h x w`` (image size / 8), ``P = N*h*w`` patches, ``D`` =
``target_embed_dim``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from adbench.protocol import AnomalyMethod, Prediction, Split, Tracker

DEFAULT_PARAMS: dict[str, Any] = {
    "coreset_ratio": 0.1,
    "projection_dim": 128,
    "coreset_start_points": 10,
    "patch_size": 3,
    "pretrain_embed_dim": 1024,
    "target_embed_dim": 1024,
    "num_neighbors": 1,
    "smoothing_sigma": 4.0,
}
PAPER_PARAMS = DEFAULT_PARAMS  # the public code's defaults are cheap enough to run unchanged


def patch_embeddings(features: list[torch.Tensor], patch_size: int, pretrain_dim: int,
                     target_dim: int, chunk: int = 8) -> tuple[torch.Tensor, tuple[int, int]]:
    """Locally aware patch features, computed ``chunk`` images at a time to bound the temporaries.

    Args:
        features: per level (N, C_l, h_l, w_l), finest level first.
    Returns:
        (N*h*w, target_dim) float32 embeddings, row-major per image, and the grid (h, w) of level 0.
    """
    n, _, h, w = features[0].shape
    out = torch.empty(n * h * w, target_dim)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        out[s * h * w:e * h * w] = _embed_chunk([f[s:e] for f in features], patch_size, pretrain_dim, target_dim)
    return out, (h, w)


def _embed_chunk(features: list[torch.Tensor], patch_size: int, pretrain_dim: int, target_dim: int) -> torch.Tensor:
    n, _, h, w = features[0].shape
    pad = (patch_size - 1) // 2
    pooled = []
    for f in features:
        c, hl, wl = f.shape[1:]
        patches = F.unfold(f, patch_size, padding=pad)  # (n, C*k*k, hl*wl)
        if (hl, wl) != (h, w):
            grid = patches.reshape(n, -1, hl, wl)
            patches = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).reshape(n, -1, h * w)
        flat = patches.permute(0, 2, 1).reshape(n * h * w, 1, c * patch_size * patch_size)
        pooled.append(F.adaptive_avg_pool1d(flat, pretrain_dim))  # (n*h*w, 1, pretrain_dim)
    return F.adaptive_avg_pool1d(torch.cat(pooled, dim=2), target_dim).squeeze(1)


def greedy_coreset(x: torch.Tensor, n_select: int, projection_dim: int, start_points: int,
                   generator: torch.Generator, block: int = 1024, progress: bool = True) -> torch.Tensor:
    """Approximate greedy k-centre selection; returns ``n_select`` row indices of ``x`` (P, D).

    Same selection as the public code's loop (each step takes the point farthest from the selected set),
    computed lazily: points live in blocks of ``block`` rows; a block's distances to the set are brought up
    to date, with one (block, k) @ (k, m) product for the m centres added since its last update, only when
    its (stale, hence upper-bound) maximum is the largest of all blocks.  The chosen point is therefore
    the exact farthest point, and the work becomes a few cache-resident matrix products instead of one
    pass over the whole (P, k) matrix per step.
    """
    p, d = x.shape
    if projection_dim and projection_dim < d:
        weight = torch.empty(projection_dim, d)
        bound = 1.0 / np.sqrt(d)  # torch.nn.Linear's default init, as the public code's mapper
        weight.uniform_(-bound, bound, generator=generator)
        z = x @ weight.T
    else:
        z = x.clone()
    sq = (z * z).sum(1)
    starts = torch.randint(p, (min(start_points, p),), generator=generator)
    min_dist = torch.cdist(z, z[starts]).mean(1)  # (P,) approximate distance to the coreset
    bounds = list(range(0, p, block)) + [p]
    spans = list(zip(bounds[:-1], bounds[1:]))
    block_max = torch.stack([min_dist[a:b].max() for a, b in spans])
    applied = [0] * len(spans)  # how many selected centres each block's min_dist already includes
    centres = torch.empty(n_select, z.shape[1])
    centres_sq = torch.empty(n_select)
    selected = torch.empty(n_select, dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny products: worker threads would only spin and wait
    try:
        _greedy_loop(z, sq, min_dist, spans, block_max, applied, centres, centres_sq, selected, progress)
    finally:
        torch.set_num_threads(threads)
    return selected


def _greedy_loop(z, sq, min_dist, spans, block_max, applied, centres, centres_sq, selected, progress) -> None:
    for i in tqdm(range(len(selected)), desc="coreset", unit="pt", disable=not progress, mininterval=1.0):
        while True:
            k = int(torch.argmax(block_max))
            a, b = spans[k]
            if applied[k] == i:
                break
            new = slice(applied[k], i)
            d2 = sq[a:b, None] - 2.0 * z[a:b] @ centres[new].T + centres_sq[new]
            nearest = d2.min(1).values.clamp_(min=0).sqrt_()
            torch.minimum(min_dist[a:b], nearest, out=min_dist[a:b])
            applied[k] = i
            block_max[k] = min_dist[a:b].max()
        idx = a + int(torch.argmax(min_dist[a:b]))
        selected[i] = idx
        centres[i] = z[idx]
        centres_sq[i] = sq[idx]


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 8192) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest ``bank`` row (mean over the k nearest)."""
    bank_sq = (bank * bank).sum(1)
    out = torch.empty(len(queries))
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ bank.T + bank_sq
        out[s:s + chunk] = d2.topk(k, dim=1, largest=False).values.clamp_(min=0).sqrt_().mean(1)
    return out


class PatchCore(AnomalyMethod):
    """Memory bank of nominal patch features; anomaly = distance to the nearest memory entry."""

    name = "patchcore"

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__({**DEFAULT_PARAMS, **(params or {})}, seed)
        self.memory_bank: torch.Tensor | None = None

    def _embed(self, split: Split) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.params
        return patch_embeddings(split.features, p["patch_size"], p["pretrain_embed_dim"], p["target_embed_dim"])

    def fit(self, train: Split, tracker: Tracker | None = None) -> "PatchCore":
        with torch.no_grad():
            emb, _ = self._embed(train)
            ratio = float(self.params["coreset_ratio"])
            if ratio >= 1.0:
                self.memory_bank = emb
            else:
                gen = torch.Generator().manual_seed(self.seed)
                n = max(1, int(len(emb) * ratio))
                idx = greedy_coreset(emb, n, self.params["projection_dim"], self.params["coreset_start_points"], gen)
                self.memory_bank = emb[idx].clone()
        if tracker is not None:
            tracker.log_metrics({"memory_bank_size": float(len(self.memory_bank))})
        return self

    def patch_scores(self, test: Split) -> torch.Tensor:
        """(N, h, w) distance of every patch to the memory bank."""
        if self.memory_bank is None:
            raise RuntimeError("PatchCore.predict called before fit")
        with torch.no_grad():
            emb, (h, w) = self._embed(test)
            return nearest_distances(emb, self.memory_bank, self.params["num_neighbors"]).reshape(len(test), h, w)

    def predict(self, test: Split) -> Prediction:
        scores = self.patch_scores(test)
        size = test.image_size
        maps = F.interpolate(scores[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
        sigma = self.params["smoothing_sigma"]
        maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps]) if sigma else maps
        return Prediction(scores=scores.flatten(1).max(1).values.numpy(), maps=maps)

    def state_dict(self) -> dict[str, Any]:
        return {"memory_bank": self.memory_bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory_bank = state["memory_bank"]
