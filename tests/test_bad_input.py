"""Bad input stops early with one message naming the config key (or file) and the fix.

Method entries are resolved when the workflow reads its config (``adbench.methods.registry.check_method_entry``
from ``_check_config`` in workflow/rules/common.smk), before any data preparation or feature extraction;
the hints of dataset errors name only config keys and rules that exist.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from adbench.data.datasets import DatasetError, list_samples
from adbench.spec import ParamError
from adbench.methods.registry import IMPLEMENTATIONS, MethodConfigError, check_method_entry, method_class

ROOT = Path(__file__).resolve().parent.parent


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The workflow in ``workdir`` on config/config.yaml plus ``args`` (targets before ``--configfile``)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "1",
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    proc.output = proc.stdout + proc.stderr  # Snakemake prints errors to either
    return proc


# ------------------------------------------------------------------------------ the workflow, dry runs

BAD_CONFIGS = {
    "unknown_impl": ("methods: {fod: {impl: fodd}}",
                     ["methods.fod.impl = 'fodd' is not a registered method", "patchcore"]),
    "misspelt_param": ("methods: {cflow: {params: {meta_epoch: 1}}}",
                       ["methods.cflow.params has unknown keys ['meta_epoch']", "'meta_epochs'"]),
    "zero_epochs": ("methods: {fod: {params: {epochs: 0}}}",
                    ["methods.fod.params.epochs = 0: must be >= 1 (0 epochs would train nothing)"]),
    "negative_epochs": ("methods: {mkd: {params: {epochs: -1}}}",
                        ["methods.mkd.params.epochs = -1: must be >= 1"]),
    "unknown_one_seed": ("run: {one_seed: [patchcore, fodd]}",
                         ["run.one_seed names 'fodd', which is not defined under methods"]),
    "zero_image_size": ("backbone: {image_size: 0}",
                        ["0 is less than the minimum of 32", "['backbone']['image_size']"]),
    "per_category_unknown": ("methods: {patchsvdd: {per_category: {brickk: {lambda: 1.0}}}}",
                             ["methods.patchsvdd.per_category names 'brickk', which is not a category of "
                              "run.datasets", "brick, coins"]),
    "per_category_bad_value": ("methods: {patchsvdd: {per_category: {brick: {epochs: 0}}}}",
                               ["methods.patchsvdd.params.epochs = 0: must be >= 1",
                                "(methods.patchsvdd.per_category.brick laid over methods.patchsvdd.params)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_stops_before_anything_is_prepared(tmp_path, case):
    override, expected = BAD_CONFIGS[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(override + "\n")
    proc = snakemake(tmp_path, "-n", "all_tables", "--configfile", str(bad))
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.output, proc.output[-2000:]
    assert not (tmp_path / "results").exists()  # stopped while reading the config: not even the weights


def test_dataset_hints_name_only_rules_the_workflow_defines(tmp_path):
    """The fixes in dataset errors name `download_<name>` (the dataset's key, not its kind) and
    `generate_embedded`; both are rules of the workflow for such a config."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"datasets: {{mvtec: {{kind: mvtec_ad, root: {tmp_path / 'mvtec'}, categories: [bottle]}}}}\n")
    proc = snakemake(tmp_path, "--list-rules", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.output[-2000:]
    rules = {line.split()[0] for line in proc.stdout.splitlines() if line and not line[0].isspace()}
    assert {"download_mvtec", "generate_embedded", "prepare_category", "download_dataset"} <= rules

    messages = []
    for kind, name, url in [("mvtec_ad", "mvtec", None), ("mvtec_ad", "mvtec", "https://example.org/m.tar"),
                            ("embedded", "embedded", None)]:
        with pytest.raises(DatasetError) as err:
            list_samples(kind, tmp_path / "nowhere", "bottle", "train", name=name, url=url)
        messages.append(str(err.value))
    named = {m for text in messages for m in re.findall(r"`snakemake (\w+)`|rule (\w+)", text) for m in m if m}
    assert named == {"download_mvtec", "generate_embedded"} and named <= rules
    assert all("mvtec_ad" not in text for text in messages[:2]) and "datasets.mvtec.root" in messages[0]


# ------------------------------------------------------------------------ check_method_entry, directly

#: Every (method, param that counts passes over the data) the registry declares (``epoch_params``).
EPOCH_KEYS = [(impl, key) for impl in sorted(IMPLEMENTATIONS) for key in method_class(impl).epoch_params]


@pytest.mark.parametrize("impl,key", EPOCH_KEYS)
@pytest.mark.parametrize("value", [0, -1])
def test_every_epoch_count_must_be_at_least_one(impl, key, value):
    with pytest.raises(MethodConfigError) as err:
        check_method_entry("mine", {"impl": impl, "params": {key: value}})
    message = str(err.value)
    assert message.startswith(f"methods.mine.params.{key} = {value}: must be >= 1 (")
    assert "would train nothing" in message


@pytest.mark.parametrize("impl,key", EPOCH_KEYS)
def test_constructors_reject_epoch_counts_below_one(impl, key):
    cls = method_class(impl)
    with pytest.raises(ParamError) as err:
        cls({key: 0})
    assert str(err.value).startswith(f"{cls.label} param {key} = 0: must be >= 1")
    assert err.value.key == key and err.value.value == 0


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_a_method_that_takes_optimiser_steps_declares_what_counts_them(impl):
    """epoch_params are real params of the method, and a method whose learning check says it trains
    declares at least one (else epochs: 0 would silently train nothing)."""
    cls = method_class(impl)
    assert set(cls.epoch_params) <= set(cls.check_params({}))
    trains = any(budget["trains"] for budget in cls.learning_budget.values())
    assert bool(cls.epoch_params) == trains, f"{impl}: trains={trains}, epoch_params={cls.epoch_params}"


def test_a_fractional_epoch_count_is_refused():
    with pytest.raises(MethodConfigError, match=r"methods.d.params.epochs = 2.5: must be a whole number >= 1"):
        check_method_entry("d", {"impl": "draem", "params": {"epochs": 2.5}})


def test_unknown_impl_names_the_key_the_value_and_the_known_ones():
    with pytest.raises(MethodConfigError) as err:
        check_method_entry("fod", {"impl": "fodd"})
    assert str(err.value).startswith("methods.fod.impl = 'fodd' is not a registered method; set it to one of: ")
    assert all(impl in str(err.value) for impl in IMPLEMENTATIONS)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_unknown_param_keys_are_named_with_the_known_ones(impl):
    with pytest.raises(MethodConfigError) as err:
        check_method_entry("m", {"impl": impl, "params": {"lr_rate": 1.0}})
    message = str(err.value)
    assert message.startswith("methods.m.params has unknown keys ['lr_rate']") and "known: [" in message


def test_other_bad_values_name_the_entry():
    with pytest.raises(MethodConfigError, match=r"^methods.f.params.variant = 'pape': must be one of"):
        check_method_entry("f", {"impl": "fod", "params": {"variant": "pape"}})
    with pytest.raises(MethodConfigError, match=r"^methods.f.params.d_model = 5: must be a list"):
        check_method_entry("f", {"impl": "fod", "params": {"d_model": 5}})
    with pytest.raises(MethodConfigError, match=r"^methods.m.params.localization = 'x': must be one of discrepancy,"):
        check_method_entry("m", {"impl": "mkd", "params": {"localization": "x"}})
    with pytest.raises(MethodConfigError, match=r"^methods.c.params.condition_vec = 6: must be a multiple of 4"):
        check_method_entry("c", {"impl": "cflow", "params": {"condition_vec": 6}})
    with pytest.raises(MethodConfigError, match=r"^methods.c.params \(impl 'cflow'\): CFLOW's rotation augmentation"):
        check_method_entry("c", {"impl": "cflow", "params": {"augment_rotation_deg": 5.0}})
    with pytest.raises(MethodConfigError, match=r"^methods.m.params = \[1\]: must be a mapping"):
        check_method_entry("m", {"impl": "mkd", "params": [1]})


def test_good_entries_resolve_to_the_full_params():
    assert check_method_entry("cflow", {"impl": "cflow"})["meta_epochs"] >= 1
    mkd = check_method_entry("mkd", {"impl": "mkd", "params": {"epochs": 3}})
    assert mkd["epochs"] == 3 and "lamda" in mkd
    fod = check_method_entry("abl", {"impl": "fod", "params": {"epochs": 1, "ablation": "patchwise_rec"}})
    assert fod["epochs"] == 1 and fod["intra"] is False and fod["score"] == "rec"
    assert check_method_entry("p", {"impl": "patchcore", "params": None})["coreset_ratio"] > 0

