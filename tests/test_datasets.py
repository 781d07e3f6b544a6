"""Tiny fake trees of each layout: ids, labels, defect types, mask pairing, order, loaders and errors."""
from __future__ import annotations

from pathlib import Path

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from adbench.data.datasets import (KINDS, DatasetError, Sample, list_categories, list_samples, load_image,
                              load_mask, load_sample, verify_samples)


def _img(path: Path, value: int = 128, mode: str = "RGB", size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (value, value // 2, 255 - value), "L": value, "RGBA": (value, 0, 0, 255)}[mode]
    Image.new(mode, (size, size), colour).save(path)
    return path


def _mask(path: Path, value: int = 255, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size, size), np.uint8)
    arr[2:5, 3:6] = value
    Image.fromarray(arr).save(path)
    return path


def make_mvtec(root: Path, cat: str = "bottle") -> Path:
    for stem in ("001", "000", "002"):
        _img(root / cat / "train" / "good" / f"{stem}.png")
    _img(root / cat / "test" / "good" / "000.png")
    for defect in ("scratch", "broken_large"):
        for stem in ("001", "000"):
            _img(root / cat / "test" / defect / f"{stem}.png", 200)
            _mask(root / cat / "ground_truth" / defect / f"{stem}_mask.png")
    (root / "license.txt").write_text("fake")
    return root


def make_btad(root: Path, cat: str = "03", ext: str = ".bmp") -> Path:
    for stem in ("0001", "0000"):
        _img(root / cat / "train" / "ok" / f"{stem}{ext}")
    _img(root / cat / "test" / "ok" / f"0000{ext}")
    for stem in ("0001", "0002"):
        _img(root / cat / "test" / "ko" / f"{stem}{ext}", 30)
        _mask(root / cat / "ground_truth" / "ko" / f"{stem}{ext if cat == '03' else '.png'}")
    return root


def make_mvtec3d(root: Path, cat: str = "bagel") -> Path:
    for split in ("train", "validation"):
        _img(root / cat / split / "good" / "rgb" / "000.png")
        (root / cat / split / "good" / "xyz").mkdir(parents=True)
    _img(root / cat / "test" / "good" / "rgb" / "000.png")
    _mask(root / cat / "test" / "good" / "gt" / "000.png", 0)
    _img(root / cat / "test" / "crack" / "rgb" / "000.png")
    _mask(root / cat / "test" / "crack" / "gt" / "000.png", 255)
    return root


@pytest.mark.parametrize("kind", ["mvtec_ad", "embedded"])
def test_mvtec_layout(tmp_path, kind):
    root = make_mvtec(tmp_path)
    assert list_categories(kind, root) == ["bottle"]
    train = list_samples(kind, root, "bottle", "train")
    assert [s.id for s in train] == ["train/good/000", "train/good/001", "train/good/002"]
    assert all(s.label == 0 and s.mask is None and s.defect_type == "good" for s in train)
    test = list_samples(kind, root, "bottle", "test")
    assert [s.id for s in test] == ["test/broken_large/000", "test/broken_large/001", "test/good/000",
                                    "test/scratch/000", "test/scratch/001"]
    assert [s.label for s in test] == [1, 1, 0, 1, 1]
    scratch = test[3]
    assert scratch == Sample("test/scratch/000", root / "bottle/test/scratch/000.png", 1, "scratch",
                             root / "bottle/ground_truth/scratch/000_mask.png")
    assert test[2].mask is None
    assert list_samples(kind, root, "bottle", "test") == test  # deterministic


@pytest.mark.parametrize("cat,ext", [("01", ".bmp"), ("02", ".png"), ("03", ".bmp")])
def test_btad_layout(tmp_path, cat, ext):
    root = make_btad(tmp_path, cat, ext)
    train = list_samples("btad", root, cat, "train")
    assert [s.id for s in train] == ["train/good/0000", "train/good/0001"]
    test = list_samples("btad", root, cat, "test")
    assert [(s.id, s.label, s.defect_type) for s in test] == [
        ("test/good/0000", 0, "good"), ("test/ko/0001", 1, "ko"), ("test/ko/0002", 1, "ko")]
    mask_ext = ".bmp" if cat == "03" else ".png"
    assert test[1].mask == root / cat / "ground_truth" / "ko" / f"0001{mask_ext}"
    assert test[1].image.suffix == ext
    assert load_mask(test[1].mask, 8).sum() == 9


def test_mvtec3d_layout(tmp_path):
    root = make_mvtec3d(tmp_path)
    assert list_categories("mvtec3d", root) == ["bagel"]
    train = list_samples("mvtec3d", root, "bagel", "train")
    assert [s.id for s in train] == ["train/good/000"]  # validation ignored
    assert train[0].image == root / "bagel/train/good/rgb/000.png"
    test = list_samples("mvtec3d", root, "bagel", "test")
    assert [(s.id, s.label, s.mask) for s in test] == [
        ("test/crack/000", 1, root / "bagel/test/crack/gt/000.png"), ("test/good/000", 0, None)]


@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB"])
def test_load_image_modes(tmp_path, mode):
    path = _img(tmp_path / f"x_{mode}.png", 100, mode, size=12)
    out = load_image(path, 6)
    assert out.shape == (3, 6, 6) and out.dtype == np.uint8
    if mode == "L":
        assert (out == 100).all()
    if mode == "RGBA":
        assert (out[0] == 100).all() and (out[1:] == 0).all()


def test_load_image_palette_and_resize(tmp_path):
    img = Image.new("P", (10, 4), 1)
    img.putpalette([0, 0, 0, 10, 20, 30])
    img.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png", 8)
    assert out.shape == (3, 8, 8) and tuple(out[:, 0, 0]) == (10, 20, 30)


@pytest.mark.parametrize("value", [255, 1])
def test_load_mask_binarises(tmp_path, value):
    m = load_mask(_mask(tmp_path / "m.png", value), 8)
    assert m.dtype == np.uint8 and m.shape == (8, 8)
    assert set(np.unique(m)) == {0, 1} and m.sum() == 9
    up = load_mask(tmp_path / "m.png", 16)  # nearest: stays binary
    assert set(np.unique(up)) == {0, 1} and up.sum() == 36
    assert not load_mask(None, 5).any() and load_mask(None, 5).shape == (5, 5)


def test_missing_category(tmp_path):
    root = make_mvtec(tmp_path)
    with pytest.raises(DatasetError) as err:
        list_samples("mvtec_ad", root, "cable", "train", name="mvtec", url="https://example.org/mvtec.tar.xz")
    assert str(root / "cable") in str(err.value) and "(found: bottle)" in str(err.value)
    assert "`snakemake download_mvtec`" in str(err.value) and "datasets.mvtec.root" in str(err.value)


def test_missing_mask(tmp_path):
    root = make_mvtec(tmp_path)
    gone = root / "bottle/ground_truth/scratch/001_mask.png"
    gone.unlink()
    with pytest.raises(DatasetError) as err:
        list_samples("mvtec_ad", root, "bottle", "test")
    assert str(root / "bottle/test/scratch/001.png") in str(err.value) and str(gone) in str(err.value)


@pytest.mark.parametrize("kind", ["mvtec_ad", "btad"])
def test_a_test_split_without_normal_images_is_refused_naming_the_folder(tmp_path, kind):
    """A test/ with no good (BTAD: ok) folder used to pass, train every method, then end in sklearn's bare
    'only one class is present'."""
    import shutil

    root, cat, normal = (make_mvtec(tmp_path), "bottle", "good") if kind == "mvtec_ad" else (make_btad(tmp_path, "01"), "01", "ok")
    shutil.rmtree(root / cat / "test" / normal)
    with pytest.raises(DatasetError) as err:
        list_samples(kind, root, cat, "test", name="mine")
    assert f"{root / cat / 'test'} has no normal images" in str(err.value)
    assert str(root / cat / "test" / "good") in str(err.value) and "datasets.mine.root" in str(err.value)


def test_a_test_split_without_anomalous_images_is_refused(tmp_path):
    import shutil

    root = make_mvtec(tmp_path)
    for folder in (root / "bottle/test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    with pytest.raises(DatasetError, match="has only normal images"):
        list_samples("mvtec_ad", root, "bottle", "test")
    assert list_samples("mvtec_ad", root, "bottle", "train")  # a training split is all normal by design


def test_empty_train(tmp_path):
    root = make_btad(tmp_path, "01")
    for p in (root / "01/train/ok").iterdir():
        p.unlink()
    with pytest.raises(DatasetError) as err:
        list_samples("btad", root, "01", "train", name="btad_local")
    assert str(root / "01/train") in str(err.value) and "datasets.btad_local.root" in str(err.value)


def test_empty_train_good(tmp_path):
    root = make_mvtec(tmp_path)
    for p in (root / "bottle/train/good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=f"no images found in {root / 'bottle/train'}"):
        list_samples("mvtec_ad", root, "bottle", "train", name="mvtec")


@pytest.mark.parametrize("kind", ["mvtec_ad", "btad", "mvtec3d"])
def test_hints_name_the_config_entry_and_its_download_rule_not_the_kind(tmp_path, kind):
    for url in (None, "https://example.org/data.tar"):
        with pytest.raises(DatasetError) as err:
            list_categories(kind, tmp_path / "nope", name="mydata", url=url)
        message = str(err.value)
        assert "datasets.mydata.root" in message and "`snakemake download_mydata`" in message
        assert f"download_{kind}" not in message and f"datasets.{kind}." not in message
        assert ("has no `url`" in message) == (url is None)
    with pytest.raises(DatasetError) as err:  # from Python, without the entry: a placeholder
        list_categories(kind, tmp_path / "nope")
    assert "datasets.<name>.root" in str(err.value) and "download_<name>" in str(err.value)


def test_embedded_hint_names_its_generator_rule(tmp_path):
    with pytest.raises(DatasetError) as err:
        list_samples("embedded", tmp_path, "brick", "train", name="emb")
    message = str(err.value)
    assert "rule generate_embedded" in message and "datasets.emb.root" in message and "download" not in message


def test_corrupt_file_hint_advises_deleting_only_what_can_be_downloaded_again(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as err:  # placed by hand: never advise deleting the user's data
        load_image(bad, 8, name="mine")
    assert str(bad) in str(err.value) and f"replace {bad}" in str(err.value) and "original source" in str(err.value)
    assert "delete" not in str(err.value)
    with pytest.raises(DatasetError) as err:
        load_image(bad, 8, name="mine", url="https://example.org/mine.zip")
    assert "delete the dataset folder (datasets.mine.root)" in str(err.value)
    assert "`snakemake download_mine`" in str(err.value)


def _test_sample(root: Path, mask_size: int, mode: str = "RGB") -> Sample:
    image = _img(root / "bottle/test/scratch/000.png", 200, mode, size=8)
    mask = _mask(root / "bottle/ground_truth/scratch/000_mask.png", size=mask_size)
    return Sample("test/scratch/000", image, 1, "scratch", mask)


def test_load_sample_reads_a_grayscale_image_with_its_mask(tmp_path):
    image, mask = load_sample(_test_sample(tmp_path, 8, mode="L"), 16)
    assert image.shape == (3, 16, 16) and (image == 200).all()
    assert mask.shape == (16, 16) and mask.sum() == 36
    normal = Sample("test/good/000", _img(tmp_path / "n.png", size=8), 0, "good", None)
    assert not load_sample(normal, 4)[1].any()


def test_a_mask_of_another_size_is_refused_not_stretched(tmp_path):
    sample = _test_sample(tmp_path, 16)
    with pytest.raises(DatasetError) as err:
        load_sample(sample, 8, name="mvtec")
    message = str(err.value)
    assert f"mask {sample.mask} is 16x16 px but its image {sample.image} is 8x8 px" in message
    assert f"replace {sample.mask}" in message
    with pytest.raises(DatasetError, match="is 16x16 px but its image"):
        verify_samples([sample], progress=False)


class _FakeBackbone:
    name = "fake"

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.float()
        return [x[:, :, ::8, ::8], x[:, :, ::16, ::16]]


def test_feature_extraction_refuses_a_mask_of_another_size(tmp_path):
    from adbench.features.cache import extract_split

    root = make_mvtec(tmp_path)
    assert len(extract_split("mvtec_ad", root, "bottle", "test", _FakeBackbone(), 16, progress=False)) == 5
    mask = root / "bottle/ground_truth/scratch/001_mask.png"
    _mask(mask, size=12)
    with pytest.raises(DatasetError, match=f"mask {mask} is 12x12 px but its image"):
        extract_split("mvtec_ad", root, "bottle", "test", _FakeBackbone(), 16, progress=False, name="mvtec")


def _source(root: Path, url: str | None = None) -> dict:
    return {"name": "mvtec", "kind": "mvtec_ad", "root": str(root), "url": url}


def test_prepare_category_writes_its_marker_for_a_sound_dataset(tmp_path):
    from adbench.jobs import prepare_category

    root = make_mvtec(tmp_path / "mvtec")
    ready = tmp_path / "dataset.ready"
    prepare_category(_source(root), "bottle", 64, str(ready))
    assert json.loads(ready.read_text())["counts"] == {"train": 3, "test": 5}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("url", [None, "https://example.org/mvtec.tar.xz"])
def test_prepare_category_decodes_every_file_before_its_marker(tmp_path, url):
    from adbench.jobs import prepare_category

    root = make_mvtec(tmp_path / "mvtec")
    broken = root / "bottle/test/scratch/001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated: the header reads, the pixels do not
    ready = tmp_path / "dataset.ready"
    with pytest.raises(DatasetError) as err:
        prepare_category(_source(root, url), "bottle", 64, str(ready))
    assert not ready.exists() and not list(tmp_path.glob("*.tmp"))
    assert f"cannot read image {broken}" in str(err.value)
    if url:
        assert "delete the dataset folder (datasets.mvtec.root)" in str(err.value)
        assert "`snakemake download_mvtec`" in str(err.value)
    else:
        assert "delete" not in str(err.value) and f"replace {broken}" in str(err.value)


def test_prepare_category_refuses_a_mask_of_another_size(tmp_path):
    from adbench.jobs import prepare_category

    root = make_mvtec(tmp_path / "mvtec")
    mask = _mask(root / "bottle/ground_truth/broken_large/000_mask.png", size=9)
    ready = tmp_path / "dataset.ready"
    with pytest.raises(DatasetError, match=f"mask {mask} is 9x9 px but its image .* is 8x8 px"):
        prepare_category(_source(root), "bottle", 64, str(ready))
    assert not ready.exists()


def test_prepare_category_without_url_names_the_entry_to_fix(tmp_path):
    from adbench.jobs import prepare_category

    ready = tmp_path / "dataset.ready"
    with pytest.raises(DatasetError) as err:
        prepare_category(_source(tmp_path / "absent"), "bottle", 64, str(ready))
    assert "datasets.mvtec has no `url`" in str(err.value) and "datasets.mvtec.root" in str(err.value)
    assert not ready.exists()


def test_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    for loader in (load_image, load_mask):
        with pytest.raises(DatasetError) as err:
            loader(bad, 8)
        assert str(bad) in str(err.value)
    with pytest.raises(DatasetError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8)


def test_bad_root_and_arguments(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        list_categories("mvtec3d", tmp_path / "nope")
    with pytest.raises(ValueError):
        list_samples("visa", tmp_path, "x", "train")
    with pytest.raises(ValueError):
        list_samples("mvtec_ad", tmp_path, "x", "validation")
    assert set(KINDS) == {"embedded", "mvtec_ad", "btad", "mvtec3d"}


def _wide(path: Path, w: int = 24, h: int = 12) -> Path:
    """A w x h RGB image: left third red, middle green, right third blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 3, 0] = 255
    arr[:, w // 3: 2 * w // 3, 1] = 255
    arr[:, 2 * w // 3:, 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("kind", ["btad", "mvtec3d"])
def test_authors_preprocessing_crops_btad_and_mvtec3d_to_the_centre(tmp_path, kind):
    """24 x 12 -> 12 x 12: the shorter side is resized (here kept), then the centre is cropped, so the
    red and blue thirds are mostly cut off; squashing keeps all three colours instead."""
    path = _wide(tmp_path / "w.png")
    crop = load_image(path, 12, kind=kind, preprocess="authors")
    squash = load_image(path, 12, kind=kind, preprocess="squash")
    assert crop.shape == squash.shape == (3, 12, 12)
    assert (crop[1] == 255).mean() > 0.6 and (crop[0] == 255).mean() < 0.2  # mostly the green middle
    assert (squash[0] == 255).mean() >= 0.25 and (squash[2] == 255).mean() >= 0.25
    mask = np.zeros((12, 24), np.uint8)
    mask[:, 20:] = 255  # only in the right-most 4 columns: outside the centre crop
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png", 12, kind=kind, preprocess="authors").sum() == 0
    assert load_mask(tmp_path / "m.png", 12, kind=kind, preprocess="squash").sum() == 12 * 2


@pytest.mark.parametrize("kind", ["btad", "mvtec3d"])
@pytest.mark.parametrize("shape", [(40, 57), (61, 40), (43, 43), (33, 70)])
def test_authors_preprocessing_of_btad_and_mvtec3d_is_torchvisions_lanczos_resize_and_centre_crop(tmp_path, kind, shape):
    """The authors' btad.py / mvtec_3d.py: T.Resize(S, Image.ANTIALIAS) (Lanczos on the shorter side, the
    longer one truncated) then T.CenterCrop(S), for images and (nearest) masks, pixel for pixel; the shapes
    give odd and even crop margins (torchvision rounds them half to even)."""
    from torchvision import transforms as T

    size = 24
    rng = np.random.default_rng(sum(shape))
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    mask = tmp_path / "mask.png"
    Image.fromarray((rng.random(shape) > 0.7).astype(np.uint8) * 255).save(mask)
    ours = load_image(path, size, kind=kind, preprocess="authors")
    resize = T.Resize(size, T.InterpolationMode.LANCZOS)
    with Image.open(path) as img:
        expected = np.asarray(T.CenterCrop(size)(resize(img.convert("RGB")))).transpose(2, 0, 1)
    np.testing.assert_array_equal(ours, expected)
    with Image.open(mask) as img:
        expected_mask = np.asarray(T.CenterCrop(size)(T.Resize(size, T.InterpolationMode.NEAREST)(img))) > 0
    np.testing.assert_array_equal(load_mask(mask, size, kind=kind, preprocess="authors").astype(bool), expected_mask)


def test_authors_preprocessing_resizes_mvtec_with_lanczos(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    authors = load_image(path, 12, kind="mvtec_ad", preprocess="authors")
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB").resize((12, 12), Image.LANCZOS)).transpose(2, 0, 1)
    np.testing.assert_array_equal(authors, expected)
    assert not np.array_equal(authors, load_image(path, 12, kind="mvtec_ad", preprocess="squash"))
    with pytest.raises(ValueError, match="backbone.preprocess = 'crop'"):
        load_image(path, 12, preprocess="crop")


def test_a_16_bit_image_with_only_8_bit_values_is_read_with_a_warning_naming_it(tmp_path):
    dark = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(dark)
    assert Image.open(dark).mode.startswith("I")
    with pytest.warns(UserWarning, match=f"{dark} is a I.* image whose values are all <= 255"):
        arr = load_image(dark, 8)
    assert (arr == 200).all()  # read as 8-bit, as the warning says
    bright = tmp_path / "bright16.png"
    Image.fromarray(np.full((8, 8), 51400, dtype=np.uint16)).save(bright)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (load_image(bright, 8) == 200).all()  # 51400 / 65535 * 255 = 200: no warning


def test_a_category_with_one_training_image_or_tiny_images_is_warned_about_with_count_and_size(tmp_path, capsys):
    """Both used to run without a word and land near chance (issue 17); now rule prepare_category prints
    the warning in its log and lists it in its marker, which the workflow prints at its end."""
    from adbench.data.embedded import EmbeddedConfig, generate_category
    from adbench.jobs import prepare_category

    generate_category(tmp_path / "src", "brick", EmbeddedConfig(seed=0, size=32, n_train=1, n_test_good=2,
                                                                 n_test_anomalous=2))
    shutil.copytree(tmp_path / "src" / "brick", tmp_path / "mvtec" / "carpet")
    source = {"name": "mvtec", "kind": "mvtec_ad", "root": str(tmp_path / "mvtec"), "url": None}
    prepare_category(source, "carpet", 64, str(tmp_path / "carpet.verified"))
    marker = json.loads((tmp_path / "carpet.verified").read_text())
    found, n = marker["warnings"], sum(marker["counts"].values())
    assert len(found) == 2 and all(m.startswith(f"mvtec/carpet ({tmp_path / 'mvtec' / 'carpet'})") for m in found)
    assert "only 1 normal training image(s)" in found[0]
    assert f"{n} of {n} images are smaller than backbone.image_size = 64 px (the smallest 32x32)" in found[1]
    assert found[0] in capsys.readouterr().out
    prepare_category(source, "carpet", 32, str(tmp_path / "again.verified"))  # at their own size: no upsampling
    assert [m for m in json.loads((tmp_path / "again.verified").read_text())["warnings"] if "smaller" in m] == []
