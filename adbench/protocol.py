"""The contract every anomaly-detection method of the suite implements.

Think scikit-learn: a method is built from its named configuration and a seed, ``fit`` learns from the
normal training split, ``predict`` scores a test split, and everything learnt is in ``state_dict`` so that
``save``/``load`` round-trip it.  Both splits come from the feature cache (``adbench.features.cache``) and carry
the frozen backbone's features *and* the resized images, so feature-based methods (PatchCore, CFLOW, FOD)
and image-based ones (DRAEM, PatchSVDD, the MKD student) read the same file.
"""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol

import numpy as np
import torch

from adbench.spec import MethodSpec

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


class NonFiniteLossError(ValueError):
    """A training loss became NaN or infinite; training stopped (see ``check_finite_losses``)."""


def check_finite_losses(method: str, epoch: int, terms: Mapping[str, Any], step: int | None = None) -> None:
    """Stop training when any loss term is NaN or infinite.

    Every trained method calls this once per optimiser step with the terms it has just computed (plain
    floats or 0-d tensors), so a diverging run stops at once instead of writing a model whose maps are
    all NaN.

    Args:
        method: the method's name for the message (e.g. ``"FOD"``).
        epoch: the epoch, counted from 1.
        terms: loss term name -> value.
        step: the optimiser step within the epoch, counted from 1 (optional).

    Raises:
        NonFiniteLossError: naming the method, the epoch (and step) and every term with its value.
    """
    values = {k: float(v) for k, v in terms.items()}
    if all(math.isfinite(v) for v in values.values()):
        return
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    listed = ", ".join(f"{k} = {v:.6g}" for k, v in values.items())
    raise NonFiniteLossError(
        f"{method}: non-finite training loss at {where} ({listed}); training stopped. Check the training split "
        f"for NaN or infinite features/images (delete its feature cache file to rebuild it), or lower the "
        f"method's lr")


#: How many units in the last place (of the values' own float type) the largest and smallest value of an
#: output may differ by relative to their magnitude and still count as equal in ``constant_output``.
CONSTANT_ULPS = 4


def constant_output(values: np.ndarray) -> bool:
    """True when every value of ``values`` (any shape, finite) is the same up to rounding in its own
    precision: ``max - min <= CONSTANT_ULPS * eps * max(|max|, |min|)``, ``eps`` of its dtype (float32 maps
    1.2e-7, float64 scores 2.2e-16; exact for integers), all zeros included.  Such scores or maps rank every
    image or pixel alike, which ``adbench.evaluation.metrics.roc_auc`` reports as exactly 0.5.  Tiny but real
    differences are not constant: CFLOW's image scores at the CI budget span a relative 1e-9 (the split's
    largest likelihood minus each image's smallest, ~exp(-20)) and rank the images (AUROC 0.59)."""
    values = np.asarray(values)
    if values.size == 0:
        return False
    eps = float(np.finfo(values.dtype).eps) if np.issubdtype(values.dtype, np.floating) else 0.0
    low, high = float(values.min()), float(values.max())
    return high - low <= CONSTANT_ULPS * eps * max(abs(high), abs(low))


class CollapseError(ValueError):
    """A method's output is degenerate: its image scores or pixel maps are constant over the test split
    (``constant_output``), or its embedding collapsed during training.  Any AUROC of it would be chance
    dressed up as a number (constant scores give exactly 0.5), so the run stops instead of reporting one.

    A method raises it from ``fit`` with what collapsed and its ``collapse_hint``; the runner
    (``adbench.evaluation.evaluate``) re-raises it ``located``: with the method's config name, the category and the
    files involved.

    Attributes:
        what: what is degenerate, with its numbers (e.g. ``its pixel maps are constant over the 20 test
            images (min 0, max 0)``).
        hint: what to change; ``{name}`` in it stands for the method's config name (``methods.<name>``).
        method: the method's config name (its registry name until located).
        impl: its registered implementation, or None.
        category: the category, or None until located.
        files: ``{role: path}`` of the files involved (e.g. ``{"model": ".../model.pt"}``).
    """

    def __init__(self, what: str, hint: str, method: str, impl: str | None = None, category: str | None = None,
                 files: Mapping[str, Any] | None = None) -> None:
        self.what, self.hint, self.method, self.impl, self.category = what, hint, method, impl, category
        self.files = {role: str(path) for role, path in (files or {}).items()}
        where = method + (f" (impl {impl})" if impl and impl != method else "")
        where += f", category {category}" if category else ""
        listed = "; ".join(f"{role}: {path}" for role, path in self.files.items())
        super().__init__(
            f"{where}: {what}.  A constant output ranks every image and pixel alike (AUROC exactly 0.5): not a "
            f"result, so nothing was reported." + (f"  Files: {listed}." if listed else "")
            + f"  What to change: {hint.replace('{name}', method)}.  Then rerun this cell.")

    def located(self, method: str, impl: str, category: str, files: Mapping[str, Any]) -> "CollapseError":
        """The same collapse with the runner's context: config name, impl, category, and more ``files``."""
        return CollapseError(self.what, self.hint, method, impl, category, {**self.files, **files})


class DeviceError(ValueError):
    """The ``device`` setting is not a device name, or names a device this machine does not have."""


