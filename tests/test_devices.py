"""The ``device`` setting (issue 8): every method fits and scores on ``method.to(device)``, checkpoints are
CPU tensors that load on any device, and the workflow's setting reaches the jobs.

Here (no GPU) the device path runs on the CPU, with ``cpu`` and ``auto``; the CUDA checks run only where
torch finds a GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from synthetic import synthetic_split

from adbench.evaluation import evaluate

from adbench import jobs
from adbench.features.cache import load_split, save_split
from adbench.protocol import DeviceError, resolve_device
from adbench.methods.registry import IMPLEMENTATIONS, MethodConfigError, check_method_entry, method_class
from adbench.methods.runs import run_config

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")

#: Each registered method's tiny budget (``AnomalyMethod.tiny_params``): seconds on one CPU core.
TINY: dict[str, dict] = {impl: method_class(impl).tiny_params for impl in IMPLEMENTATIONS}


@pytest.fixture(scope="module")
def splits():
    return synthetic_split(6, 0, seed=0), synthetic_split(3, 3, seed=1)


def _fit(impl: str, device: str, train):
    return method_class(impl)(TINY[impl], seed=3).to(device).fit(train)


def _placed(method) -> list[torch.Tensor]:
    """Every parameter and buffer of the method's networks and every tensor it holds."""
    out = []
    for value in vars(method).values():
        if isinstance(value, torch.nn.Module):
            out += list(value.parameters()) + list(value.buffers())
        elif isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, dict):
            out += [v for v in value.values() if isinstance(v, torch.Tensor)]
    return out


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


def _assert_close(a: np.ndarray, b: np.ndarray, rel: float = 0.02) -> None:
    """``a`` and ``b`` agree to ``rel`` of ``b``'s largest magnitude (one model, two devices' kernels)."""
    scale = float(np.abs(b).max()) + 1e-12
    assert float(np.abs(a - b).max()) <= rel * scale, f"max difference {np.abs(a - b).max():.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_every_registered_method_declares_its_tiny_budget(impl):
    """Declared on the class itself (not inherited), and a valid set of params."""
    assert "tiny_params" in vars(method_class(impl)), f"{impl}: set tiny_params on the class"
    method_class(impl).check_params(TINY[impl])


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_device_contract(impl, splits, tmp_path):
    """cpu and auto: the same predictions (here auto is the CPU), the state on the chosen device,
    CPU tensors in the state dict, and save -> load(device='cpu') reproduces the predictions."""
    train, test = splits
    on_cpu = _fit(impl, "cpu", train)
    on_auto = _fit(impl, "auto", train)
    assert on_cpu.device == torch.device("cpu")
    assert on_auto.device == resolve_device("auto")
    for model in (on_cpu, on_auto):
        placed = _placed(model)
        assert placed, f"{impl}: no networks or tensors found after fit"
        assert {t.device for t in placed} == {model.device}, f"{impl}: state not on {model.device}"
        state = _tensors(model.state_dict())
        assert state and all(t.device.type == "cpu" for t in state), f"{impl}: state_dict has non-CPU tensors"

    a, b = on_cpu.predict(test), on_auto.predict(test)
    for p in (a, b):
        assert p.scores.shape == (len(test),) and p.maps.shape == (len(test), test.image_size, test.image_size)
        assert np.isfinite(p.scores).all() and np.isfinite(p.maps).all()
    if on_auto.device.type == "cpu":
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.maps, b.maps)

    for name, model, before in (("cpu", on_cpu, a), ("auto", on_auto, b)):
        model.save(tmp_path / f"{name}.pt")
        loaded = method_class(impl).load(tmp_path / f"{name}.pt", device="cpu")
        assert loaded.device == torch.device("cpu")
        assert {t.device.type for t in _placed(loaded)} == {"cpu"}
        again = loaded.predict(test)
        if model.device.type == "cpu":
            np.testing.assert_array_equal(again.scores, before.scores)
            np.testing.assert_array_equal(again.maps, before.maps)
        else:  # the same weights scored by other kernels (TF32 convolutions on recent GPUs)
            _assert_close(again.scores, before.scores)


def test_to_moves_a_fitted_model_and_returns_it(splits):
    train, test = splits
    model = _fit("patchcore", "cpu", train)
    assert model.to("auto") is model and model.device == resolve_device("auto")
    assert model.memory_bank.device == model.device
    assert model.predict(test).scores.dtype == np.float64


@needs_cuda
@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_a_checkpoint_made_on_cuda_loads_on_the_cpu(impl, splits, tmp_path):
    train, test = splits
    model = _fit(impl, "cuda", train)
    assert {t.device.type for t in _placed(model)} == {"cuda"}
    assert all(t.device.type == "cpu" for t in _tensors(model.state_dict()))
    on_gpu = model.predict(test)
    model.save(tmp_path / "model.pt")
    on_cpu = method_class(impl).load(tmp_path / "model.pt", device="cpu").predict(test)
    _assert_close(on_cpu.scores, on_gpu.scores)
    back = method_class(impl).load(tmp_path / "model.pt", device="cuda")
    assert {t.device.type for t in _placed(back)} == {"cuda"}


