"""The contract every anomaly-detection method of the suite implements.

Think scikit-learn: a method is built from its named configuration and a seed, ``fit`` learns from the
normal training split, ``predict`` scores a test split, and everything learnt is in ``state_dict`` so that
``save``/``load`` round-trip it.  Both splits come from the feature cache (``adbench.features``) and carry
the frozen backbone's features *and* the resized images, so feature-based methods (PatchCore, CFLOW, FOD)
and image-based ones (DRAEM, PatchSVDD, the MKD student) read the same file.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    """One split of one category, as stored in the feature cache.

    Attributes:
        ids: N sample ids, ``"<split>/<defect>/<stem>"`` (e.g. ``"test/scratch/003"``).
        labels: (N,) int64, 0 normal, 1 anomalous.
        defect_types: N names, ``"good"`` for normal samples.
        images: (N, 3, H, W) uint8 RGB at the evaluation resolution (H = W = ``image_size``).
        masks: (N, H, W) uint8 in {0, 1}; all zero for normal samples.
        features: one float32 tensor per level, (N, C_l, H / s_l, W / s_l), frozen backbone output.
        strides: the level strides s_l in pixels, fine to coarse (``(8, 16)``).
        backbone: timm name of the backbone that made ``features``.
    """

    ids: list[str]
    labels: np.ndarray
    defect_types: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    features: list[torch.Tensor]
    strides: tuple[int, ...]
    backbone: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def normalized_images(self, index: slice | list[int] | None = None) -> torch.Tensor:
        """Images as float32 (n, 3, H, W), scaled to [0, 1] and ImageNet-normalised."""
        imgs = self.images if index is None else self.images[index]
        x = imgs.float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass
class Prediction:
    """What ``predict`` returns for a test split of N images.

    Attributes:
        scores: (N,) float64 image anomaly scores, higher = more anomalous.
        maps: (N, H, W) float32 pixel anomaly maps at the split's image resolution.
        extra: additional, separately named metrics (e.g. FOD's best-on-test numbers); copied verbatim
            into ``metrics.json`` and never used for the headline columns.
    """

    scores: np.ndarray
    maps: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.maps = np.asarray(self.maps, dtype=np.float32)
        if self.scores.ndim != 1 or self.maps.ndim != 3 or len(self.scores) != len(self.maps):
            raise ValueError(
                f"Prediction needs scores (N,) and maps (N, H, W); got {self.scores.shape} and {self.maps.shape}"
            )


class Tracker(Protocol):
    """Where a method reports training curves (MLflow in the workflow, nothing in tests)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...


class NullTracker:
    """A tracker that drops everything."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None


def epoch_means(
    sums: Mapping[str, float], steps: int, epoch: int, tracker: Tracker | None = None
) -> dict[str, float]:
    """An epoch's mean training terms, ``sums`` (summed over ``steps`` optimiser steps) / ``steps``.

    Also reported to ``tracker``, when given, as ``train_<term>`` at ``step=epoch``.
    """
    means = {k: v / max(steps, 1) for k, v in sums.items()}
    if tracker is not None:
        tracker.log_metrics({f"train_{k}": v for k, v in means.items()}, step=epoch)
    return means


def merge_params(method_name: str, params: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A method's resolved params: ``defaults`` updated with ``params`` (a new dict, ``defaults``' key order).

    Methods pass the result to ``AnomalyMethod.__init__``, so ``self.params``, and what ``save`` stores, is
    the full set: a saved model never depends on later defaults.

    Raises:
        ValueError: ``params`` has keys that ``defaults`` lacks (a misspelt key would otherwise be ignored);
            the message names them, e.g. ``unknown CFLOW params ['lr_rate']; known: [...]``.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {method_name} params {unknown}; known: {sorted(defaults)}")
    return {**defaults, **params}


def resolve_device(name: str) -> torch.device:
    """A method's ``device`` param: ``auto`` picks CUDA when available; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class AnomalyMethod(ABC):
    """Base class: ``Method(params, seed).fit(train).predict(test)``.

    Subclasses set ``name`` (the registry key), read their hyper-parameters from ``params`` (the
    ``params`` mapping of the method's entry in the config; ``merge_params`` resolves it against the
    method's defaults) and keep all learnt state in ``state_dict()``.  ``fit`` must be deterministic given
    ``seed`` on one machine.
    """

    name: ClassVar[str]

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.seed = int(seed)

    @abstractmethod
    def fit(self, train: Split, tracker: Tracker | None = None) -> "AnomalyMethod":
        """Learn from the normal training split; returns ``self``."""

    @abstractmethod
    def predict(self, test: Split) -> Prediction:
        """Score every image and pixel of ``test``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything ``fit`` learnt (tensors, arrays, numbers)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {"name": self.name, "params": self.params, "seed": self.seed, "state": self.state_dict()}, tmp
        )
        tmp.replace(path)  # atomic: a killed job never leaves a half-written model

    @classmethod
    def load(cls, path: str | Path) -> "AnomalyMethod":
        blob = torch.load(Path(path), map_location="cpu", weights_only=False)
        if blob["name"] != cls.name:
            raise ValueError(f"{path} holds a '{blob['name']}' model, not '{cls.name}'")
        method = cls(blob["params"], blob["seed"])
        method.load_state_dict(blob["state"])
        return method
