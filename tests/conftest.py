"""Shared fixtures: converted backbone weights, a small generated embedded dataset, cached splits.

The tests compute with the workflow's pinned kernels (``adbench.methods.determinism``), set here before
numpy and torch load (each reads its variables once), so that a number a test checks is the number every
x86-64 machine computes: ``make test`` gives the same results on an AVX2 and an AVX-512 machine, Intel or
AMD.  ``ADBENCH_TEST_CPU_ISA=native`` runs them with the host's own kernels instead.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from adbench.methods.determinism import flush_denormals, isa_environment  # imports neither numpy nor torch

PIN = isa_environment(os.environ.get("ADBENCH_TEST_CPU_ISA", "avx2"))
if PIN and {"numpy", "torch"} & set(sys.modules):
    raise RuntimeError("numpy or torch was imported before tests/conftest.py could pin the CPU kernels "
                       "(a pytest plugin?): run pytest without it, or with ADBENCH_TEST_CPU_ISA=native")
os.environ.update(PIN)

import pytest  # noqa: E402

from adbench.data.embedded import EmbeddedConfig, generate_category  # noqa: E402

# Subnormal floats count as zero in the tests' fits, as in the workflow's jobs (adbench.jobs.job_settings),
# set before torch starts its thread pool.  Freed memory is not kept here as in the jobs
# (adbench.methods.malloc): a test process runs hundreds of fits and would hold the largest heap of them all.
flush_denormals()

SMALL = EmbeddedConfig(seed=0, size=128, n_train=16, n_test_good=8, n_test_anomalous=12)
SPLIT_SIZE = 64  # evaluation resolution of the cached test splits (px)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def backbone(weights_dir):
    from adbench.features.backbone import Backbone

    return Backbone("tf_efficientnet_lite0", weights_dir)


@pytest.fixture(scope="session")
def embedded_root(tmp_path_factory) -> Path:
    """brick (texture) and coins (object), small splits, generated once per session."""
    root = tmp_path_factory.mktemp("embedded")
    for category in ("brick", "coins"):
        generate_category(root, category, SMALL)
    return root


@pytest.fixture(scope="session")
def embedded_splits(embedded_root, backbone):
    """``fn(category) -> (train Split, test Split)`` at 64 px with tf_efficientnet_lite0 features."""
    from adbench.features.cache import extract_split

    cache = {}

    def get(category: str):
        if category not in cache:
            cache[category] = tuple(
                extract_split("embedded", embedded_root, category, split, backbone, SPLIT_SIZE, progress=False)
                for split in ("train", "test")
            )
        return cache[category]

    return get


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory) -> Path:
    """The workflow on config/ci.yaml (``all_tables``) in a scratch folder, once per ``make test``: the
    pytest workers (xdist) share it, the first to need it makes it while the others wait.  The workflow,
    SLURM and golden-file tests compare against it and only read it; a test that runs jobs in it again
    copies it first.  What Snakemake printed is kept in ``<work>/snakemake.out`` (``snakemake.failed`` when
    the run failed: every worker then fails with it instead of running it again)."""
    from workflow_runs import snakemake

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one folder per session
    work, failed = shared / "ci_run", shared / "ci_run" / "snakemake.failed"
    with open(shared / "ci_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (work / "snakemake.out").exists() and not failed.exists():
            work.mkdir(exist_ok=True)
            proc = snakemake(work, "all_tables")
            (work / ("snakemake.out" if proc.returncode == 0 else failed.name)).write_text(proc.output)
    if failed.exists():
        pytest.fail(f"the CI workflow run in {work} failed:\n{failed.read_text()[-4000:]}")
    return work
