"""Patch SVDD's spec (``adbench.spec``): its params, their defaults and the public code's values.  The method
is ``baselines.patchsvdd``, whose docstring says where each value comes from."""
from __future__ import annotations

from typing import Any, Mapping

from adbench.spec import MethodSpec

#: Reduced budget for the embedded default benchmark (see the docstring of baselines/patchsvdd.py).
DEFAULT_PARAMS: dict[str, Any] = {
    "encoder": "scratch",  # or "backbone" (heads on the cached backbone features)
    "patch_sizes": None,  # (big, small); None: (64, 32) * image_size / 256
    "test_strides": [8, 8],  # None: (16, 4) * image_size / 256
    "embedding_dim": 64,
    "width": 16,  # first-layer width of the small encoder (public 32)
    "hier_width": 128,  # hidden width of the hierarchical layer (public 128)
    "classifier_width": 128,
    "lambda": 1e-3,  # chosen on validation at 128 and 256 px (baselines/patchsvdd.py); public argparse default 1
    "epochs": 12,
    "repeat": 4,
    "batch_size": 32,
    "lr": 1e-4,
    "noise_std": 0.02,
    "combine": "mult",  # mult (published), sum, big, small
    "backbone_stride": 8,
    "predict_batch_size": 16,
    "progress": True,
}

#: The public code's hyper-parameters (at 256 px).
PAPER_PARAMS: dict[str, Any] = {
    **DEFAULT_PARAMS,
    "patch_sizes": [64, 32],
    "test_strides": [16, 4],
    "width": 32,
    "hier_width": 128,
    "epochs": 300,
    "repeat": 100,
    "batch_size": 64,
    "lr": 1e-4,
    "lambda": 1e-3,  # the public README's command (--lambda_value=1e-3); the argparse default is 1
}


class PatchSVDDSpec(MethodSpec):
    name = "patchsvdd"
    label = "PatchSVDD"
    defaults = DEFAULT_PARAMS
    epoch_params = ("epochs", "repeat")
    choices = {"encoder": ("scratch", "backbone"), "combine": ("mult", "sum", "big", "small")}

    @classmethod
    def inputs(cls, params: Mapping[str, Any]) -> frozenset[str]:
        """Image patches (``encoder: scratch``) or the cached features (``encoder: backbone``)."""
        return frozenset({"features"} if params["encoder"] == "backbone" else {"images"})
