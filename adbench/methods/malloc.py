"""Keep freed memory in the process for reuse instead of giving it back to the kernel (glibc's malloc).

A training step allocates and frees the same large tensors again and again: FOD's attention maps and
their gradients are 32 MiB each at the paper's shapes (8 heads x 1,024 x 1,024 float32), dozens per step.
By default glibc serves every allocation above its mmap threshold (128 KiB at first, rising with the sizes
freed, at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and hands the free top of its heap
back to the kernel above its trim threshold.  Every page of such memory, touched again, costs a page fault
in which the kernel zeroes it.  At the paper's shapes that was 160,000-210,000 faults and 0.3-0.4 CPU-s of
kernel time per FOD training step here; kept, 4,000-12,000 faults, and the step took 0.81 s instead of
1.21 s (``benchmarks/bench_fod_step.py``, 2 threads, side by side).  The default config's maps are 1-2 MiB,
mostly below the threshold: its whole workflow ran 2% faster (``benchmarks/bench_run.py``, 435 s / 445 s).

``retain_freed_memory`` sets glibc's ``M_MMAP_MAX`` to 0 (every allocation from the heap, none mapped on
its own) and ``M_TRIM_THRESHOLD`` to -1 (the heap never shrinks), with ``mallopt(3)``, so freed blocks
are reused without faults.  It changes where tensors live, never what is computed: torch still aligns
every allocation to 64 bytes, and the CI and default configs reproduce their golden files with and
without it.  The cost is memory: a process keeps its peak heap until it exits, plus fragmentation (peak
RSS of the paper-shape step 2.05 -> 2.10 GB, ``make bench``).  Every job calls it
(``adbench.jobs.job_settings``), as do the benchmarks that time a job's work; the tests do not
(``tests/conftest.py``: a test process runs hundreds of fits one after another and would keep the largest
heap of them all).

``ADBENCH_MALLOC=system`` keeps glibc's defaults.  Where the C library is not glibc (macOS, musl) nothing
is changed.
"""
from __future__ import annotations

import ctypes
import os
import platform

VARIABLE = "ADBENCH_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # <malloc.h>


def retain_freed_memory() -> str:
    """Set glibc's malloc to keep freed memory (see the module docstring), unless ``ADBENCH_MALLOC=system``.

    Returns what this process's malloc now does, for the job's log: ``retained``, ``system`` (asked for),
    or ``system (<libc> is not glibc)``.
    Raises:
        ValueError: ``ADBENCH_MALLOC`` is neither unset, ``retain`` nor ``system``.
        OSError: glibc refused a setting.
    """
    wanted = os.environ.get(VARIABLE, "retain")
    if wanted not in ("retain", "system"):
        raise ValueError(f"{VARIABLE}={wanted!r}: use retain (the default) or system (glibc's own settings)")
    if wanted == "system":
        return "system"
    libc, _ = platform.libc_ver()
    if libc != "glibc":
        return f"system ({libc or 'this C library'} is not glibc)"
    mallopt = ctypes.CDLL(None).mallopt
    for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)):
        if mallopt(option, value) != 1:
            raise OSError(f"glibc's mallopt({option}, {value}) failed; set {VARIABLE}=system to run without it")
    return "retained"
