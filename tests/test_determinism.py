"""The kernel pin (adbench.methods.determinism) and how the reseeding check's tolerances are measured (adbench.operations.reseeding)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from adbench.methods.determinism import FLUSH_VARIABLE, ISA_VARIABLES, isa_environment
from adbench.operations.reseeding import reference_table

PROVENANCE = "import json; from adbench.methods.determinism import kernel_provenance; print(json.dumps(kernel_provenance()))"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES + (FLUSH_VARIABLE,)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env})


def test_the_pin_sets_every_library_and_native_sets_none():
    assert isa_environment("avx2") == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
                                       "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
                                       "OPENBLAS_CORETYPE": "Haswell"}
    assert isa_environment("native") == {}
    with pytest.raises(ValueError, match=r"determinism.cpu_isa = 'avx512'"):
        isa_environment("avx512")


def test_a_pinned_process_dispatches_avx2_kernels_and_says_so():
    proc = _python(PROVENANCE, **isa_environment("avx2"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["cpu_capability"] == "AVX2"
    assert (record["aten_cpu_capability"], record["onednn_max_cpu_isa"], record["mkl_cbwr"]) == ("avx2", "AVX2", "COMPATIBLE")
    assert record["mkl_branch"] == "COMPATIBLE"  # MKL honours it on Intel and AMD CPUs alike
    assert not {"X86_V4", "AVX512_ICL", "AVX512_SPR"} & set(record["numpy_simd"].split())
    blas = _python("import json, numpy; from threadpoolctl import threadpool_info; "
                   "print(json.dumps([i['architecture'] for i in threadpool_info() if i['user_api'] == 'blas']))",
                   **isa_environment("avx2"))
    assert set(json.loads(blas.stdout)) == {"Haswell"}, blas.stderr


def test_the_test_session_itself_runs_pinned():
    """tests/conftest.py pins this process before numpy and torch load: the tests' numbers are every CPU's."""
    if os.environ.get("ADBENCH_TEST_CPU_ISA") == "native":
        pytest.skip("ADBENCH_TEST_CPU_ISA=native: the tests run on the host's own kernels")
    from adbench.methods.determinism import kernel_provenance

    record = kernel_provenance()
    assert (record["cpu_capability"], record["mkl_branch"], record["openblas_coretype"]) == ("AVX2", "COMPATIBLE", "Haswell")
    assert "X86_V4" not in record["numpy_simd"].split()


def test_a_pin_set_after_torch_ran_is_refused():
    host = _python("import torch; print(torch.backends.cpu.get_cpu_capability())").stdout.strip()
    if host == "AVX2":
        pytest.skip("this host's own kernels are AVX2: a late pin cannot be told from an early one here")
    late = ("import os, torch; torch.ones(4).add(1); os.environ['ATEN_CPU_CAPABILITY'] = 'avx2'; " + PROVENANCE)
    proc = _python(late)
    assert proc.returncode != 0
    assert f"ATEN_CPU_CAPABILITY=avx2 but torch dispatches {host} kernels" in proc.stderr


def test_an_mkl_branch_the_cpu_does_not_run_is_refused():
    """MKL falls back silently to another branch when it cannot run the one asked for (as its AVX2 branch
    on AMD CPUs); AVX512_MIC, the Xeon Phi branch, runs on no CPU the suite meets."""
    proc = _python(PROVENANCE, MKL_CBWR="AVX512_MIC")
    assert proc.returncode != 0
    assert "MKL_CBWR=AVX512_MIC but MKL runs its" in proc.stderr, proc.stderr


def test_a_numpy_pin_set_after_numpy_was_imported_is_refused():
    host = _python("from adbench.methods.determinism import numpy_targets; print(' '.join(numpy_targets()))")
    if "X86_V4" not in host.stdout.split():
        pytest.skip(f"numpy finds no AVX-512 target on this host ({host.stdout.strip()}): nothing to disable")
    late = ("import os, numpy; os.environ['NPY_DISABLE_CPU_FEATURES'] = 'X86_V4 AVX512_ICL AVX512_SPR'; "
            + PROVENANCE)
    proc = _python(late)
    assert proc.returncode != 0
    assert "NPY_DISABLE_CPU_FEATURES excludes AVX512_ICL X86_V4 but numpy dispatches to it" in proc.stderr


# A job on two threads squares 4M copies of 1e-20: each product, 1e-40, is subnormal (below 1.18e-38), and
# the 4M elements are split between both threads.
JOB_SUBNORMALS = """
import json, sys, torch
from adbench.jobs import job_context
from adbench.methods.determinism import kernel_provenance
with job_context(sys.argv[1], 2):
    zeros = torch.full((1 << 22,), 1e-20).square().eq(0).float().mean().item()
    print(json.dumps({"zeros": zeros, "threads": torch.get_num_threads(), **kernel_provenance()}), file=sys.__stdout__)
