"""What a profile costs before it runs: compute hours per method and device, and disk, from measurements.

Compute: ``benchmarks/bench_devices.py`` measures, per method, the seconds of one training epoch over
``n_train`` images and of scoring ``n_test`` images on one device, with the profile's network sizes
(``--budget paper``).  Training time grows linearly with the number of training images, so a category
costs ``epochs x seconds_per_epoch x train_images / n_train`` plus ``predict x test_images / n_test``, and
the profile costs the sum over its datasets, categories, methods and seeds (its DAG's ``fit_evaluate``
jobs).  Feature extraction: ``extraction.seconds_per_image`` of the same benchmark, when it measured the
profile's backbone.  Give
one benchmark file per device (``--benchmark cpu=FILE --benchmark cuda=FILE``); a device without one is
reported as not measured, never guessed.

Disk: the feature cache holds, per image, float32 features of every level plus the uint8 image and mask
at the evaluation size; each run keeps float16 maps of its test images.  The image counts of the real
datasets are below (MVTec AD's are exact; BTAD's and MVTec3D-RGB's as commonly reported, for sizing).

    python -m adbench.operations.estimate --config config/paper.yaml --benchmark cpu=results/benchmarks/devices_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adbench import ROOT
from adbench.features.backbone import BACKBONES, STRIDES
from adbench.methods.runs import load_config


# (train, test) images per category.
IMAGE_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    "mvtec_ad": {"carpet": (280, 117), "grid": (264, 78), "leather": (245, 124), "tile": (230, 117),
                 "wood": (247, 79), "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132),
                 "hazelnut": (391, 110), "metal_nut": (220, 115), "pill": (267, 167), "screw": (320, 160),
                 "toothbrush": (60, 42), "transistor": (213, 100), "zipper": (240, 151)},
    "btad": {"01": (400, 70), "02": (399, 230), "03": (1000, 441)},
    "mvtec3d": {"bagel": (244, 110), "cable_gland": (223, 108), "carrot": (286, 159), "cookie": (210, 131),
                "dowel": (288, 130), "foam": (236, 100), "peach": (361, 132), "potato": (300, 114),
                "rope": (298, 101), "tire": (210, 112)},
}
ARCHIVE_GB = {"mvtec_ad": 4.9, "btad": 1.9, "mvtec3d": 12.0}  # downloads, kept in results/downloads


def cache_bytes_per_image(backbone: str, size: int) -> int:
    """Bytes one image takes in the caches: float32 features at strides 8 and 16, the uint8 image and mask."""
    features = sum(c * (size // s) ** 2 for c, s in zip(BACKBONES[backbone].channels, STRIDES)) * 4
    return features + size * size * 3 + size * size


def estimate(config: dict, benchmarks: dict[str, dict]) -> dict:
    """Hours per device and method, job count, and disk (GB) for the profile ``config``."""
    from adbench.methods.registry import cell_params, method_spec
    from adbench.methods.runs import method_seeds

    size, backbone = config["backbone"]["image_size"], config["backbone"]["name"]
    jobs, images, test_images, hours = 0, 0, 0, {d: {} for d in benchmarks}
    unmeasured = {d: set() for d in benchmarks}
    for ds in config["run"]["datasets"]:
        kind = config["datasets"][ds]["kind"]
        for cat in config["datasets"][ds]["categories"]:
            n_train, n_test = IMAGE_COUNTS[kind][cat]
            images += n_train + n_test
            for method in config["run"]["methods"]:
                entry = config["methods"][method]
                params = cell_params(method, entry, cat)
                cls = method_spec(entry["impl"])
                seeds = len(method_seeds(config, method))
                jobs += seeds
                test_images += n_test * seeds
                for device, bench in benchmarks.items():
                    row = bench["methods"].get(entry["impl"])
                    if row is None:
                        unmeasured[device].add(entry["impl"])
                        continue
                    per_image_epoch = row["seconds_per_epoch"] / bench["settings"]["n_train"]
                    per_test_pass = row["predict_seconds"] / bench["settings"]["n_test"] * n_test
                    # a method that scores the test split while training (FOD's monitor_every) does so once
                    # every monitor_interval passes: that many more test passes
                    interval = cls.monitor_interval(params)
                    monitored = cls.passes(params) // interval if interval else 0
                    seconds = cls.passes(params) * per_image_epoch * n_train + (1 + monitored) * per_test_pass
                    hours[device][method] = hours[device].get(method, 0.0) + seeds * seconds / 3600
    for device, bench in benchmarks.items():
        extraction = bench.get("extraction") or {}
        if extraction.get("backbone") == backbone and extraction.get("seconds_per_image"):
            hours[device]["(feature extraction)"] = images * extraction["seconds_per_image"] / 3600
        else:
            unmeasured[device].add(f"feature extraction with {backbone}")
        if bench["settings"]["size"] != size:
            unmeasured[device].add(f"anything at {size} px (benchmark ran at {bench['settings']['size']} px)")
    cache = images * cache_bytes_per_image(backbone, size)
    maps = test_images * size * size * 2
    archives = sum(ARCHIVE_GB.get(config["datasets"][ds]["kind"], 0.0) for ds in config["run"]["datasets"])
    return {
        "fit_evaluate_jobs": jobs, "images": images,
        "hours": {d: {**h, "total": sum(h.values())} for d, h in hours.items()},
        "not_measured": {d: sorted(m) for d, m in unmeasured.items() if m},
        "disk_gb": {"feature_cache": cache / 1e9, "maps": maps / 1e9, "archives": archives,
                    "total": cache / 1e9 + maps / 1e9 + archives},
        "benchmarks": {d: {"device_name": b.get("device_name"), "settings": b.get("settings")}
                       for d, b in benchmarks.items()},
        # what the hours assume, per device and impl: seconds per training image per pass, per test image
        "assumed": {d: {impl: {"train_seconds_per_image_pass": row["seconds_per_epoch"] / b["settings"]["n_train"],
                               "predict_seconds_per_image": row["predict_seconds"] / b["settings"]["n_test"]}
                        for impl, row in sorted(b["methods"].items())}
                    for d, b in benchmarks.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "config" / "paper.yaml")
    p.add_argument("--benchmark", action="append", default=[], metavar="DEVICE=FILE",
                   help="bench_devices.py output measured on DEVICE (cpu, cuda, ...); repeat per device")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    benchmarks = {}
    for item in a.benchmark:
        device, _, path = item.partition("=")
        benchmarks[device] = json.loads(Path(path).read_text())
    result = estimate(load_config(a.config), benchmarks)
    lines = [f"{a.config}: {result['fit_evaluate_jobs']} fit_evaluate jobs over {result['images']} images"]
    for device, h in result["hours"].items():
        name = result["benchmarks"][device]["device_name"]
        lines.append(f"\n{device} ({name}), one job at a time: {h['total']:.1f} h")
        lines += [f"  {m:<28} {v:10.1f} h" for m, v in h.items() if m != "total"]
    for device, missing in result["not_measured"].items():
        lines.append(f"  not measured on {device}: {', '.join(missing)}")
    for device, rows in result["assumed"].items():
        settings = result["benchmarks"][device]["settings"]
        lines.append(f"\nassumed on {device} (bench_devices.py at {settings['size']} px, {settings['n_train']} "
                     f"training / {settings['n_test']} test images): seconds per training image per pass, per test image")
        lines += [f"  {impl:<28} {r['train_seconds_per_image_pass']:10.4f} {r['predict_seconds_per_image']:10.4f}"
                  for impl, r in rows.items()]
    for device in ("cuda",):
        if device not in result["hours"]:
            lines.append(f"\n{device}: not measured; on a GPU machine run `python benchmarks/bench_devices.py "
                         f"--device cuda --budget paper --out results/benchmarks/devices_cuda.json` and pass "
                         f"--benchmark cuda=results/benchmarks/devices_cuda.json")
    disk = result["disk_gb"]
    lines.append(f"\ndisk: feature cache {disk['feature_cache']:.1f} GB, maps {disk['maps']:.1f} GB, "
                 f"archives {disk['archives']:.1f} GB; total {disk['total']:.1f} GB")
    print("\n".join(lines))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
