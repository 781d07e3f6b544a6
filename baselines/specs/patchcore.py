"""PatchCore's spec (``adbench.spec``): its params, their defaults and the public code's values.  The method
is ``baselines.patchcore``, whose docstring says where each reading comes from."""
from __future__ import annotations

from typing import Any, Mapping

from adbench.spec import MethodSpec, ParamError

AGGREGATIONS = ("public", "average")
DISTANCES = ("squared", "euclidean")
SMOOTHING_SCALES = ("pixels", "resolution")
PUBLIC_IMAGE_SIZE = 224  # px: the public code's evaluation resolution, where its sigma = 4 applies

DEFAULT_PARAMS: dict[str, Any] = {
    "aggregation": "average",
    "distance": "euclidean",
    "smoothing_scale": "pixels",
    "coreset_ratio": 0.1,
    "projection_dim": 128,
    "coreset_start_points": 10,
    "patch_size": 3,
    "pretrain_embed_dim": 1024,
    "target_embed_dim": 1024,
    "num_neighbors": 1,
    "smoothing_sigma": 4.0,
}
#: The literal public code: unfold + adaptive pooling, squared L2, sigma = 4 px at every image size.
PAPER_PARAMS: dict[str, Any] = {**DEFAULT_PARAMS, "aggregation": "public", "distance": "squared",
                                "smoothing_scale": "pixels"}


class PatchCoreSpec(MethodSpec):
    name = "patchcore"
    label = "PatchCore"
    defaults = DEFAULT_PARAMS
    choices = {"aggregation": AGGREGATIONS, "distance": DISTANCES, "smoothing_scale": SMOOTHING_SCALES}

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> None:
        if params["distance"] == "squared" and params["num_neighbors"] != 1:
            raise ParamError(cls.label, "num_neighbors", params["num_neighbors"],
                             "distance: squared supports num_neighbors: 1 only; use distance: euclidean")
