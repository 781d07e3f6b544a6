"""The image-level kNN detector's spec (``adbench.spec``); the method is ``baselines.knn_image``."""
from __future__ import annotations

from typing import Any, Mapping

from adbench.spec import MethodSpec, ParamError

DEFAULT_PARAMS: dict[str, Any] = {"chunk": 4096}  # test cells per distance block (memory only)


class KNNImageSpec(MethodSpec):
    name = "knn_image"
    label = "knn_image"
    defaults = DEFAULT_PARAMS
    deterministic = True

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> None:
        if int(params["chunk"]) < 1:
            raise ParamError(cls.label, "chunk", params["chunk"], "must be >= 1")
