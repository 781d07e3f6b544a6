# Config validation and the input functions every stage uses.
import json
import time
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import validate

from adbench.methods.determinism import pin_cpu_isa
from adbench.reporting.evidence import draws_cd_diagram, draws_paper_scatter
from adbench.operations.golden import folder_digest, overlays, reference_named
from adbench.methods.registry import cell_params, check_method_entry, method_spec
from adbench.methods.runs import config_hash, resolve_tables, run_config, run_folder
from adbench.evaluation.tracking import store_problem
from adbench.methods.runs import method_seeds as seeds_of
from adbench.reporting.tables import EMPHASIS, ablation_label


validate(config, schema="../schemas/config.schema.yaml")
resolve_tables(config)  # the table lists a config leaves out (adbench.methods.runs.resolve_tables)
# Before any job starts: every job is a child process and inherits the pinned kernel ISA.
pin_cpu_isa(config["determinism"]["cpu_isa"])

RESULTS = config["results"]
# A store that is not an SQLite database must not stop the tables: tracking is turned off, with the fix.
if config["mlflow"].get("enabled", True) and (problem := store_problem(config["mlflow"]["tracking_uri"])):
    logger.warning(problem)
    config["mlflow"]["enabled"] = False
BACKBONE = config["backbone"]["name"]
SIZE = config["backbone"]["image_size"]
FEATURE_TAG = f"{BACKBONE}_{SIZE}"
DATA_ROOT = config.get("data_root")


def _check_config():
    """Cross-field checks a JSON schema cannot express; fail at parse time with the fix.  Returns each
    run method's resolved params, and those of the (method, category) cells with a ``per_category`` entry."""
    for ds in config["run"]["datasets"]:
        if ds not in config["datasets"]:
            raise ValueError(f"run.datasets names '{ds}', which is not defined under datasets: in the config")
    for m in config["run"]["methods"]:
        if m not in config["methods"]:
            raise ValueError(f"run.methods names '{m}', which is not defined under methods: in the config")
    for m in config["run"].get("one_seed", []):
        if m not in config["methods"]:
            raise ValueError(f"run.one_seed names '{m}', which is not defined under methods: in the config")
    # Each method's impl, param keys and values (e.g. epochs >= 1), before anything is prepared.
    resolved = {m: check_method_entry(m, config["methods"][m]) for m in config["run"]["methods"]}
    run_categories = {c for ds in config["run"]["datasets"] for c in config["datasets"][ds]["categories"]}
    per_category = {}
    for m in config["run"]["methods"]:
        for category in config["methods"][m].get("per_category", {}):
            if category not in run_categories:
                raise ValueError(f"methods.{m}.per_category names '{category}', which is not a category of "
                                 f"run.datasets ({', '.join(sorted(run_categories))}); fix its spelling or remove it")
            per_category[m, category] = cell_params(m, config["methods"][m], category)
    tables = config["tables"]
    wanted = {"tables.table2": ([tables["table2"]["dataset"]], tables["table2"]["methods"])}
    for name in ("table3", "table4"):
        if name in tables:
            wanted[f"tables.{name}"] = (tables[name]["datasets"], tables[name]["methods"])
    reference = tables.get("significance", {}).get("reference", "fod")
    if reference not in tables["table2"]["methods"] or len(tables["table2"]["methods"]) < 2:
        logger.warning(f"no significance tests: they compare tables.significance.reference ('{reference}') with "
                       f"the other methods of tables.table2 {tables['table2']['methods']}; add them there")
    for key, (datasets, methods) in wanted.items():
        for ds in datasets:
            if ds not in config["run"]["datasets"]:
                raise ValueError(f"{key} uses dataset '{ds}', which is not in run.datasets")
        for m in methods:
            if m not in config["run"]["methods"]:
                raise ValueError(f"{key} uses method '{m}', which is not in run.methods")
    # Missing data or backbone weights stop a run now, not after an hour of data preparation; a dry run
    # only warns, so that it can list the whole DAG of a profile whose data is not here (config/paper.yaml).
    from adbench.features.weights import BackboneWeightsError, weights_file

    problems = _missing_data()
    try:
        weights_file(BACKBONE, Path(config["backbone"]["weights_dir"]))
    except BackboneWeightsError as err:
        problems.append(str(err))
    if problems and not workflow.output_settings.dryrun:
        raise ValueError("\n".join(problems))
    for problem in problems:
        logger.warning(f"dry run only, a real run stops here: {problem}")
    return resolved, per_category


