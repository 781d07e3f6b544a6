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

Devices (``method.to(device)``): the patch embedding, the coreset selection and the nearest-neighbour
search run on ``self.device``; the memory bank lives there (saved on the CPU); the maps are smoothed on
the CPU (scipy), as before.

Shapes: ``N`` images, level-0 grid ``h x w`` (image size / 8), ``P = N*h*w`` patches, ``D`` =
``target_embed_dim``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from adbench.neighbours import greedy_k_center, nearest_distances
from adbench.protocol import AnomalyMethod, Prediction, Split, Tracker, merge_params, state_to_cpu

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
                     target_dim: int, chunk: int = 8,
                     device: torch.device | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Locally aware patch features, computed ``chunk`` images at a time to bound the temporaries.

    Args:
        features: per level (N, C_l, h_l, w_l), finest level first.
        device: where to compute them (each chunk is moved there); ``None``: the features' device.
    Returns:
        (N*h*w, target_dim) float32 embeddings on ``device``, row-major per image, and the grid (h, w) of
        level 0.
    """
    n, _, h, w = features[0].shape
    device = features[0].device if device is None else device
    out = torch.empty(n * h * w, target_dim, device=device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        out[s * h * w:e * h * w] = _embed_chunk([f[s:e].to(device) for f in features], patch_size, pretrain_dim,
                                                target_dim)
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


class PatchCore(AnomalyMethod):
    """Memory bank of nominal patch features; anomaly = distance to the nearest memory entry."""

    name = "patchcore"

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(merge_params("PatchCore", params, DEFAULT_PARAMS), seed)
        self.memory_bank: torch.Tensor | None = None

    def _embed(self, split: Split) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.params
        return patch_embeddings(split.features, p["patch_size"], p["pretrain_embed_dim"], p["target_embed_dim"],
                                device=self.device)

    def fit(self, train: Split, tracker: Tracker | None = None) -> "PatchCore":
        with torch.no_grad():
            emb, _ = self._embed(train)
            ratio = float(self.params["coreset_ratio"])
            if ratio >= 1.0:
                self.memory_bank = emb
            else:
                gen = torch.Generator().manual_seed(self.seed)
                n = max(1, int(len(emb) * ratio))
                idx = greedy_k_center(emb, n, gen, projection_dim=self.params["projection_dim"], projection="linear",
                                      start_points=self.params["coreset_start_points"], block=1024, progress=True)
                self.memory_bank = emb[idx.to(emb.device)].clone()
        if tracker is not None:
            tracker.log_metrics({"memory_bank_size": float(len(self.memory_bank))})
        return self

    def patch_scores(self, test: Split) -> torch.Tensor:
        """(N, h, w) distance of every patch to the memory bank, on ``self.device``."""
        if self.memory_bank is None:
            raise RuntimeError("PatchCore.predict called before fit")
        with torch.no_grad():
            emb, (h, w) = self._embed(test)
            bank = self.memory_bank.to(self.device)
            dist = nearest_distances(emb, bank, self.params["num_neighbors"], chunk=8192)
            return dist.reshape(len(test), h, w)

    def predict(self, test: Split) -> Prediction:
        scores = self.patch_scores(test)
        size = test.image_size
        maps = F.interpolate(scores[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        maps = maps.cpu().numpy()
        sigma = self.params["smoothing_sigma"]
        maps = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps]) if sigma else maps
        return Prediction(scores=scores.flatten(1).max(1).values.cpu().numpy(), maps=maps)

    def state_dict(self) -> dict[str, Any]:
        return state_to_cpu({"memory_bank": self.memory_bank})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory_bank = state["memory_bank"]
