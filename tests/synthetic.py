"""Small synthetic splits and a recording tracker shared by the baselines' tests.

Imported as ``from synthetic import ...``: pytest puts this directory (no ``__init__.py``) on ``sys.path``.

``synthetic_split``: sinusoidal colour textures with a fixed random-convolution "backbone" (CFLOW, MKD).
``make_split``: periodic textures on a colour gradient, anomalies a red disc; the features come from the
caller's extractor (DRAEM, PatchSVDD), e.g. ``pooled_colour`` of the images in [0, 1] or normalised.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from adbench.protocol import IMAGENET_MEAN, IMAGENET_STD, Split

SIZE = 64
CHANNELS = (12, 20)
STRIDES = (8, 16)


class RecordingTracker:
    """A ``Tracker`` that keeps every ``log_metrics`` call as ``(metrics, step)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int | None]] = []

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))


def synthetic_split(n_normal: int, n_anomalous: int, seed: int) -> Split:
    """Sinusoidal colour textures (SIZE px); anomalies carry a 16 px magenta square.

    The "backbone" features (CHANNELS at STRIDES) are a fixed function of the image (average pooling to
    the level's stride, a fixed random 3x3 convolution, tanh) plus a little noise, so they have spatial
    structure, the anomalous patch shifts them, and a student network could learn them from the images.
    """
    g = torch.Generator().manual_seed(seed)
    n = n_normal + n_anomalous
    axis = torch.arange(SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    w = 2 * math.pi * 3 / SIZE
    ph1, ph2 = (torch.rand(n, 3, 1, 1, generator=g) * 2 * math.pi for _ in range(2))
    img = 0.5 + 0.2 * torch.sin(w * xx + ph1) * torch.cos(w * yy + ph2)
    img = img + 0.03 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n_normal, n):
        y, x = (int(v) for v in torch.randint(0, SIZE - 16, (2,), generator=g))
        img[i, :, y : y + 16, x : x + 16] = torch.tensor([0.95, 0.1, 0.9]).view(3, 1, 1)
        masks[i, y : y + 16, x : x + 16] = 1
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xn = (images.float() / 255 - mean) / std
    teacher = torch.Generator().manual_seed(1234)  # the same "backbone" for every split
    features = []
    for c, s in zip(CHANNELS, STRIDES):
        weight = 0.4 * torch.randn(c, 3, 3, 3, generator=teacher)
        f = torch.tanh(F.conv2d(F.avg_pool2d(xn, s), weight, padding=1))
        features.append((f + 0.05 * torch.randn(f.shape, generator=g)).float())
    labels = np.array([0] * n_normal + [1] * n_anomalous, dtype=np.int64)
    return Split(
        ids=[f"s/{i}" for i in range(n)],
        labels=labels,
        defect_types=["good" if l == 0 else "patch" for l in labels],
        images=images,
        masks=masks,
        features=features,
        strides=STRIDES,
        backbone="synthetic",
    )


def pooled_colour(x: torch.Tensor) -> list[torch.Tensor]:
    """A stand-in 'backbone' for images (n, 3, H, W): pooled colour at strides 8 and 16 (4 and 6 channels)."""
    return [F.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4], F.avg_pool2d(x, 16).repeat(1, 2, 1, 1)]


def make_split(
    n_normal: int,
    n_anomalous: int,
    seed: int,
    size: int = SIZE,
    *,
    features: Callable[[Split], list[torch.Tensor]],
) -> Split:
    """Normals: a periodic texture on a fixed colour gradient; anomalies: the same with a planted red disc.

    ``features(split)`` gives the split's per-level features at strides 8 and 16 (the split is complete
    but for them), e.g. ``lambda s: pooled_colour(s.images.float() / 255)``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images, masks = [], []
    for i in range(n_normal + n_anomalous):
        ph = rng.uniform(0, 2 * np.pi, 2)
        t = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 16 + ph[0]) + 0.25 * np.sin(2 * np.pi * yy / 16 + ph[1])
        img = np.stack([60 + 100 * t + 60 * yy / size, 90 + 80 * t + 60 * xx / size, 140 + 60 * (1 - t)], -1)
        img = img + rng.normal(0, 1, img.shape)
        mask = np.zeros((size, size), np.uint8)
        if i >= n_normal:
            r = rng.uniform(size / 12, size / 7)
            cy, cx = rng.uniform(r + 2, size - r - 2, 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
            img[mask.astype(bool)] = (230, 40, 30)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mask)
    labels = np.array([0] * n_normal + [1] * n_anomalous, dtype=np.int64)
    imgs = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    split = Split(
        ids=[f"x/{'good' if l == 0 else 'blob'}/{i:03d}" for i, l in enumerate(labels)],
        labels=labels,
        defect_types=["good" if l == 0 else "blob" for l in labels],
        images=imgs,
        masks=torch.from_numpy(np.stack(masks)),
        features=[],
        strides=(8, 16),
        backbone="fake",
    )
    split.features = features(split)
    return split


def fit_and_predict(method, train, test):
    """Fit with a ``RecordingTracker``, predict ``test``; also report whether ``fit`` moved the global
    torch or numpy random state (a seeded method must not). Returns (method, prediction, tracker, leaked)."""
    tracker = RecordingTracker()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    method.fit(train, tracker=tracker)
    leaked = not torch.equal(torch_state, torch.get_rng_state()) or not np.array_equal(
        np_state[1], np.random.get_state()[1])
    return method, method.predict(test), tracker, leaked
