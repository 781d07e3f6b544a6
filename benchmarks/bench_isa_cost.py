"""What the cross-machine guarantee costs: each method's fit + predict with kernels pinned to AVX2
(``determinism.cpu_isa: avx2``, the default) and with the host's own kernels (``native``).

One embedded category (``--category``, default generator, 128 px, the default config's budgets), features
extracted once per setting.  Each (method, setting) runs in a fresh process on one torch thread, as the
workflow's ``fit_evaluate`` job does; the two settings alternate within each repeat, so load on this
shared machine hits both alike.  Reports medians over ``--repeats`` and the ratio pinned / native, and
whether the two settings gave the same image AUROC.  Writes JSON and markdown.

    python benchmarks/bench_isa_cost.py --out results/benchmarks/isa_cost.json
    python benchmarks/bench_isa_cost.py --quick    # a tiny check that it runs

``--quick``: one repeat of FOD alone (the one method handed the test split to monitor) at the sizes and
budgets of ``config/ci.yaml`` (its generator, resolution and method params over the default's).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("avx2", "native")

# Runs in a child process: the kernel pin must be in its environment before torch starts.
CHILD = """
import json, sys, time
import torch
from adbench.jobs import job_settings
from adbench.methods.determinism import kernel_provenance
job_settings(1)  # as the workflow's jobs
from adbench.features.cache import load_split
from adbench.evaluation.metrics import roc_auc
from adbench.methods.registry import method_class
train_path, test_path, impl, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
train, test = load_split(train_path), load_split(test_path)
torch.manual_seed(0)
start = time.perf_counter()
method = method_class(impl)(params, seed=0)
# as fit_evaluate: a method that monitors the test split (FOD's monitor_every) is handed it
monitor = {"monitor": test} if params.get("monitor_every") and method.monitors_test else {}
pred = method.fit(train, **monitor).predict(test)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "image_auroc": roc_auc(test.labels, pred.scores), **kernel_provenance()}))
"""

EXTRACT = """
import sys
from pathlib import Path
from adbench.features.backbone import Backbone
from adbench.features.cache import extract_split, save_split
root, category, size, weights, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
model = Backbone("tf_efficientnet_lite0", weights)
for split in ("train", "test"):
    data = extract_split("embedded", root, category, split, model, size, progress=False)
    save_split(data, out / f"{split}.pt", {"dataset": "embedded", "category": category, "split": split,
                                           "backbone": model.name, "image_size": size})
"""


def environment(setting: str) -> dict[str, str]:
    from adbench.methods.determinism import ISA_VARIABLES, isa_environment

    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    return {**env, **isa_environment(setting)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "isa_cost.json")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--category", default="brick")
    p.add_argument("--weights-dir", type=Path, default=ROOT / "results" / "weights")
    p.add_argument("--methods", nargs="+", default=None,
                   help="config entries (default: patchcore cflow mkd draem patchsvdd fod; with --quick: fod)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run that only checks the script works: 1 repeat, FOD only, config/ci.yaml's sizes")
    a = p.parse_args()
    from snakemake.utils import update_config

    from adbench.data.embedded import EmbeddedConfig, generate_category

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    generator = EmbeddedConfig()
    if a.quick:
        update_config(config, yaml.safe_load((ROOT / "config" / "ci.yaml").read_text()))
        generator = EmbeddedConfig(**config["datasets"]["embedded"]["generator"])
        a.repeats = 1
    a.methods = a.methods or (["fod"] if a.quick else ["patchcore", "cflow", "mkd", "draem", "patchsvdd", "fod"])
    size = config["backbone"]["image_size"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_category(tmp / "data", a.category, generator)
        for setting in SETTINGS:
            (tmp / setting).mkdir()
            subprocess.run([sys.executable, "-c", EXTRACT, str(tmp / "data"), a.category, str(size),
                            str(a.weights_dir), str(tmp / setting)], check=True, env=environment(setting))
        for method in a.methods:
            entry = config["methods"][method]
            params = dict(entry.get("params", {}))
            if "progress" in params:
                params["progress"] = False
            runs = {s: [] for s in SETTINGS}
            for _ in range(a.repeats):
                for setting in SETTINGS:
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, str(tmp / setting / "train.pt"), str(tmp / setting / "test.pt"),
                         entry["impl"], json.dumps(params)],
                        check=True, capture_output=True, text=True, env=environment(setting))
                    runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
            med = {s: statistics.median(r["seconds"] for r in runs[s]) for s in SETTINGS}
            rows[method] = {
                **{f"{s}_seconds_median": med[s] for s in SETTINGS},
                "ratio_pinned_over_native": med["avx2"] / med["native"],
                **{f"{s}_image_auroc": runs[s][0]["image_auroc"] for s in SETTINGS},
                **{f"{s}_cpu_capability": runs[s][0]["cpu_capability"] for s in SETTINGS},
                "runs": runs,
            }
            print(method, {k: v for k, v in rows[method].items() if k != "runs"}, flush=True)
    result = {"category": a.category, "image_size": size, "repeats": a.repeats, "torch_threads": 1, "quick": a.quick,
              "methods": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    lines = ["| method | pinned AVX2 (s) | native (s) | pinned / native | image AUROC pinned | native |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {r['avx2_seconds_median']:.1f} | {r['native_seconds_median']:.1f} | "
                     f"{r['ratio_pinned_over_native']:.2f} | {r['avx2_image_auroc']:.3f} | {r['native_image_auroc']:.3f} |")
    native_cap = next(iter(rows.values()))["native_cpu_capability"] if rows else "?"
    a.out.with_suffix(".md").write_text(
        f"Fit + predict on embedded `{a.category}` at {size} px, default budgets, one torch thread, median of "
        f"{a.repeats}; native kernels here: {native_cap}.\n\n" + "\n".join(lines) + "\n")
    print(a.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
