"""Digests of the suite's numerical pipeline at a tiny size, to compare one CPU's kernels with another's.

    python tests/isa_fingerprint.py [--methods fod patchcore ...] > digests.json

Prints one JSON object: ``{"digests": {name: sha256 prefix}, "cpu": {...}}``.  Each digest covers the raw
bytes of one stage's output, so any last-bit difference shows:

* ``embedded/<category>``: one test image (with its first defect) of each embedded category at 64 px, as
  float32 before quantisation (numpy, scipy.ndimage, Pillow);
* ``features``: the default backbone (tf_efficientnet_lite0, real weights) on those images, 2 torch threads
  as the workflow's extraction (torch's convolutions: oneDNN, ATen);
* ``<method>/scores``, ``<method>/maps``, ``<method>/metrics``: every method of the CI config (the cells of
  the golden files: each baseline, FOD's official and paper variants and an ablation, knn_image) with its
  entry's params and the budget its class declares for the contract test (``tiny_params``) cut to one
  epoch (``ONE_EPOCH``), seed 7, on four training images of the synthetic split of ``synthetic.py``, one
  torch thread as the workflow's fits, then ``adbench.evaluation.metrics.evaluate`` on its prediction for
  four test images (two anomalous), and its extra numbers (FOD's best epoch on the monitored split);
* ``significance``: DeLong's test and the paired image bootstrap between two methods' scores (scipy.stats,
  numpy's float64 transcendental functions).

``cpu`` (not compared) says what ran: ``adbench.methods.determinism.kernel_provenance()`` and whether the
CPU has AVX-512 (``avx512f``, from numpy's CPUID probe).  tests/test_emulated_cpus.py runs it natively and
on emulated CPUs; it is small because the emulator runs vector code up to 200 times slower than the host
(about a minute for everything).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402  (after sys.path, before torch: the order a job imports them in)
import torch  # noqa: E402

from adbench.data.embedded import CATEGORIES, EmbeddedConfig, defects_of, sample  # noqa: E402
from adbench.evaluation.metrics import evaluate  # noqa: E402
from adbench.features.backbone import Backbone  # noqa: E402
from adbench.methods.determinism import flush_denormals, kernel_provenance  # noqa: E402
from numpy._core._multiarray_umath import __cpu_features__  # noqa: E402
from adbench.evaluation.tracking import RecordingTracker  # noqa: E402
from adbench.methods.registry import method_class  # noqa: E402
from adbench.methods.runs import load_config  # noqa: E402
from adbench.reporting.significance import delong, paired_bootstrap_image  # noqa: E402
from synthetic import synthetic_split  # noqa: E402

SIZE = 64  # px of the embedded images and the backbone's input
CI_CONFIG = HERE.parent / "config" / "ci.yaml"  # whose methods (the golden files' cells) are fitted
ONE_EPOCH = {"epochs": 1, "meta_epochs": 1, "sub_epochs": 1}  # the epoch counts of tiny_params that exist


def digest(*arrays) -> str:
    """SHA-256 (first 16 hex digits) of the arrays' raw bytes, with their dtypes and shapes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def embedded_and_features(weights_dir: Path) -> dict[str, str]:
    out, images = {}, []
    cfg = EmbeddedConfig(size=SIZE)
    for category in CATEGORIES:
        img, mask = sample(category, "test", defects_of(category)[0], 0, cfg)
        out[f"embedded/{category}"] = digest(img, mask)
        images.append((img * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1))
    torch.set_num_threads(2)  # the workflow's extraction threads (workflow/rules/features.smk)
    features = Backbone("tf_efficientnet_lite0", weights_dir)(torch.from_numpy(np.stack(images)))
    out["features"] = digest(*features)
    return out


def configurations(names: list[str]) -> dict[str, tuple[type, dict]]:
    """``name -> (class, params)`` for each of ``names``, method entries of the CI config: the entry's
    params (FOD's variant and ablation, its test monitoring, ...) with the budget its class declares for
    the contract test (``tiny_params``) laid over them, cut to one epoch (``ONE_EPOCH``)."""
    methods = load_config(CI_CONFIG)["methods"]
    out = {}
    for name in names:
        cls = method_class(methods[name]["impl"])
        tiny = {**cls.tiny_params, **{k: v for k, v in ONE_EPOCH.items() if k in cls.tiny_params}}
        params = {**(methods[name].get("params") or {}), **tiny}
        out[name] = cls, params | ({"progress": False} if "progress" in params else {})
    return out


def methods(names: list[str]) -> dict[str, str]:
    torch.set_num_threads(1)  # the workflow's fits
    train, test = synthetic_split(4, 0, seed=0), synthetic_split(2, 2, seed=1)
    masks = test.masks.numpy()
    out, scores = {}, {}
    for name, (cls, params) in configurations(names).items():
        print(f"fingerprint: {name}", file=sys.stderr, flush=True)
        method = cls(params, seed=7)
        if cls.monitors_test and cls.monitor_interval(params):  # as the runner hands it (adbench.evaluation.evaluate)
            method.fit(train, tracker=RecordingTracker(), monitor=test)
        else:
            method.fit(train)
        pred = method.predict(test)
        metrics = {**evaluate(test.labels, pred.scores, masks, pred.maps), **pred.extra}
        out |= {f"{name}/scores": digest(pred.scores), f"{name}/maps": digest(pred.maps),
                f"{name}/metrics": digest(np.array([metrics[k] for k in sorted(metrics)], np.float64))}
        scores[name] = pred.scores
    if len(scores) >= 2:
        a, b = (scores[k] for k in sorted(scores)[:2])
        out["significance"] = digest(np.array([v for v in delong(test.labels, a, b) if isinstance(v, float)], np.float64),
                                     np.array(paired_bootstrap_image(test.labels, a, b, n_boot=200), np.float64))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ci_methods = load_config(CI_CONFIG)["run"]["methods"]
    parser.add_argument("--methods", nargs="+", default=ci_methods, choices=ci_methods,
                        help="methods of the CI config to fit (default: all)")
    parser.add_argument("--no-features", action="store_true", help="skip the embedded images and the backbone")
    args = parser.parse_args(argv)
    flush_denormals()  # as every job of the workflow (adbench.jobs.job_context), before torch's threads start
    digests = {}
    if not args.no_features:
        with tempfile.TemporaryDirectory() as weights:
            digests |= embedded_and_features(Path(weights))
    digests |= methods(args.methods)
    print(json.dumps({"digests": digests, "cpu": {**kernel_provenance(), "avx512f": __cpu_features__["AVX512F"]}}))


if __name__ == "__main__":
    main()