#: What the config's ``device`` setting accepts (the schema's pattern too).
DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str | torch.device) -> torch.device:
    """The config's ``device`` setting (or a ``torch.device``) -> the ``torch.device`` to run on.

    ``auto``: the current CUDA device when torch finds one, else the CPU; ``cpu``; ``cuda`` (the current
    CUDA device) or ``cuda:N``.  CUDA devices always come back with their index (``cuda:0``), so they
    compare equal to the ``.device`` of the tensors placed on them.

    Raises:
        DeviceError: (a ``ValueError``) for any other name, or for a CUDA device torch cannot find; the
            message names the setting and the fix (``device: cpu`` or ``device: auto``).
    """
    text = str(name).strip()
    if not DEVICE_SETTING.fullmatch(text):
        raise DeviceError(f"device = {str(name)!r} is not a device: set the config key `device:` to auto, cpu, "
                          f"cuda or cuda:N")
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device = {text!r} but torch finds no CUDA device on this machine (torch.cuda.is_available() is "
            f"False: no GPU, no driver, or a CPU-only torch build); set `device: cpu`, or `device: auto` (CUDA "
            f"when present, else the CPU), in the config")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if text in ("auto", "cuda") else int(text.partition(":")[2])
    if index >= count:
        raise DeviceError(f"device = {text!r} but torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                          f"set `device:` to one of them, `cuda` or `auto`, in the config")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """What to record about ``device`` next to its name: the GPU model for CUDA devices, else ``"cpu"``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def state_to_cpu(state: Any) -> Any:
    """``state`` with every tensor (in nested dicts, lists and tuples) detached and on the CPU.

    ``state_dict`` implementations return their state through it, so a checkpoint written on a GPU loads
    on a machine without one.  CPU tensors come back as they are (no copy).
    """
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: state_to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(state_to_cpu(v) for v in state)
    return state


class AnomalyMethod(MethodSpec, ABC):
    """Base class: ``Method(params, seed).fit(train).predict(test)``.

    A subclass inherits its spec (``adbench.spec``: ``name``, defaults, validation, what a fit reads),
    passes ``self.check_params(params)`` (the ``params`` mapping of the method's entry in the config,
    resolved against the defaults) to this ``__init__`` and keeps all learnt state in ``state_dict()``.
    ``fit`` must be deterministic given ``seed`` on one machine.

    Devices: ``method.to(device)`` (before ``fit``, or after ``load``) sets ``self.device``, where ``fit``
    trains and ``predict`` scores: networks and buffers live there and every batch of features or images
    is moved there; networks are built and initialised on the CPU first and random draws come from CPU
    generators, so only the arithmetic depends on the device.  ``predict`` returns numpy arrays (CPU) and
    ``state_dict`` CPU tensors (``state_to_cpu``), so ``save``/``load(path, device=...)`` work across
    devices.  The runner calls ``to`` with the config's ``device`` setting (``resolve_device``).
    """

    #: The loss terms a non-finite-loss message (``check_finite_losses``) names; empty for a method that
    #: takes no optimiser steps.
    loss_terms: ClassVar[tuple[str, ...]] = ()
    #: A fit of seconds on tests/synthetic.py's split (a few optimiser steps), for the contract, device and
    #: numerical-guard tests; every registered method declares its own.
    tiny_params: ClassVar[dict[str, Any]] = {}
    #: What to change when the method's output collapses (``CollapseError``: scores or maps constant over the
    #: test split, or a collapsed embedding), naming the params that cause it; ``{name}`` stands for the
    #: method's config name.  Each trained method states its own; this is the generic advice.
    collapse_hint: ClassVar[str] = (
        "check methods.{name}.params (learning rate, epoch counts, loss weights) and the per-epoch training "
        "losses in run.json (history): a network that outputs one value everywhere has found a trivial "
        "solution or has not trained; a constant feature cache (features/<dataset>/<category>/...) does it too")
    #: The learning check's configurations (``adbench.evaluation.learning.budgets``; tests/test_learning.py runs them on the
    #: CI data): name (``default``, or e.g. a variant) -> ``{"params": a fit of seconds, "trains": whether fit
    #: takes optimiser steps, "bars": {statistic: bar}}``.  Every registered method must declare one.
    learning_budget: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.seed = int(seed)
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> "AnomalyMethod":
        """Run on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``; see
        ``resolve_device``) from now on, and move what is already fitted there (``_place``); returns self."""
        self.device = resolve_device(device)
        self._place()
        return self

    def _place(self) -> None:
        """Move the fitted state to ``self.device``: every ``torch.nn.Module`` attribute (in place), every
        tensor attribute and every tensor value of a dict attribute.  Methods whose state lives elsewhere
        override it."""
        for key, value in list(vars(self).items()):
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
            elif isinstance(value, torch.Tensor):
                setattr(self, key, value.to(self.device))
            elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                setattr(self, key, {k: v.to(self.device) for k, v in value.items()})

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
            {"name": self.name, "params": self.params, "seed": self.seed, "state": state_to_cpu(self.state_dict())},
            tmp,
        )
        tmp.replace(path)  # atomic: a killed job never leaves a half-written model

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "AnomalyMethod":
        """The model ``save`` wrote to ``path``, on ``device`` (read onto the CPU first, so a checkpoint
        written on any device loads on any other)."""
        blob = torch.load(Path(path), map_location="cpu", weights_only=False)
        if blob["name"] != cls.name:
            raise ValueError(f"{path} holds a '{blob['name']}' model, not '{cls.name}'")
        method = cls(blob["params"], blob["seed"])
        method.load_state_dict(blob["state"])
        return method.to(device)
