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
torch thread count (``adbench.jobs.job_context``).  Feature extraction gives bit-identical features with
1 or 2 threads; training jobs always run on one thread.
"""
from __future__ import annotations

import os

# cpu_isa setting -> the environment that pins every library to it; ``native`` pins nothing.
ISA_ENVIRONMENTS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "native": {},
}
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


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


def kernel_provenance() -> dict[str, str]:
    """What this process's kernels run on: ATen's capability in use, the host's best, and the pins.

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
    return {"cpu_capability": used, **{k.lower(): os.environ.get(k, "") for k in ISA_VARIABLES}}
