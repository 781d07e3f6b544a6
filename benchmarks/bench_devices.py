"""Seconds per epoch of every method on one device (the config's ``device`` setting: auto, cpu, cuda, cuda:N).

Each registered method (``adbench.methods.registry``) is fitted for ``--epochs`` epochs on a synthetic split (no
dataset and no backbone weights needed: textured images of ``--size`` px with a few planted squares, and
"backbone" features at strides 8 and 16 with ``--channels`` channels made by a fixed random convolution
of the images), then scores a test split.  Per method: the fit time, the first epoch (with the one-off
setup: network construction, PatchCore's embedding and coreset, FOD's reference, moving data to the
device), the median of the later epochs (``seconds_per_epoch``), the predict time and, on CUDA, the peak
memory.  Epoch ends are taken from the training-loss reports every method sends to its tracker (CUDA is
synchronised first).  PatchCore does not train: its "epoch" is its whole fit.  When the default backbone's
weights can be prepared (``tf_efficientnet_lite0``, from a pip package), the feature extraction of the
training images is timed too.

    python benchmarks/bench_devices.py --device cuda --out results/benchmarks/devices.json
    python benchmarks/bench_devices.py --device cpu --quick            # a tiny check that it runs

``--budget default``: the reduced budgets the embedded default runs (``DEFAULT_PARAMS``, FOD's
``fod_budget``); ``--budget paper``: the public codes' widths and batch sizes (``PAPER_PARAMS``, FOD's
paper size).  Epoch counts are always ``--epochs``.  Writes JSON (``--out``) and a markdown table next to it.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adbench.methods.determinism import flush_denormals
from adbench.methods.malloc import retain_freed_memory
from adbench.protocol import IMAGENET_MEAN, IMAGENET_STD, Split, device_name, resolve_device
from adbench.methods.registry import IMPLEMENTATIONS, method_class

FOD_BUDGETS = {
    "default": {"d_model": [64, 128], "layers": 1, "heads": 4},  # config/config.yaml's fod_budget
    "paper": {"d_model": [256, 512], "layers": 3, "heads": 8},  # config/paper.yaml
}


def budget(impl: str, kind: str, epochs: int, quick: bool) -> dict[str, Any]:
    """The params of ``impl`` for this benchmark: the module's budget with ``epochs`` epochs."""
    if impl == "fod":
        return {**FOD_BUDGETS[kind], "epochs": epochs, "progress": False}
    module = __import__(IMPLEMENTATIONS[impl].partition(":")[0], fromlist=["x"])
    params = dict(module.PAPER_PARAMS if kind == "paper" else module.DEFAULT_PARAMS)
    if impl == "cflow":
        params.update(meta_epochs=1, sub_epochs=epochs)
    elif impl in ("mkd", "draem", "patchsvdd"):
        params["epochs"] = epochs
    if "progress" in params:
        params["progress"] = False
    if quick and impl == "patchsvdd":
        params["repeat"] = 1
    return params