def _missing_data():
    """One message per real dataset whose listed categories are not on disk and cannot be downloaded."""
    problems = []
    for ds in config["run"]["datasets"]:
        if dataset_kind(ds) == "embedded":
            continue
        root = Path(dataset_root(ds))
        missing = [c for c in config["datasets"][ds]["categories"] if not (root / c / "train").is_dir()]
        if missing and not may_download(ds):
            where = "data_root" if DATA_ROOT else f"datasets.{ds}.root"
            fix = (f"put them there, point {where} at a folder holding them, or remove them from "
                   f"datasets.{ds}.categories")
            if not DATA_ROOT:
                fix += f" (or set datasets.{ds}.url to download the dataset)"
            problems.append(f"datasets.{ds}: categories {missing} not found under {root} (looked for "
                            f"{root}/<category>/train; {where} = {root if not DATA_ROOT else DATA_ROOT}): {fix}")
    return problems




def method_params(method, category):
    """A method's resolved params on one category (its ``per_category`` entry laid over ``params``)."""
    return CATEGORY_PARAMS.get((method, category), METHOD_PARAMS[method])


def cell_config(dataset, category, method, seed):
    """What determines one run's numbers (``adbench.methods.runs.run_config``); its hash is in metrics.json."""
    return run_config(config, dataset, method, seed, method_params(method, category))


def dataset_kind(dataset):
    return config["datasets"][dataset]["kind"]


def dataset_root(dataset):
    """A dataset's folder: ``<data_root>/<dataset>`` for real datasets when ``data_root`` is set, else its
    ``root``."""
    if DATA_ROOT and dataset_kind(dataset) != "embedded":
        return f"{DATA_ROOT}/{dataset}"
    return config["datasets"][dataset]["root"]


def may_download(dataset):
    """Only datasets with a ``url`` are downloaded, and never when ``data_root`` says they are on disk."""
    return bool(config["datasets"][dataset].get("url")) and not DATA_ROOT


def dataset_source(dataset):
    """Where a dataset's images are and how they are laid out: what the data and feature rules read (its
    category list is left out, so adding a category reruns nothing for the others)."""
    entry = config["datasets"][dataset]
    url = entry.get("url") if may_download(dataset) else None
    return {"name": dataset, "kind": entry["kind"], "root": dataset_root(dataset), "url": url}


def data_ready(wildcards):
    """The marker that says a category's images are on disk: generated (embedded) or found and decoded."""
    suffix = "generated" if dataset_kind(wildcards.dataset) == "embedded" else "verified"
    return f"{RESULTS}/data/{wildcards.dataset}/{wildcards.category}.{suffix}"


def download_marker(wildcards):
    """The dataset's download, for a category not on disk yet when the dataset has a ``url``."""
    if may_download(wildcards.dataset) and not (Path(dataset_root(wildcards.dataset)) / wildcards.category
                                                / "train").is_dir():
        return [f"{RESULTS}/downloads/{wildcards.dataset}.done"]
    return []


def feature_path(dataset, category, split):
    return f"{RESULTS}/features/{dataset}/{category}/{FEATURE_TAG}/{split}.pt"


def run_dir(dataset, category, method, seed):
    return run_folder(RESULTS, dataset, category, method, seed)


DTD_ROOT = f"{RESULTS}/data/dtd"  # where rule download_dtd unpacks DTD


