"""Same numbers on every x86 machine: pin the CPU kernels' instruction set, fix the thread count.

torch picks CPU kernels by the instruction set it finds (ATen's vectorised loops, oneDNN's convolutions,
MKL's matrix products): AVX2 on one machine, AVX-512 on another.  The results differ in the last bits,
and a few epochs of training amplify that into AUROC differences of 0.03 or more.  Each library reads one
environment variable, once, before its first kernel runs:

* ``ATEN_CPU_CAPABILITY`` (ATen, e.g. ``avx2``), checked with ``torch.backends.cpu.get_cpu_capability()``;
* ``ONEDNN_MAX_CPU_ISA`` (oneDNN convolutions, e.g. ``AVX2``);
* ``MKL_CBWR`` (MKL's conditional numerical reproducibility branch, e.g. ``AVX2``: MKL documents the
  same results on every CPU with AVX2 at a fixed thread count).

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
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "native": {},
}
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
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


def kernel_provenance() -> dict[str, str]:
    """What this process's kernels run on: ATen's capability in use, the host's best, the pins, and
    whether subnormals are flushed (``flush_denormals``).

    Raises:
        RuntimeError: ``ATEN_CPU_CAPABILITY`` asks for one capability but torch dispatches another (set
            too late, or a CPU without it), so the run would not reproduce on other machines.
    """
    import torch

    used = torch.backends.cpu.get_cpu_capability()
    wanted = os.environ.get("ATEN_CPU_CAPABILITY", "")
    if wanted and used.lower() != wanted.lower():
        raise RuntimeError(
            f"ATEN_CPU_CAPABILITY={wanted} but torch dispatches {used} kernels: either the variable was set after "
            f"torch ran its first kernel, or this CPU lacks {wanted} (not x86-64 with AVX2); set "
            f"determinism.cpu_isa: native in the config to run without the cross-machine guarantee")
    return {"cpu_capability": used, **{k.lower(): os.environ.get(k, "") for k in ISA_VARIABLES},
            "flush_denormal": "on" if flushes_denormals() else "off"}
