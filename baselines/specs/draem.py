"""DRAEM's spec (``adbench.spec``): its params, their defaults and the public code's values.  The method is
``baselines.draem``, whose docstring says where each value comes from."""
from __future__ import annotations

from typing import Any, Mapping

from adbench.spec import MethodSpec, ParamError

#: Reduced budget for the embedded default benchmark (see the docstring of baselines/draem.py).
DEFAULT_PARAMS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 2,
    "lr": 1e-3,
    "lr_milestones": [0.8, 0.9],
    "lr_gamma": 0.2,
    "base_width": 8,
    "disc_base_width": 8,
    "resolution": 64,  # side the networks run at; None = the split's image size
    "reconstruction": "scratch",  # or "backbone" (needs method.feature_extractor for training)
    "backbone_stride": 16,
    "anomaly_source": "offline",  # or "dtd" (needs dtd_root)
    "dtd_root": None,
    "beta_max": 0.8,
    "clean_fraction": 0.5,
    "rotate_normal_p": 0.3,
    "rotate_normal_deg": 90.0,
    "perlin_scale_exponents": [0, 6],
    "perlin_threshold": 0.5,
    "perlin_rotation_deg": 90.0,
    "ssim_window": 11,
    "focal_gamma": 2.0,
    "score_filter_size": 21,  # px at the public code's 256 px
    "score_filter_scale": "resolution",  # or "pixels" (see score_filter_px)
    "predict_batch_size": 16,
    "progress": True,
}

#: Side (px) at which the public code trains and tests, and at which its 21 px score filter is defined.
PUBLIC_IMAGE_SIZE = 256
SCORE_FILTER_SCALES = ("pixels", "resolution")

#: The public code's hyper-parameters.
PAPER_PARAMS: dict[str, Any] = {
    **DEFAULT_PARAMS,
    "epochs": 700,
    "batch_size": 8,
    "lr": 1e-4,
    "base_width": 128,
    "disc_base_width": 64,
    "resolution": None,
}


class DRAEMSpec(MethodSpec):
    name = "draem"
    label = "DRAEM"
    defaults = DEFAULT_PARAMS
    epoch_params = ("epochs",)
    choices = {"reconstruction": ("scratch", "backbone"), "score_filter_scale": SCORE_FILTER_SCALES}

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> None:
        if int(params["score_filter_size"]) % 2 != 1:
            raise ParamError(cls.label, "score_filter_size", params["score_filter_size"], "must be odd")

    @classmethod
    def inputs(cls, params: Mapping[str, Any]) -> frozenset[str]:
        """Images; with ``reconstruction: backbone`` also the cached features and the backbone itself."""
        return frozenset({"images", "features", "backbone"} if params["reconstruction"] == "backbone" else {"images"})
