"""FOD's hyper-parameters: the two variant presets and the resolution of a method's ``params`` mapping.

``variant`` picks a preset for every choice where the authors' code and the paper's text differ; any of
those keys given explicitly overrides the preset.  See fod/README.md for the table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from adbench.spec import MethodSpec, ParamError, UnknownParamsError, check_epoch_counts
from fod.ablations import ABLATIONS

VARIANTS: dict[str, dict[str, Any]] = {
    "official": {  # the authors' public code
        "pool": True,
        "residual": False,
        "prior": "anisotropic",
        "rec": "mse_cos",
        "token_reduction": "mean",
        "corr_score": "max_minus",
        "level_steps": "per_level",
    },
    "paper": {  # the paper's text
        "pool": False,
        "residual": True,
        "prior": "isotropic",
        "rec": "l2_cos",
        "token_reduction": "sum",
        "corr_score": "one_minus",
        "level_steps": "joint",
    },
}

DEFAULTS: dict[str, Any] = {
    "variant": "official",
    "intra": True,
    "inter": True,
    "reference": "mean",
    "coreset_positions": "drop",
    "score": "rec_div",
    "lambda1": 0.5,
    "lambda2": 0.5,
    "layers": 3,
    "heads": 8,
    "d_model": (256, 512),
    "ffn_ratio": 4,
    "lr": 1e-4,
    "epochs": 10,
    "batch_size": 1,
    "monitor_every": 0,
    "progress": True,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "variant": tuple(VARIANTS),
    "prior": ("anisotropic", "isotropic"),
    "rec": ("mse_cos", "l2_cos"),
    "token_reduction": ("mean", "sum"),
    "corr_score": ("max_minus", "one_minus"),
    "level_steps": ("per_level", "joint"),
    "reference": ("mean", "coreset"),
    "coreset_positions": ("drop", "keep"),
    "score": ("rec_div", "rec", "div"),
}


@dataclass(frozen=True)
class FODConfig:
    """Resolved hyper-parameters (see fod/README.md for each key)."""

    variant: str
    pool: bool
    residual: bool
    prior: str
    rec: str
    token_reduction: str
    corr_score: str
    level_steps: str
    intra: bool
    inter: bool
    reference: str
    coreset_positions: str
    score: str
    lambda1: float
    lambda2: float
    layers: int
    heads: int
    d_model: tuple[int, ...]
    ffn_ratio: int
    lr: float
    epochs: int
    batch_size: int
    monitor_every: int
    progress: bool

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "d_model": list(self.d_model)}


def resolve(params: Mapping[str, Any] | None) -> FODConfig:
    """``params`` -> FODConfig: defaults, then the variant preset, then explicit keys, then the Table 4
    row named by ``ablation`` (``fod.ablations.ABLATIONS``), if any.

    Raises ``ValueError`` on unknown keys or values: ``UnknownParamsError`` for unknown keys, ``ParamError``
    (naming the key, the value and what it must be) for a bad choice or an epoch count below 1.
    """
    params = dict(params or {})
    ablation = params.pop("ablation", None)
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ParamError("FOD", "ablation", ablation, f"unknown FOD ablation; must be one of {sorted(ABLATIONS)}")
        params.update(ABLATIONS[ablation])
    known = {f.name for f in fields(FODConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise UnknownParamsError("FOD", unknown, sorted(known | {"ablation"}))
    variant = params.get("variant", DEFAULTS["variant"])
    if variant not in VARIANTS:
        raise ParamError("FOD", "variant", variant, f"must be one of {sorted(VARIANTS)}")
    values = {**DEFAULTS, **VARIANTS[variant], **params}
    for key, allowed in CHOICES.items():
        if values[key] not in allowed:
            raise ParamError("FOD", key, values[key], f"must be one of {list(allowed)}")
    check_epoch_counts("FOD", values, ("epochs",))
    if not isinstance(values["d_model"], (list, tuple)):
        raise ParamError("FOD", "d_model", values["d_model"], "must be a list with one width per feature level, "
                         "e.g. [256, 512]")
    values["d_model"] = tuple(int(d) for d in values["d_model"])
    for key in ("lambda1", "lambda2", "lr"):
        values[key] = float(values[key])
    for key in ("layers", "heads", "ffn_ratio", "epochs", "batch_size", "monitor_every"):
        values[key] = int(values[key])
    for key in ("pool", "residual", "intra", "inter", "progress"):
        values[key] = bool(values[key])
    cfg = FODConfig(**values)
    if cfg.score != "rec" and not (cfg.intra or cfg.inter):
        raise ValueError("score 'div' and 'rec_div' need a correlation branch (intra or inter)")
    if any(d % 4 or d % cfg.heads for d in cfg.d_model):
        raise ValueError(f"every d_model must be divisible by 4 and by heads={cfg.heads}, got {cfg.d_model}")
    if cfg.batch_size < 1:
        raise ParamError("FOD", "batch_size", cfg.batch_size, "must be >= 1")
    if cfg.monitor_every < 0:
        raise ParamError("FOD", "monitor_every", cfg.monitor_every, "must be >= 0 (0: no monitoring)")
    return cfg


class FODSpec(MethodSpec):
    """FOD's spec (``adbench.spec``); the method is ``fod.method.FOD``."""

    name = "fod"
    label = "FOD"
    epoch_params = ("epochs",)
    monitors_test = True
    records_curves = True

    @classmethod
    def check_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The fully resolved hyper-parameters (``resolve``: defaults, variant, ablation)."""
        return resolve(params).as_dict()

    @classmethod
    def ablation(cls, params: Mapping[str, Any]) -> str | None:
        """``ablation`` (``fod.ablations.ABLATIONS``): a Table 4 row, not a Table 2 method."""
        return params.get("ablation")

    @classmethod
    def monitor_interval(cls, params: Mapping[str, Any]) -> int:
        """``monitor_every``: the test split is scored every so many epochs (the best-epoch-on-test column)."""
        return int(params.get("monitor_every") or 0)