"""


@pytest.mark.parametrize("switch, zeros, recorded", [(None, 1.0, "on"), ("0", 0.0, "off")])
def test_a_job_flushes_subnormals_to_zero_in_every_thread_unless_turned_off(tmp_path, switch, zeros, recorded):
    """Subnormals count as zero in a job, in both of its threads, and its kernel provenance says so;
    ADBENCH_FLUSH_DENORMAL=0 keeps them (the control: the same squares are then not zero)."""
    env = {FLUSH_VARIABLE: switch} if switch else {}
    proc = subprocess.run([sys.executable, "-c", JOB_SUBNORMALS, str(tmp_path / "job.log")], capture_output=True,
                          text=True, env={**{k: v for k, v in os.environ.items() if k != FLUSH_VARIABLE}, **env})
    assert proc.returncode == 0, proc.stderr + (tmp_path / "job.log").read_text()
    record = json.loads(proc.stdout)
    assert record["threads"] == 2
    assert (record["zeros"], record["flush_denormal"]) == (zeros, recorded)
    assert f"'flush_denormal': '{recorded}'" in (tmp_path / "job.log").read_text()


def _per_seed(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"dataset": "d", "category": "c", "method": m, "seed": s, "image_auroc": v, "pixel_auroc": v}
            for m, vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_tolerances_come_from_the_seed_spread_the_isa_spread_and_a_floor():
    pinned = _per_seed({"steady": [0.9] * 5, "noisy": [0.5, 0.6, 0.7, 0.8, 0.9], "isa": [0.8] * 5})
    native = _per_seed({"steady": [0.9] * 5, "noisy": [0.5, 0.6, 0.7, 0.8, 0.9], "isa": [0.8, 0.75, 0.8, 0.8, 0.8]})
    table = reference_table(pinned, native, ci_seed=0).set_index(["method", "metric"])
    steady, noisy, isa = (table.loc[(m, "image_auroc")] for m in ("steady", "noisy", "isa"))
    assert steady.value == 0.9 and steady.tolerance == pytest.approx(0.01) and steady.seed_sd == 0
    sd = pd.Series([0.5, 0.6, 0.7, 0.8, 0.9]).std()
    assert noisy.value == pytest.approx(0.7) and noisy.seed_sd == pytest.approx(sd, abs=1e-4)
    assert noisy.tolerance == pytest.approx(3 * sd * (1 + 1 / 5) ** 0.5, abs=1e-4)
    assert isa.isa_spread == pytest.approx(0.05) and isa.tolerance == pytest.approx(0.05)
    assert set(table.seed) == {0} and set(table.seeds) == {5}


def test_pinned_only_measurements_have_no_isa_spread():
    pinned = _per_seed({"m": [0.5, 0.6, 0.7, 0.8, 0.9]})
    table = reference_table(pinned, None, ci_seed=0)
    assert (table.isa_spread == 0).all() and len(table) == 3  # image, pixel, aggregate


def test_the_reseeding_check_reads_cells_and_each_methods_aggregate_both_ways(tmp_path):
    from adbench.operations.reseeding import compare

    values = {("a", "image_auroc"): 0.9, ("a", "pixel_auroc"): 0.7, ("b", "image_auroc"): 0.5, ("b", "pixel_auroc"): 0.3}
    for cat in ("a", "b"):
        run = tmp_path / "d" / cat / "m" / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({k: v for (c, k), v in values.items() if c == cat}))
    reference = tmp_path / "ref.csv"
    pd.DataFrame([
        {"dataset": "d", "category": "a", "method": "m", "seed": 0, "metric": "image_auroc", "value": 0.92, "tolerance": 0.05},
        {"dataset": "d", "category": "b", "method": "m", "seed": 0, "metric": "pixel_auroc", "value": 0.5, "tolerance": 0.1},
        {"dataset": "d", "category": "all", "method": "m", "seed": 0, "metric": "mean_auroc", "value": 0.7, "tolerance": 0.05},
        {"dataset": "d", "category": "c", "method": "m", "seed": 0, "metric": "image_auroc", "value": 0.7, "tolerance": 0.05},
    ]).to_csv(reference, index=False)
    table = compare(reference, tmp_path).set_index("category")
    assert table.loc["a", "status"] == "within"
    assert table.loc["b", "status"] == "OUTSIDE" and table.loc["b", "delta"] == pytest.approx(-0.2)
    assert table.loc["c", "status"] == "MISSING"
    # the aggregate averages image and pixel AUROC over the categories the reference lists for the method,
    # and c has no run: missing
    assert table.loc["all", "status"] == "MISSING"
    pd.read_csv(reference).query("category != 'c'").to_csv(reference, index=False)
    table = compare(reference, tmp_path).set_index("category")
    assert table.loc["all", "got"] == pytest.approx((0.9 + 0.7 + 0.5 + 0.3) / 4)
    assert table.loc["all", "status"] == "OUTSIDE"  # 0.6 < 0.7 - 0.05
    pd.read_csv(reference).assign(value=[0.80, 0.15, 0.5]).to_csv(reference, index=False)  # now below the runs
    table = compare(reference, tmp_path).set_index("category")
    assert (table.status == "OUTSIDE").all()  # a rise beyond the spread is outside it too


def test_the_reseeding_measurement_runs_every_method_with_every_seed(tmp_path, monkeypatch):
    """``make reseeding`` measures seed spreads: the CI config's ``run.one_seed`` must not cut any method to one seed."""
    import yaml

    from adbench.operations.estimate import ROOT, load_config
    from adbench.operations.reseeding import run_ci_config
    from adbench.methods.runs import method_seeds
    from snakemake.utils import update_config

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    ci = ROOT / "config" / "ci.yaml"
    run_ci_config(tmp_path, ci, [0, 1, 2, 3, 4], "avx2")
    config = load_config(ci)
    update_config(config, yaml.safe_load((tmp_path / "override.yaml").read_text()))
    assert calls and str(tmp_path / "override.yaml") in calls[0]
    from adbench.methods.registry import method_class

    deterministic = {m for m in config["run"]["methods"] if method_class(config["methods"][m]["impl"]).deterministic}
    assert {m: method_seeds(config, m) for m in config["run"]["methods"]} == {  # one fit says it all for these
        m: [0] if m in deterministic else [0, 1, 2, 3, 4] for m in config["run"]["methods"]}


