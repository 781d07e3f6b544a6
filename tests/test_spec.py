"""Each method's spec (``adbench.spec``) and its class agree, and planning the workflow imports no torch.

The Snakefile checks and plans a config from the specs alone (``adbench.methods.registry.method_spec``), so
that a dry run, and the start of every cluster job (which reads the Snakefile again), spends about 1.5 s
instead of 4: a torch import that creeps into that path (a spec module, or a helper the Snakefile calls)
fails here.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from workflow_runs import snakemake_command

from adbench.features.weights import weights_file
from adbench.methods.registry import IMPLEMENTATIONS, SPECS, MethodConfigError, check_method_entry, method_class, method_spec

IMPLS = sorted(IMPLEMENTATIONS)

# A sitecustomize that makes any import of torch fail, for the processes of one test.
NO_TORCH = '''import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ImportError(f"{name} imported while the workflow plans its jobs")


sys.meta_path.insert(0, NoTorch())
'''


def test_every_registered_method_has_a_spec():
    assert sorted(SPECS) == IMPLS


@pytest.mark.parametrize("impl", IMPLS)
def test_a_method_class_is_its_spec_with_networks(impl):
    """The config check (the spec's) and the running method accept and reject the same params: the class
    inherits the spec's checks and declarations instead of keeping copies of its own."""
    cls, spec = method_class(impl), method_spec(impl)
    assert issubclass(cls, spec) and spec.name == impl
    for name in ("check_params", "validate", "inputs", "ablation", "passes", "monitor_interval"):
        assert getattr(cls, name).__func__ is getattr(spec, name).__func__, f"{cls.__name__}.{name} is not its spec's"
    for name in ("epoch_params", "deterministic", "records_curves", "monitors_test"):
        assert name not in vars(cls), f"{cls.__name__} declares {name}; its spec {spec.__name__} must"


CHOICES = [(impl, key) for impl in IMPLS for key in method_spec(impl).choices]


def test_some_methods_declare_choices():
    assert len(CHOICES) >= 8, CHOICES


@pytest.mark.parametrize("impl,key", CHOICES)
def test_a_value_outside_a_params_choices_is_refused_by_the_config_check_and_the_method(impl, key):
    spec = method_spec(impl)
    allowed = spec.choices[key]
    assert spec.check_params({})[key] in allowed  # the default is one of them
    message = f"methods.m.params.{key} = 'nope': must be one of {', '.join(allowed)}"
    with pytest.raises(MethodConfigError) as err:
        check_method_entry("m", {"impl": impl, "params": {key: "nope"}})
    assert str(err.value) == message
    with pytest.raises(ValueError, match=f"{key} = 'nope': must be one of"):
        method_class(impl)({key: "nope"})


def test_planning_the_ci_workflow_imports_no_torch(tmp_path):
    weights_file("tf_efficientnet_lite0", tmp_path / "results" / "weights")  # converted once, with torch, here
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "imported while the workflow plans" in probe.stderr  # the blocker works
    plan = subprocess.run(snakemake_command(tmp_path, "-n", "all_tables"), cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-4000:]
    assert "fit_evaluate" in plan.stdout and "all_tables" in plan.stdout
