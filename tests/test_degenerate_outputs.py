"""Degenerate outputs are errors, not numbers: a collapsed method stops its fit_evaluate job.

Every trained method of the registry is fitted once (tiny budgets, small synthetic splits) by ``fit_run``
under a config name of its own, then driven through ``evaluate_run`` with real files: with a test split of
one image repeated (its real scores are then constant over the split), and with its maps made constant.
Where a collapse is cheap to cause for real, it is: DRAEM with its segmentation head zeroed (probability
0.5 at every pixel), PatchSVDD at a huge SVDD weight (its embedding collapses in training).  Each time the
message must name the config name, the category, the files and the method's own hint.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from synthetic import synthetic_split
from test_devices import TINY

from adbench.evaluation import evaluate
from adbench.features.cache import save_split
from adbench.protocol import AnomalyMethod, CollapseError, Prediction, constant_output
from adbench.methods.registry import IMPLEMENTATIONS, check_method_entry, method_class
from adbench.methods.runs import run_config

ROOT = Path(__file__).resolve().parent.parent
TRAINED = [impl for impl in IMPLEMENTATIONS if method_class(impl).epoch_params]
CATEGORY = "cat_x"


def test_the_trained_methods_are_the_five_of_table_2():
    assert sorted(TRAINED) == ["cflow", "draem", "fod", "mkd", "patchsvdd"]


def test_constant_means_equal_up_to_rounding_in_the_values_own_precision():
    assert constant_output(np.zeros((3, 4, 4), np.float32)) and constant_output(np.full(5, 0.5))
    one_ulp32 = np.nextafter(np.float32(1), np.float32(2))
    assert constant_output(np.array([1.0, one_ulp32], np.float32))  # float32 maps: rounding
    assert not constant_output(np.array([1.0, 1.0 + 1e-5], np.float32))
    assert constant_output(np.array([1.0, np.nextafter(1.0, 2.0)]))  # float64 scores: rounding
    # CFLOW's image scores at the CI budget (brick): a relative spread of 1e-9, and they rank the images
    assert not constant_output(np.array([1.0053964446654868, 1.0053964458326454]))
    assert not constant_output(np.geomspace(1e-7, 1e-3, 50).astype(np.float32))  # PatchSVDD's shrunk maps
    assert not constant_output(np.array([-1e-30, 1e-30]))


def config_name(impl: str) -> str:
    return f"my_{impl}"


def cell_config(impl: str, params: dict) -> dict:
    """The run config of ``impl`` under the config name ``my_<impl>`` (as the workflow builds it)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    name = config_name(impl)
    config["methods"][name] = {"impl": impl, "params": params}
    return run_config(config, "embedded", name, 0, check_method_entry(name, config["methods"][name]))


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    """``train.pt`` (6 normal images), ``test.pt`` (3 + 3) and ``repeated.pt`` (test's first image 6 times,
    labels and masks of test kept) in one folder."""
    folder = tmp_path_factory.mktemp("splits")
    train, test = synthetic_split(6, 0, seed=0), synthetic_split(3, 3, seed=1)
    save_split(train, folder / "train.pt", {"image_size": train.image_size})
    save_split(test, folder / "test.pt", {"image_size": test.image_size})
    one = [0] * len(test)
    test.images, test.features = test.images[one].clone(), [f[one].clone() for f in test.features]
    save_split(test, folder / "repeated.pt", {"image_size": test.image_size})
    return folder


@pytest.fixture(scope="module")
def fitted(splits, tmp_path_factory):
    """``fn(impl) -> run folder`` holding model.pt and run.json of ``fit_run`` (fitted once per module)."""
    cache = {}

    def get(impl: str) -> Path:
        if impl not in cache:
            out = tmp_path_factory.mktemp(impl)
            evaluate.fit_run(cell_config(impl, TINY[impl]), CATEGORY, splits / "train.pt", out / "model.pt",
                             out / "run.json", splits / "test.pt", out)
            cache[impl] = out
        return cache[impl]

    return get


def assert_names_everything(message: str, impl: str, files: list[Path]) -> None:
    """The message names the config name, the impl, the category, every file and the method's own hint."""
    name = config_name(impl)
    assert message.startswith(f"{name} (impl {impl}), category {CATEGORY}: "), message
    for f in files:
        assert str(f) in message, (f, message)
    assert method_class(impl).collapse_hint.replace("{name}", name) in message, message
    assert "AUROC exactly 0.5" in message and "rerun this cell" in message