def synthetic_split(n_normal: int, n_anomalous: int, size: int, channels: tuple[int, int], seed: int) -> Split:
    """Smooth colour textures (``size`` px) with planted squares in the anomalous images; "backbone"
    features at strides 8 and 16 from a fixed random 3x3 convolution (the same for every split)."""
    g = torch.Generator().manual_seed(seed)
    n = n_normal + n_anomalous
    noise = F.interpolate(torch.rand(n, 3, max(2, size // 16), max(2, size // 16), generator=g), size=(size, size),
                          mode="bicubic", align_corners=False)
    img = (0.25 + 0.5 * noise + 0.03 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    side = max(4, size // 8)
    for i in range(n_normal, n):
        y, x = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
        img[i, :, y : y + side, x : x + side] = torch.tensor([0.95, 0.1, 0.9]).view(3, 1, 1)
        masks[i, y : y + side, x : x + side] = 1
    images = (img * 255).round().to(torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    teacher = torch.Generator().manual_seed(1234)
    features = []
    for c, stride in zip(channels, (8, 16)):
        weight = torch.randn(c, 3, 3, 3, generator=teacher) / 3.0
        features.append(torch.tanh(F.conv2d(F.avg_pool2d(x, stride), weight, padding=1)).contiguous())
    labels = np.array([0] * n_normal + [1] * n_anomalous, dtype=np.int64)
    return Split(ids=[f"s/{i}" for i in range(n)], labels=labels,
                 defect_types=["good" if v == 0 else "square" for v in labels], images=images, masks=masks,
                 features=features, strides=(8, 16), backbone="synthetic")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochClock:
    """A tracker that notes when each epoch's training losses arrive (``step`` = the epoch)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: dict[int, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is not None and step not in self.ends:
            _sync(self.device)
            self.ends[step] = time.perf_counter()


def bench_method(impl: str, params: dict[str, Any], train: Split, test: Split, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = EpochClock(device)
    model = method_class(impl)(params, seed=0).to(device)
    _sync(device)
    start = time.perf_counter()
    model.fit(train, tracker=clock)
    _sync(device)
    fit_seconds = time.perf_counter() - start
    ends = [start] + [clock.ends[k] for k in sorted(clock.ends)]
    epochs = [b - a for a, b in zip(ends, ends[1:])] or [fit_seconds]
    start = time.perf_counter()
    prediction = model.predict(test)
    _sync(device)
    predict_seconds = time.perf_counter() - start
    row = {
        "fit_seconds": fit_seconds,
        "epochs": len(epochs),
        "first_epoch_seconds": epochs[0],
        "seconds_per_epoch": statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0],
        "predict_seconds": predict_seconds,
        "finite": bool(np.isfinite(prediction.scores).all() and np.isfinite(prediction.maps).all()),
    }
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def bench_extraction(train: Split, device: torch.device, weights_dir: Path) -> dict:
    """The default backbone over the training images on ``device`` (needs its pip-packaged weights)."""
    try:
        from adbench.features.backbone import Backbone

        backbone = Backbone("tf_efficientnet_lite0", weights_dir, device=device)
    except Exception as err:  # noqa: BLE001 - a benchmark reports what it could not measure
        return {"skipped": f"{type(err).__name__}: {err}"}
    backbone(train.images[:2])  # warm-up (CUDA context, cuDNN algorithm choice)
    _sync(device)
    start = time.perf_counter()
    for batch in train.images.split(16):
        [f.cpu() for f in backbone(batch)]
    _sync(device)
    seconds = time.perf_counter() - start
    return {"backbone": "tf_efficientnet_lite0", "images": len(train), "seconds": seconds,
            "seconds_per_image": seconds / max(len(train), 1)}


def markdown(result: dict) -> str:
    head = (f"device {result['device']} ({result['device_name']}), {result['settings']['budget']} budget, "
            f"{result['settings']['n_train']} training images at {result['settings']['size']} px, "
            f"features {result['settings']['channels']} channels\n\n")
    cuda = result["device"].startswith("cuda")
    lines = ["| method | s / epoch | first epoch (s) | fit (s) | epochs | predict (s) |"
             + (" peak MiB |" if cuda else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {r['seconds_per_epoch']:.3f} | {r['first_epoch_seconds']:.3f} | "
                     f"{r['fit_seconds']:.3f} | {r['epochs']} | {r['predict_seconds']:.3f} |"
                     + (f" {r['peak_memory_mib']:.0f} |" if cuda else ""))
    ext = result["extraction"]
    tail = ("\n\nfeature extraction: " + (f"{ext['seconds_per_image'] * 1e3:.1f} ms per image ({ext['backbone']})"
                                          if "seconds" in ext else ext["skipped"]))
    return head + "\n".join(lines) + tail + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/devices.json"))
    p.add_argument("--budget", choices=sorted(FOD_BUDGETS), default="default")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="image size in px (a multiple of 32)")
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-test", type=int, default=20, help="test images, half of them anomalous")
    p.add_argument("--channels", default="72,200",
                   help="feature channels at strides 8 and 16 (72,200: tf_efficientnet_b6; 40,112: "
                        "tf_efficientnet_lite0; 512,1024: wide_resnet50_2)")
    p.add_argument("--methods", default=",".join(IMPLEMENTATIONS), help="comma-separated registry names")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="where the backbone's converted weights live (default: a temporary folder)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run that only checks the script works: 64 px, 6 + 4 images, 2 epochs, 40,112 channels")
    a = p.parse_args()
    flush_denormals()  # as the workflow's jobs (adbench.jobs.job_settings), on torch's own thread count
    retain_freed_memory()
    if a.quick:
        a.size, a.n_train, a.n_test, a.epochs, a.channels = 64, 6, 4, 2, "40,112"
    device = resolve_device(a.device)
    channels = tuple(int(c) for c in a.channels.split(","))
    methods = [m for m in a.methods.split(",") if m]
    unknown = sorted(set(methods) - set(IMPLEMENTATIONS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {sorted(IMPLEMENTATIONS)}")
    train = synthetic_split(a.n_train, 0, a.size, channels, seed=0)
    test = synthetic_split(a.n_test - a.n_test // 2, a.n_test // 2, a.size, channels, seed=1)
    if device.type == "cuda":  # create the context before anything is timed
        torch.ones(1, device=device).add_(1)
        _sync(device)
    result: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor()}",
        "settings": {"budget": a.budget, "epochs": a.epochs, "size": a.size, "n_train": a.n_train,
                     "n_test": a.n_test, "channels": list(channels), "quick": a.quick},
        "methods": {},
    }
    for impl in methods:
        params = budget(impl, a.budget, a.epochs, a.quick)
        row = bench_method(impl, params, train, test, device)
        result["methods"][impl] = {**row, "params": params}
        print(f"{impl:>10}: {row['seconds_per_epoch']:.3f} s/epoch (first {row['first_epoch_seconds']:.3f} s, "
              f"fit {row['fit_seconds']:.3f} s, {row['epochs']} epochs), predict {row['predict_seconds']:.3f} s",
              flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["extraction"] = bench_extraction(train, device, a.weights_dir or Path(tmp))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    a.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
