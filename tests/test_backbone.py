import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from adbench.backbone import BackboneWeightsMissing, load_classifier, weights_file


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


@pytest.mark.parametrize("name", ["tf_efficientnet_b6", "wide_resnet50_2"])
def test_missing_weights_say_which_file_to_put_where(tmp_path, name):
    with pytest.raises(BackboneWeightsMissing) as err:
        weights_file(name, tmp_path)
    assert str(tmp_path / f"{name}.safetensors") in str(err.value)
    assert "huggingface.co/timm" in str(err.value)