def fit_inputs(wildcards):
    """The category's cached training and test features, and DTD (rule download_dtd) for a method whose
    params read it from the workflow's folder (``anomaly_source: dtd`` with ``dtd_root`` = DTD_ROOT)."""
    inputs = {split: feature_path(wildcards.dataset, wildcards.category, split) for split in ("train", "test")}
    params = method_params(wildcards.method, wildcards.category)
    if params.get("anomaly_source") == "dtd" and params.get("dtd_root") == DTD_ROOT:
        inputs["dtd"] = f"{DTD_ROOT}.ready"
    return inputs


def method_seeds(method):
    """A method's seeds (``adbench.methods.runs.method_seeds``: ``run.seeds``, the first only if in ``run.one_seed``)."""
    return seeds_of(config, method)


def metrics_files(datasets, methods, categories=None):
    """The metrics.json of every run of ``methods`` (each with its seeds) on ``datasets``."""
    return [
        f"{run_dir(ds, c, m, s)}/metrics.json"
        for ds in datasets
        for c in (categories or config["datasets"][ds]["categories"])
        for m in methods
        for s in method_seeds(m)
    ]


def category_metrics(wildcards):
    return metrics_files([wildcards.dataset], config["run"]["methods"], [wildcards.category])


def category_tracking(wildcards):
    """The category's MLflow record, when MLflow logging is on."""
    if not config["mlflow"].get("enabled", True):
        return []
    return [f"{RESULTS}/{wildcards.dataset}/{wildcards.category}/mlflow.json"]


def expected_hashes(datasets, methods):
    """``{metrics.json path: config hash}`` of every run of ``methods`` on ``datasets`` under the current
    config; the table rules refuse a metrics.json whose hash differs (a number made with other settings)."""
    return {
        f"{run_dir(ds, c, m, s)}/metrics.json": config_hash(cell_config(ds, c, m, s))
        for ds in datasets
        for c in config["datasets"][ds]["categories"]
        for m in methods
        for s in method_seeds(m)
    }


TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"
TABLE2 = config["tables"]["table2"]
TABLE3 = config["tables"]["table3"]
TABLE4 = config["tables"].get("table4")
SIGNIFICANCE = {"reference": "fod", "n_boot": 2000, **config["tables"].get("significance", {})}
TABLE_FORMATS = ("csv", "md", "tex")


def significance_files():
    """The significance tests' outputs, when table2 holds the reference method and another one to test."""
    if SIGNIFICANCE["reference"] in TABLE2["methods"] and len(TABLE2["methods"]) >= 2:
        return [f"{TABLES}/significance.csv", f"{TABLES}/significance.md"]
    return []


def table_files(name):
    return {fmt: f"{TABLES}/{name}.{fmt}" for fmt in TABLE_FORMATS}


def table_names():
    """The tables the config asks for: Table 1, 2, the pixel and per-defect tables on table2's dataset, 3, 4."""
    return (["table1", "table2", "table2_pixel", "table3"] + (["table4"] if TABLE4 else [])
            + ["defects_image", "defects_pixel"])


def curve_methods():
    """Table 2's methods whose training curves get a figure (their class ``records_curves``)."""
    return [m for m in TABLE2["methods"] if method_spec(config["methods"][m]["impl"]).records_curves]


def figure_stems():
    """Every figure the ``figures`` rule draws (each as .png and .pdf), by name."""
    ds = TABLE2["dataset"]
    stems = ["heatmap_image_auroc", "heatmap_pixel_auroc"]
    if draws_cd_diagram(len(TABLE2["methods"]), len(config["datasets"][ds]["categories"])):
        stems.append("cd_diagram")
    stems += [f"roc_{ds}_{c}" for c in config["datasets"][ds]["categories"]]
    stems += [f"gallery_{ds}_{c}" for c in config["datasets"][ds]["categories"]]
    stems += [f"training_{m}" for m in curve_methods()]
    impls = [config["methods"][m]["impl"] for m in TABLE2["methods"]]
    if draws_paper_scatter(config["datasets"][ds]["kind"], config["datasets"][ds]["categories"], impls):
        stems.append("paper_scatter")
    return stems


