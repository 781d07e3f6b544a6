"""CFLOW-AD's spec (``adbench.spec``): its params, their defaults and the public code's values.  The method is
``baselines.cflow``."""
from __future__ import annotations

from typing import Any, Mapping

from adbench.spec import MethodSpec, ParamError

#: The public code's hyper-parameters (config.py / main.py of gudovskiy/cflow-ad).
PAPER_PARAMS: dict[str, Any] = {
    "coupling_blocks": 8,
    "clamp_alpha": 1.9,
    "condition_vec": 128,
    "fiber_batch": 256,  # N = 256 fibres per flow step
    "lr": 2e-4,
    "meta_epochs": 25,
    "sub_epochs": 8,
    "lr_warm_epochs": 2,
    "lr_decay_rate": 0.1,  # cosine floor = lr * 0.1**3
    # The public code trains on images rotated by up to +-5 degrees; that needs on-the-fly backbone
    # features and is not available with the feature cache (see the docstring of baselines/cflow.py).
    "augment_rotation_deg": 0.0,
    "eval_batch": 8192,  # fibres per forward pass at test time (memory only; no effect on results)
    # train.py (train_meta_epoch) calls optimizer.zero_grad() before each flow's step, under torch >= 1.6
    # (requirements.txt; the README ran 1.8), whose zero_grad() zeroes gradients instead of dropping them:
    # the other level's flow keeps a zero gradient, so Adam still moves it on its momentum every step.
    "zero_grad": "zeros",
}

#: Reduced budget of the embedded default configuration (about 13 s per category on one CPU thread at
#: 128 px with 60 training images): 8 passes at 10x the public lr.  Measured with benchmarks/budgets.py,
#: mean image AUROC over the five embedded categories (seed 0): 4 passes at 2e-4 0.590, 16 passes at 2e-4
#: 0.658, 4 passes at 2e-3 0.687, 8 passes at 2e-3 0.800 (baselines/README.md, Budgets).
DEFAULT_PARAMS: dict[str, Any] = {**PAPER_PARAMS, "meta_epochs": 4, "sub_epochs": 2, "lr_warm_epochs": 1, "lr": 2e-3,
                                  "zero_grad": "none"}
ZERO_GRAD = ("none", "zeros")


class CFlowSpec(MethodSpec):
    name = "cflow"
    label = "CFLOW"
    defaults = DEFAULT_PARAMS
    epoch_params = ("meta_epochs", "sub_epochs")
    choices = {"zero_grad": ZERO_GRAD}

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> None:
        if float(params["augment_rotation_deg"]) > 0:
            raise ValueError(
                "CFLOW's rotation augmentation (augment_rotation_deg > 0) needs backbone features of every "
                "rotated training image, computed on the fly; this suite trains from the feature cache, which "
                "holds features of the unrotated images only. Set augment_rotation_deg: 0."
            )
        if int(params["condition_vec"]) % 4:
            raise ParamError(cls.label, "condition_vec", params["condition_vec"],
                             "must be a multiple of 4 (the 2-D positional encoding's four parts)")

    @classmethod
    def passes(cls, params: Mapping[str, Any]) -> int:
        return int(params["meta_epochs"]) * int(params["sub_epochs"])
