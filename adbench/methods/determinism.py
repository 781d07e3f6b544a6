"""Same numbers on every x86 machine: pin the CPU kernels' instruction set, fix the thread count.

torch and numpy pick CPU kernels by the CPU they find (ATen's vectorised loops, oneDNN's convolutions,
MKL's and OpenBLAS's matrix products, numpy's float64 ``exp``/``log``/``power``): AVX2 on one machine,
AVX-512 on another, and MKL even by vendor (Intel or AMD).  The results differ in the last bits, and a few
epochs of training amplify that into AUROC differences of 0.03 or more.  Each library reads one
environment variable, once, when it loads or before its first kernel runs:

* ``ATEN_CPU_CAPABILITY`` (ATen, ``avx2``), checked with ``torch.backends.cpu.get_cpu_capability()``;
* ``ONEDNN_MAX_CPU_ISA`` (oneDNN convolutions, ``AVX2``);
* ``MKL_CBWR`` (MKL's conditional numerical reproducibility branch, torch's float32 matrix products):
  ``COMPATIBLE``, MKL's SSE2 code path, the one branch MKL honours on every vendor's CPU.  Its ``AVX2``
  branch (this setting until December 2026) gives the same results on every Intel CPU with AVX2, but MKL
  2024.0 (inside torch 2.14.1) ignores it on AMD CPUs: ``MKL_VERBOSE=1`` prints ``CNR:AUTO`` there, and
  an AMD EPYC host (AVX-512) failed the CI config's golden files that Intel hosts reproduced.  Measured on
  that host, natively and on QEMU's emulated Haswell (Intel) and EPYC-Rome (AMD) CPUs, 27 products of
  various shapes, strides and offsets: with ``AVX2`` the AMD results agreed with each other and 19 of 27
  differed from Intel's; with ``COMPATIBLE`` all 27 agreed on all three CPUs.  The cost: MKL's float32
  products take about 2.1 times as long (one thread, 1024x512 by 512x256: 3.7 ms -> 7.9 ms);
* ``NPY_DISABLE_CPU_FEATURES`` (numpy's runtime SIMD dispatch, read when numpy is imported): the targets
  above AVX2 that numpy 2.4.6 dispatches to (``X86_V4``, ``AVX512_ICL``, ``AVX512_SPR``; see
  ``numpy.show_runtime()``).  Without it numpy's float64 ``exp``, ``log``, ``expm1``, ``log1p`` and
  ``power`` round differently on AVX-512 hosts, hence ``scipy.ndimage.gaussian_filter``'s kernel and
  every method's image scores; checked with numpy's own list of the targets in use;
* ``OPENBLAS_CORETYPE`` (the OpenBLAS inside numpy and scipy, ``Haswell``: its AVX2 kernels; it would pick
  ``SkylakeX`` on an AVX-512 host, whose float64 matrix products differ in the last bits).

The MKL branch and the last two were found by running the suite on emulated AVX2-only CPUs
(tests/test_emulated_cpus.py): with only the first three variables, numpy's dispatch still followed the
host, and MKL the vendor.

The workflow sets them in ``workflow/rules/common.smk`` from the config's ``determinism.cpu_isa`` before
any job starts, so every job (a fresh Python process) inherits them; each rule also runs with a fixed
torch thread count (``adbench.jobs.job_context``), whatever ``--cores`` says: the results depend on it
(feature extraction's convolutions differ in the last bits on 1 and 2 threads), so extraction always runs
on 2 threads (``params.torch_threads`` of ``workflow/rules/features.smk``) and every other job on one.

Every job also treats subnormal floats (magnitude below 1.18e-38 in float32) as zero: x86's flush-to-zero
and denormals-are-zero modes (``flush_denormals``).  Why: x86 arithmetic on a subnormal operand is 10 to
100 times slower, and trained attention is peaked: after a few epochs of ``make run``'s FOD budget about
10% of the entries of its softmax maps are subnormal, which made FOD's training step twice as slow
(73 ms -> 39 ms per step, one thread, AVX2; issue 19).  A subnormal can move a result only where it is
not negligible against what it meets, which is rare: with and without the mode, the CI config (674
numbers) and the default config (2,638 numbers) reproduced their golden files exactly.  Should a config
ever differ, the golden gate shows it, and ``ADBENCH_FLUSH_DENORMAL=0`` gives the other numbers.
The mode is part of the pinned environment: deterministic on every x86-64 CPU, recorded in each run's
kernel provenance (``flush_denormal``).  ``ADBENCH_FLUSH_DENORMAL=0`` turns it off (to measure its
effect: ``benchmarks/bench_run.py``).
"""
from __future__ import annotations

import os

# cpu_isa setting -> the environment that pins every library to it; ``native`` pins nothing.
ISA_ENVIRONMENTS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
             "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell"},
    "native": {},
}
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "NPY_DISABLE_CPU_FEATURES",
                 "OPENBLAS_CORETYPE")