def table_specs():
    """What each table rule writes from (``adbench.reporting.tables.write_table``'s ``spec``) and which runs it reads."""
    ds = TABLE2["dataset"]
    specs = {
        "table1": {"kind": "table1", "dataset": ds, "methods": TABLE2["methods"]},
        "table2": {"kind": "per_category", "dataset": ds, "methods": TABLE2["methods"], "metric": "image_auroc"},
        "table2_pixel": {"kind": "per_category", "dataset": ds, "methods": TABLE2["methods"],
                         "metric": "pixel_auroc"},
        "table3": {"kind": "table3", "datasets": TABLE3["datasets"], "methods": TABLE3["methods"]},
        "defects_image": {"kind": "per_defect", "dataset": ds, "methods": TABLE2["methods"], "metric": "image_auroc"},
        "defects_pixel": {"kind": "per_defect", "dataset": ds, "methods": TABLE2["methods"], "metric": "pixel_auroc"},
    }
    if TABLE4:
        specs["table4"] = {"kind": "table4", "datasets": TABLE4["datasets"],
                           "labels": {m: ablation_label(config["methods"][m]) for m in TABLE4["methods"]}}
    return specs


# The resolved params (defaults merged in) of every method the run trains, and of its cells with a
# per_category entry: what a run's config hash covers.
METHOD_PARAMS, CATEGORY_PARAMS = _check_config()
TABLE_SPECS = table_specs()


def table_runs(name):
    """``(datasets, methods)`` whose runs table ``name`` reads."""
    spec = TABLE_SPECS[name]
    datasets = spec.get("datasets", [spec.get("dataset")])
    return datasets, spec.get("methods", list(spec.get("labels", {})))


def table2_run_files(filename):
    """``filename`` (scores.csv, maps.npz, run.json, metrics.json) of every run of table2's methods."""
    return [p.replace("metrics.json", filename) for p in metrics_files([TABLE2["dataset"]], TABLE2["methods"])]


def table2_test_features():
    ds = TABLE2["dataset"]
    return [feature_path(ds, c, "test") for c in config["datasets"][ds]["categories"]]


def method_seed_map(methods):
    return {m: list(method_seeds(m)) for m in methods}


REPRODUCTION = f"{RESULTS}/reproduction.md"
WORKFLOW_START = time.time()


# The config files laid over config/config.yaml, relative to the repository where they are inside it: rule
# params that do not change when the repository is moved or copied.
OVERLAYS = overlays(workflow.configfiles, workflow.basedir)


def print_reproduction():
    """At the end of a successful run: the data warnings of the run's categories (too few training images,
    images smaller than image_size; rule prepare_category), then the reproduction summary when this run
    wrote it."""
    for ds in config["run"]["datasets"]:
        for category in config["datasets"][ds]["categories"]:
            marker = Path(f"{RESULTS}/data/{ds}/{category}.verified")
            for message in json.loads(marker.read_text()).get("warnings", []) if marker.exists() else []:
                logger.warning(f"data warning: {message}")
    path = Path(REPRODUCTION)
    if path.exists() and path.stat().st_mtime >= WORKFLOW_START:
        print(f"\n{path.read_text()}", flush=True)


def all_tables_inputs():
    outputs = [REPRODUCTION] + [f for name in table_names() for f in table_files(name).values()]
    outputs += significance_files()
    outputs += [f"{FIGURES}/{stem}.{ext}" for stem in figure_stems() for ext in ("png", "pdf")]
    outputs += [f"{RESULTS}/report.html"]
    outputs += [
        f"{RESULTS}/{ds}/{c}/summary.csv"
        for ds in config["run"]["datasets"]
        for c in config["datasets"][ds]["categories"]
    ]
    if config["mlflow"].get("enabled", True):
        outputs.append(f"{RESULTS}/mlflow_parent.json")
    return outputs




wildcard_constraints:
    dataset="[a-z][a-z0-9_]*",
    category="[A-Za-z0-9_]+",
    method="[a-z][a-z0-9_]*",
    seed=r"\d+",
    split="train|test",
