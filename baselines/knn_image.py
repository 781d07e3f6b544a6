"""``knn_image``: nearest neighbours on the cached features, the worked example of adding a method.

Not a method of the paper and not in its tables: a minimal, deterministic detector kept in the tree to
show what a method module holds (CONTRIBUTING.md) and exercised by every contract test.

* image score: Euclidean distance from the test image's mean-pooled feature vector (each level averaged
  over its grid, levels concatenated: C_8 + C_16 dims) to the nearest training image's;
* pixel map: for each stride-8 cell, the distance of its feature vector to the nearest stride-8 cell of any
  training image (exact search over N x h x w cells), bilinearly upsampled to the image size.

Nothing is random (no seed is used), so the runner fits it once whatever ``run.seeds`` holds
(``deterministic``).  Shapes: N images, level-0 grid h x w, C_l channels per level.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from adbench.evaluation.learning import IMAGE_FLOOR, LOCAL_PIXEL_FLOOR
from adbench.protocol import AnomalyMethod, Prediction, Split, Tracker
from baselines.specs.knn_image import KNNImageSpec


def _pooled(features: list[torch.Tensor]) -> torch.Tensor:
    """(N, C_8 + C_16): each level's feature map averaged over its grid, levels concatenated."""
    return torch.cat([f.float().mean(dim=(2, 3)) for f in features], dim=1)


def _cells(level: torch.Tensor) -> torch.Tensor:
    """(N * h * w, C) feature vectors of a (N, C, h, w) level, image by image, row-major."""
    return level.float().permute(0, 2, 3, 1).reshape(-1, level.shape[1])


class KNNImage(KNNImageSpec, AnomalyMethod):
    """See the module docstring.  Params: ``chunk`` (test cells per distance block; memory only)."""

    tiny_params: ClassVar[dict[str, Any]] = {}
    learning_budget = {"default": {"params": {}, "trains": False,
                                   "bars": {"image_auroc": IMAGE_FLOOR, "local_pixel_auroc": LOCAL_PIXEL_FLOOR}}}

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__(self.check_params(params), seed)
        self.bank: dict[str, torch.Tensor] = {}

    def fit(self, train: Split, tracker: Tracker | None = None) -> "KNNImage":
        self.bank = {"pooled": _pooled(train.features).to(self.device),
                     "cells": _cells(train.features[0]).to(self.device)}
        return self

    def predict(self, test: Split) -> Prediction:
        if not self.bank:
            raise RuntimeError("knn_image: predict before fit (or load)")
        if test.features[0].shape[1] != self.bank["cells"].shape[1]:
            raise ValueError(f"knn_image: test features have {test.features[0].shape[1]} channels at stride 8, "
                             f"the fitted bank {self.bank['cells'].shape[1]} (another backbone?)")
        pooled = _pooled(test.features).to(self.device)
        exact = "donot_use_mm_for_euclid_dist"  # the same on every CPU (adbench.methods.portable)
        scores = torch.cdist(pooled, self.bank["pooled"], compute_mode=exact).min(dim=1).values
        cells = _cells(test.features[0]).to(self.device)
        step = int(self.params["chunk"])
        nearest = torch.cat([torch.cdist(cells[i:i + step], self.bank["cells"], compute_mode=exact).min(dim=1).values
                             for i in range(0, len(cells), step)])
        n, _, h, w = test.features[0].shape
        maps = F.interpolate(nearest.view(n, 1, h, w), size=(test.image_size,) * 2, mode="bilinear",
                             align_corners=False)[:, 0]
        return Prediction(scores.cpu().double().numpy(), maps.cpu().numpy())

    def state_dict(self) -> dict[str, Any]:
        return dict(self.bank)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = {key: state[key] for key in ("pooled", "cells")}
