"""make estimate: the paper profile's compute hours and disk from a per-epoch benchmark."""
from __future__ import annotations

import json

import pytest

from adbench.operations.estimate import ROOT, cache_bytes_per_image, estimate, load_config, main
from adbench.methods.registry import IMPLEMENTATIONS


def _bench(seconds_per_epoch: float) -> dict:
    methods = {impl: {"seconds_per_epoch": seconds_per_epoch, "predict_seconds": 2.0}
               for impl in IMPLEMENTATIONS}
    return {"device_name": "test", "settings": {"n_train": 10, "n_test": 4, "size": 256}, "methods": methods,
            "extraction": {"backbone": "tf_efficientnet_b6.aa_in1k", "seconds_per_image": 0.5}}


def test_the_paper_profile_in_jobs_hours_and_disk():
    config = load_config(ROOT / "config" / "paper.yaml")
    result = estimate(config, {"cpu": _bench(1.0)})
    assert result["fit_evaluate_jobs"] == 28 * 14  # 15 + 3 + 10 categories, 14 method entries, 1 seed
    assert result["images"] == (3629 + 1725) + (1799 + 741) + (2656 + 1197)
    hours = result["hours"]["cpu"]
    # FOD: 100 epochs x 0.1 s per training image (1 s per epoch of 10) + 0.5 s per test image, once for the
    # evaluation and once per epoch for the test monitoring (monitor_every: 1, the best-epoch-on-test column)
    train = 3629 + 1799 + 2656
    test = 1725 + 741 + 1197
    assert hours["fod"] == pytest.approx((100 * 0.1 * train + 101 * 0.5 * test) / 3600)
    assert hours["fod_paper"] == pytest.approx(hours["fod"])
    assert hours["fod_patchwise_rec"] == pytest.approx((100 * 0.1 * train + 0.5 * test) / 3600)
    assert hours["draem"] == pytest.approx((700 * 0.1 * train + 0.5 * test) / 3600)
    assert hours["cflow"] == pytest.approx((25 * 8 * 0.1 * train + 0.5 * test) / 3600)
    assert hours["(feature extraction)"] == pytest.approx(result["images"] * 0.5 / 3600)
    assert hours["total"] == pytest.approx(sum(v for k, v in hours.items() if k != "total"))
    # b6 at 256 px: 72 x 32^2 + 200 x 16^2 float32 per image, plus the image and the mask
    assert cache_bytes_per_image("tf_efficientnet_b6.aa_in1k", 256) == (72 * 1024 + 200 * 256) * 4 + 256 * 256 * 4
    assert result["disk_gb"]["feature_cache"] == pytest.approx(result["images"] * 761856 / 1e9)


def test_a_device_without_a_benchmark_is_reported_not_guessed(tmp_path, capsys):
    bench = tmp_path / "cpu.json"
    bench.write_text(json.dumps(_bench(1.0)))
    assert main(["--benchmark", f"cpu={bench}", "--out", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "392 fit_evaluate jobs" in printed and "cuda: not measured" in printed
    assert set(json.loads((tmp_path / "e.json").read_text())["hours"]) == {"cpu"}


def test_a_measured_gpu_gets_its_own_hours_and_every_device_says_what_it_assumed(tmp_path, capsys):
    """Issue 19: with a GPU benchmark, make estimate prints its hours beside the CPU's, and for each device the
    per-image seconds per pass and per test image that the hours multiply."""
    files = {}
    for device, seconds in (("cpu", 1.0), ("cuda", 0.05)):
        files[device] = tmp_path / f"{device}.json"
        files[device].write_text(json.dumps({**_bench(seconds), "device_name": f"test {device}"}))
    argv = [x for d, f in files.items() for x in ("--benchmark", f"{d}={f}")] + ["--out", str(tmp_path / "e.json")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    assert "cuda (test cuda), one job at a time" in printed and "cuda: not measured" not in printed
    assert result["hours"]["cuda"]["fod"] < result["hours"]["cpu"]["fod"]
    assert result["assumed"]["cuda"]["fod"]["train_seconds_per_image_pass"] == pytest.approx(0.05 / 10)
    assert result["assumed"]["cpu"]["cflow"]["predict_seconds_per_image"] == pytest.approx(2.0 / 4)
    assert "assumed on cuda" in printed and "assumed on cpu" in printed