def test_the_reseeding_measurement_accepts_a_relative_work_folder(tmp_path, monkeypatch):
    """The Makefile passes ``--work build/reseeding``; Snakemake runs inside that folder, so every path handed
    to it must still name the override file from there (a relative one would be looked up twice nested)."""
    from adbench.operations.estimate import ROOT
    from adbench.operations.reseeding import run_ci_config

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw["cwd"])))
    monkeypatch.chdir(tmp_path)
    run_ci_config(Path("build/reseeding/avx2"), ROOT / "config" / "ci.yaml", [0], "avx2")
    (cmd, cwd), = calls
    override = Path(cwd, cmd[cmd.index("--configfile") + 2])
    assert override.is_file() and override == tmp_path / "build/reseeding/avx2/override.yaml"


def test_remeasuring_one_method_replaces_only_its_rows_in_place(tmp_path, monkeypatch):
    """``measure --methods patchsvdd``: only that method's run folders are targeted, its rows are replaced
    where they stood, every other method's rows stay byte for byte; a seed count that differs is refused."""
    from adbench.operations.estimate import ROOT
    from adbench.operations.reseeding import merge_methods, run_ci_config

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    run_ci_config(tmp_path, ROOT / "config" / "ci.yaml", [0, 1], "avx2", methods=["patchsvdd"])
    targets = [w for w in calls[0] if w.endswith("metrics.json")]
    assert "all_tables" not in calls[0] and len(targets) == 2 * 2  # two categories x two seeds
    assert all("/patchsvdd/" in t for t in targets)

    old = pd.read_csv(ROOT / "results" / "reference" / "reseeding_ci.csv", dtype={"category": str})
    new = old[old.method == "patchsvdd"].iloc[1:].assign(value=0.25)  # one row fewer, other values
    merged = merge_methods(old, new)
    keep = old.method != "patchsvdd"
    assert merged[merged.method != "patchsvdd"].reset_index(drop=True).equals(old[keep].reset_index(drop=True))
    assert list(merged.index[merged.method == "patchsvdd"]) == list(old.index[~keep][1:] - 1)
    assert (merged.loc[merged.method == "patchsvdd", "value"] == 0.25).all()
    with pytest.raises(ValueError, match="same --seeds"):
        merge_methods(old, new.assign(seeds=3))
