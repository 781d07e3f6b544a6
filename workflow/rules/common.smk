# Config validation and the input functions every stage uses.
import json
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results"]
BACKBONE = config["backbone"]["name"]
SIZE = config["backbone"]["image_size"]
FEATURE_TAG = f"{BACKBONE}_{SIZE}"


def _check_config():
    """Cross-field checks a JSON schema cannot express; fail at parse time with the fix."""
    for ds in config["run"]["datasets"]:
        if ds not in config["datasets"]:
            raise ValueError(f"run.datasets names '{ds}', which is not defined under datasets: in the config")
    for m in config["run"]["methods"]:
        if m not in config["methods"]:
            raise ValueError(f"run.methods names '{m}', which is not defined under methods: in the config")
    t2 = config["tables"].get("table2")
    if t2 and t2["dataset"] not in config["run"]["datasets"]:
        raise ValueError(f"tables.table2.dataset '{t2['dataset']}' is not in run.datasets")
    # A backbone without local weights stops the run now, not after an hour of data preparation.
    from adbench.backbone import weights_file

    weights_file(BACKBONE, Path(config["backbone"]["weights_dir"]))


_check_config()


def dataset_kind(dataset):
    return config["datasets"][dataset]["kind"]


def data_ready(wildcards):
    """The marker that says a category's images are on disk (generated, downloaded or found)."""
    if dataset_kind(wildcards.dataset) == "embedded":
        return f"{RESULTS}/data/{wildcards.dataset}/{wildcards.category}.ready"
    return f"{RESULTS}/data/{wildcards.dataset}/dataset.ready"


def feature_path(dataset, category, split):
    return f"{RESULTS}/features/{dataset}/{category}/{FEATURE_TAG}/{split}.pt"


def run_dir(dataset, category, method, seed):
    return f"{RESULTS}/{dataset}/{category}/{method}/seed{seed}"


def fit_inputs(wildcards):
    """Training features, plus the test features when the method monitors the test set."""
    inputs = {"train": feature_path(wildcards.dataset, wildcards.category, "train")}
    if config["methods"][wildcards.method].get("params", {}).get("monitor_every"):
        inputs["test"] = feature_path(wildcards.dataset, wildcards.category, "test")
    return inputs


def category_metrics(wildcards):
    return [
        f"{run_dir(wildcards.dataset, wildcards.category, m, s)}/metrics.json"
        for m in config["run"]["methods"]
        for s in config["run"]["seeds"]
    ]


def table2_metrics():
    t2 = config["tables"]["table2"]
    ds = t2["dataset"]
    return [
        f"{run_dir(ds, c, m, s)}/metrics.json"
        for c in config["datasets"][ds]["categories"]
        for m in t2["methods"]
        for s in config["run"]["seeds"]
    ]


def all_tables_inputs():
    outputs = [f"{RESULTS}/tables/table2.csv", f"{RESULTS}/tables/table2.md"]
    outputs += [
        f"{RESULTS}/{ds}/{c}/summary.csv"
        for ds in config["run"]["datasets"]
        for c in config["datasets"][ds]["categories"]
    ]
    return outputs


wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    category="[A-Za-z0-9_]+",
    method="[a-z][a-z0-9_]*",
    seed=r"\d+",
    split="train|test",