FLUSH_VARIABLE = "ADBENCH_FLUSH_DENORMAL"


def isa_environment(cpu_isa: str) -> dict[str, str]:
    """The environment variables that pin torch's CPU kernels to ``cpu_isa`` (``avx2`` or ``native``)."""
    try:
        return dict(ISA_ENVIRONMENTS[cpu_isa])
    except KeyError:
        raise ValueError(f"determinism.cpu_isa = {cpu_isa!r}: use one of {sorted(ISA_ENVIRONMENTS)}") from None


def pin_cpu_isa(cpu_isa: str) -> None:
    """Set the pinning variables in this process's environment (inherited by every child process).

    Must run before torch executes its first CPU kernel in this process; child processes (Snakemake's
    jobs) always start clean.  ``native`` leaves the environment as it is.
    """
    os.environ.update(isa_environment(cpu_isa))


def flush_denormals() -> None:
    """Treat subnormal floats as zero in this thread and the threads it starts later (torch's intra-op
    pool), unless ``ADBENCH_FLUSH_DENORMAL=0``.

    Call it first in a process, before torch starts its thread pool: the mode is a per-thread CPU
    register that new threads copy from the thread that creates them, so a pool started earlier would
    keep computing with subnormals.  On a CPU without such a mode torch leaves arithmetic as it is, and
    ``kernel_provenance`` (which tests the arithmetic, not the setting) says ``flush_denormal: off``.
    """
    import torch

    torch.set_flush_denormal(os.environ.get(FLUSH_VARIABLE, "1") != "0")


def flushes_denormals() -> bool:
    """Whether arithmetic in this thread treats subnormals as zero: a subnormal times one comes out zero."""
    import torch

    return bool(torch.tensor([1e-39]).mul(1.0).eq(0).item())


def numpy_targets() -> list[str]:
    """numpy's SIMD dispatch targets in use in this process (``found`` of ``numpy.show_runtime()``)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]


# MKL's branch codes (mkl_cbwr.h), the ones a pin can ask for; 1 is "no branch set".
MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512"}


def mkl_branch() -> str:
    """The code branch MKL runs in this process (``MKL_BRANCHES``), or ``""`` where it cannot be read.

    torch links MKL statically and exports no public ``mkl_cbwr_get``, so this calls the internal
    ``mkl_serv_cbwr_get`` of ``libtorch_cpu`` (present in torch 2.14.1); MKL sets the branch from
    ``MKL_CBWR`` when it loads, and falls back to ``AUTO`` when the CPU cannot run the branch asked for.
    """
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return ""
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(1)  # MKL_CBWR_BRANCH
    return MKL_BRANCHES.get(code, f"branch {code}")


def kernel_provenance() -> dict[str, str]:
    """What this process's kernels run on: ATen's capability, MKL's branch and numpy's SIMD targets in
    use, the pins, and whether subnormals are flushed (``flush_denormals``).

    Raises:
        RuntimeError: ``ATEN_CPU_CAPABILITY`` asks for one capability but torch dispatches another (set
            too late, or a CPU without it), or numpy still dispatches to a target that
            ``NPY_DISABLE_CPU_FEATURES`` names (numpy was imported before the variable was set), or MKL
            runs another branch than ``MKL_CBWR`` asks for (a CPU that cannot run it), so the run would not
            reproduce on other machines.
    """
    import torch

    used = torch.backends.cpu.get_cpu_capability()
    wanted = os.environ.get("ATEN_CPU_CAPABILITY", "")
    if wanted and used.lower() != wanted.lower():
        raise RuntimeError(
            f"ATEN_CPU_CAPABILITY={wanted} but torch dispatches {used} kernels: either the variable was set after "
            f"torch ran its first kernel, or this CPU lacks {wanted} (not x86-64 with AVX2); set "
            f"determinism.cpu_isa: native in the config to run without the cross-machine guarantee")
    targets = numpy_targets()
    still = sorted(set(os.environ.get("NPY_DISABLE_CPU_FEATURES", "").split()) & set(targets))
    if still:
        raise RuntimeError(
            f"NPY_DISABLE_CPU_FEATURES excludes {' '.join(still)} but numpy dispatches to it: the variable was set "
            f"after numpy was imported; set it before (adbench.methods.determinism.pin_cpu_isa first)")
    branch, asked = mkl_branch(), os.environ.get("MKL_CBWR", "").split(",")[0].upper()
    if branch and asked and branch != asked:
        raise RuntimeError(
            f"MKL_CBWR={asked} but MKL runs its {branch} branch: this CPU cannot run {asked}, or MKL does not "
            f"honour it there (MKL ignores its AVX2 branch on AMD CPUs); MKL_CBWR=COMPATIBLE runs everywhere")
    return {"cpu_capability": used, "mkl_branch": branch, "numpy_simd": " ".join(targets),
            **{k.lower(): os.environ.get(k, "") for k in ISA_VARIABLES},
            "flush_denormal": "on" if flushes_denormals() else "off"}