@needs_cuda
def test_the_backbone_runs_on_cuda_and_the_cache_stays_on_the_cpu(backbone):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    on_cpu = backbone.to("cpu")(images)
    try:
        on_gpu = backbone.to(resolve_device("cuda"))(images)
        assert all(f.device.type == "cuda" for f in on_gpu)
        for c, g in zip(on_cpu, on_gpu):
            _assert_close(g.cpu().numpy(), c.numpy())
    finally:
        backbone.to("cpu")


# ----------------------------------------------------------------------------------------- the setting


def test_cuda_without_cuda_stops_with_the_setting_and_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for setting in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=rf"device = '{setting}' but torch finds no CUDA device") as err:
            resolve_device(setting)
        assert "`device: cpu`" in str(err.value) and "`device: auto`" in str(err.value)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "CPU", "cuda:x", "mps"])
def test_a_setting_that_is_no_device_is_refused(bad):
    with pytest.raises(DeviceError, match="is not a device: set the config key `device:` to auto, cpu, cuda"):
        resolve_device(bad)


@needs_cuda
def test_cuda_devices_come_back_with_their_index():
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(DeviceError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("impl", ["draem", "patchsvdd"])  # the two that took a device param until issue 8
def test_the_old_per_method_device_param_names_the_new_setting(impl):
    with pytest.raises(MethodConfigError, match=rf"methods\.{impl}\.params\.device = 'auto': .*top-level config key "
                                                r"`device:`"):
        check_method_entry(impl, {"impl": impl, "params": {"device": "auto"}})


def test_the_schema_accepts_the_device_settings_and_nothing_else():
    import jsonschema

    schema = yaml.safe_load(open("workflow/schemas/config.schema.yaml"))["properties"]["device"]
    for good in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        jsonschema.validate(good, schema)
    for bad in ("gpu", "cuda:", "Auto", 0):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_the_config_device_reaches_the_fit_and_evaluate_job(tmp_path, monkeypatch):
    """What ``workflow/scripts/fit_evaluate.py`` calls, with the rule's ``device`` param: the model is
    moved there, and the resolved device is recorded, not hashed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train, test = synthetic_split(6, 0, seed=0), synthetic_split(3, 3, seed=1)
    save_split(train, tmp_path / "train.pt", {"image_size": train.image_size})
    save_split(test, tmp_path / "test.pt", {"image_size": test.image_size})
    config = yaml.safe_load(open("config/config.yaml"))
    cfg = run_config(config, "embedded", "patchcore", 0, check_method_entry("patchcore", {
        "impl": "patchcore", "params": TINY["patchcore"]}))
    assert "device" not in json.dumps(cfg)
    moved = []
    original = evaluate.build_method

    def build(*args, **kwargs):
        model = original(*args, **kwargs)
        to = model.to
        model.to = lambda device: moved.append(device) or to(device)
        return model

    monkeypatch.setattr(evaluate, "build_method", build)
    hashes = []
    for setting in ("cpu", "auto"):
        out = tmp_path / setting
        evaluate.fit_run(cfg, "cat", tmp_path / "train.pt", out / "model.pt", out / "run.json", tmp_path / "test.pt",
                         tmp_path, device=setting)
        record = evaluate.evaluate_run(tmp_path / "test.pt", out / "model.pt", out / "run.json", out, device=setting)
        run = json.loads((out / "run.json").read_text())
        assert (run["device"], run["device_name"]) == ("cpu", "cpu")
        assert json.loads((out / "metrics.json").read_text())["device"] == record["device"] == "cpu"
        hashes.append(run["config_hash"])
    assert moved == [torch.device("cpu")] * 2
    assert hashes[0] == hashes[1]  # the device is not part of the config hash


def test_the_config_device_reaches_the_feature_job(tmp_path, monkeypatch):
    """What ``workflow/scripts/extract_features.py`` calls: the backbone is built on the device, the
    cache holds CPU tensors and records the resolved device."""
    import adbench.features.backbone
    import adbench.features.cache

    made = []

    class Recorder:
        def __init__(self, name, weights_dir, device="cpu"):
            made.append(device)
            self.name = name

    split = synthetic_split(2, 1, seed=0)
    monkeypatch.setattr(adbench.features.backbone, "Backbone", Recorder)
    monkeypatch.setattr(adbench.features.cache, "extract_split", lambda *args, **kwargs: split)
    source = {"name": "synthetic", "kind": "embedded", "root": str(tmp_path), "url": None}
    jobs.extract_features(source, "cat", "test", "synthetic", 64, str(tmp_path), 4, str(tmp_path / "f.pt"),
                          device="cpu")
    assert made == [torch.device("cpu")]
    blob = torch.load(tmp_path / "f.pt", weights_only=False)
    assert blob["meta"]["device"] == "cpu"
    assert all(f.device.type == "cpu" for f in load_split(tmp_path / "f.pt").features)


def test_the_rules_pass_the_setting_to_both_jobs():
    """The workflow's side of the plumbing (no Snakemake run): both rules take ``device`` from the config
    and both scripts hand it to the job functions tested above."""
    for rule in ("features", "methods"):
        assert 'device=config.get("device", "auto")' in open(f"workflow/rules/{rule}.smk").read()
    assert "device=params.device" in open("workflow/scripts/extract_features.py").read()
    assert open("workflow/scripts/fit_evaluate.py").read().count("device=params.device") == 2