def evaluate_into(run: Path, test: Path, out: str = "out") -> Path:
    """``evaluate_run`` of the fitted ``run`` on ``test``, into ``run/<out>``; returns that folder."""
    evaluate.evaluate_run(test, run / "model.pt", run / "run.json", run / out)
    return run / out


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.parametrize("impl", TRAINED)
def test_scores_constant_over_the_test_split_stop_the_job(fitted, splits, impl):
    """No stand-in: the real model scores a split of one image repeated, so its scores are constant."""
    run = fitted(impl)
    with pytest.raises(CollapseError, match="its image scores are constant over the 6 test images") as err:
        evaluate_into(run, splits / "repeated.pt")
    assert_names_everything(str(err.value), impl, [run / "model.pt", splits / "repeated.pt", run / "run.json"])
    assert_nothing_written(run / "out")


@pytest.mark.parametrize("impl", TRAINED)
def test_maps_constant_over_the_test_split_stop_the_job(fitted, splits, impl, monkeypatch):
    """The method's real prediction with its maps replaced by their mean, as a collapsed network gives them."""
    cls = method_class(impl)
    real = cls.predict

    def flattened(self, test):
        out = real(self, test)
        return Prediction(scores=out.scores, maps=np.full_like(out.maps, out.maps.mean()), extra=out.extra)

    monkeypatch.setattr(cls, "predict", flattened)
    run = fitted(impl)
    with pytest.raises(CollapseError, match="its pixel maps are constant over the 6 test images") as err:
        evaluate_into(run, splits / "test.pt")
    assert "image scores" not in str(err.value)
    assert_names_everything(str(err.value), impl, [run / "model.pt", splits / "test.pt", run / "run.json"])
    assert_nothing_written(run / "out")


@pytest.mark.parametrize("impl", TRAINED)
def test_every_trained_method_states_its_own_hint_naming_its_real_params(impl):
    cls = method_class(impl)
    assert cls.collapse_hint != AnomalyMethod.collapse_hint
    named = re.findall(r"methods\.\{name\}\.params\.(\w+)", cls.collapse_hint)
    assert named and set(named) <= set(cls.check_params({})), (named, sorted(cls.check_params({})))


def test_an_untouched_model_of_each_method_is_evaluated(fitted, splits):
    """The check passes real outputs: each fitted model writes its metrics (and the collapse tests above
    fail for a reason)."""
    for impl in TRAINED:
        out = evaluate_into(fitted(impl), splits / "test.pt", "untouched")
        assert 0.0 <= json.loads((out / "metrics.json").read_text())["image_auroc"] <= 1.0


def test_draem_with_its_segmentation_head_zeroed_collapses_for_real(fitted, splits):
    """Zeroing the discriminative network's output conv makes both classes equally likely everywhere: the
    map is 0.5 at every pixel and every image scores 0.5."""
    run = fitted("draem")
    blob = torch.load(run / "model.pt", weights_only=False)
    for key in ("out.weight", "out.bias"):
        blob["state"]["disc"][key].zero_()
    torch.save(blob, run / "zeroed.pt")
    with pytest.raises(CollapseError) as err:
        evaluate.evaluate_run(splits / "test.pt", run / "zeroed.pt", run / "run.json", run / "zeroed")
    message = str(err.value)
    assert "its image scores are constant" in message and "its pixel maps are constant" in message
    assert "(min 0.5, max 0.5)" in message
    assert_names_everything(message, "draem", [run / "zeroed.pt", splits / "test.pt"])
    assert "lower methods.my_draem.params.lr" in message
    assert_nothing_written(run / "zeroed")


def test_patchsvdd_at_a_huge_lambda_collapses_in_training_and_says_to_lower_it(splits, tmp_path):
    """An SVDD weight of 1e6 at lr 0.1 drives the big-scale embedding into tanh's saturation within 20 steps:
    every training patch gets the same embedding (spread exactly 0, native and AVX2 kernels alike).
    fit_run stops before writing the model."""
    params = {**TINY["patchsvdd"], "lambda": 1e6, "lr": 0.1, "epochs": 10, "repeat": 8}
    with pytest.raises(CollapseError) as err:
        evaluate.fit_run(cell_config("patchsvdd", params), CATEGORY, splits / "train.pt", tmp_path / "model.pt",
                         tmp_path / "run.json", splits / "test.pt", tmp_path)
    message = str(err.value)
    assert re.search(r"its big-scale embedding collapsed during training: the \d+ training-patch embeddings "
                     r"lie 0 from their centroid", message), message
    assert_names_everything(message, "patchsvdd", [splits / "train.pt"])
    assert "lower methods.my_patchsvdd.params.lambda" in message and "1e-3" in message
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "run.json").exists()
    # the same split at the tiny budget's lambda 1 and lr 1e-4 trains without collapsing
    evaluate.fit_run(cell_config("patchsvdd", TINY["patchsvdd"]), CATEGORY, splits / "train.pt",
                     tmp_path / "model.pt", tmp_path / "run.json", splits / "test.pt", tmp_path)
    assert (tmp_path / "model.pt").exists() and (tmp_path / "run.json").exists()
