"""adbench.methods.malloc: a job keeps freed memory for reuse (no mmap per large tensor, no page faults on
reuse)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from adbench.methods.malloc import VARIABLE, retain_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings exist only in glibc")

# A job (adbench.jobs.job_context) fills a 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB, so
# glibc's defaults map it on its own) and frees it, eight times over: how many blocks glibc mapped separately
# for the first, and the page faults of each.  The heap needs a few rounds to settle (torch's aligned
# allocations ask a little more than they keep, so a freed block is reused from the round after next).
JOB_ALLOCATES = """
import ctypes, json, resource, sys, torch
from adbench.jobs import job_context

libc = ctypes.CDLL(None)
# mallinfo2 (size_t fields) since glibc 2.33; before it mallinfo (int fields), the same order
FIELD = ctypes.c_size_t if hasattr(libc, "mallinfo2") else ctypes.c_int

class Mallinfo(ctypes.Structure):
    _fields_ = [(name, FIELD) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                           "uordblks", "fordblks", "keepcost")]

mallinfo = libc.mallinfo2 if hasattr(libc, "mallinfo2") else libc.mallinfo
mallinfo.restype = Mallinfo
faults, mapped = [], mallinfo().hblks
with job_context(sys.argv[1], 1):
    for round in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(1 << 24)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        if round == 0:
            mapped = mallinfo().hblks - mapped
        del block
print(json.dumps({"mapped": mapped, "faults": faults}))
"""


def _job(tmp_path, setting: str | None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if setting is not None:
        env[VARIABLE] = setting
    proc = subprocess.run([sys.executable, "-c", JOB_ALLOCATES, str(tmp_path / "job.log")], capture_output=True,
                          text=True, env=env)
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert proc.returncode == 0, proc.stderr + log
    return json.loads(proc.stdout), log


@glibc_only
def test_a_job_reuses_freed_memory_without_page_faults(tmp_path):
    """By default a job's 64 MiB tensor comes from the heap, and once the heap has settled a freed one's
    pages are reused: far fewer faults than the 16,384 pages of 4 KiB it spans; the log says
    ``malloc: retained``."""
    record, log = _job(tmp_path, None)
    assert record["mapped"] == 0, "a 64 MiB tensor was mapped on its own: M_MMAP_MAX is not 0"
    assert max(record["faults"][-3:]) < 1000, f"page faults per round {record['faults']}: freed memory not reused"
    assert "malloc: retained" in log


@glibc_only
def test_system_malloc_maps_large_tensors_on_their_own(tmp_path):
    """The control: with ADBENCH_MALLOC=system glibc maps the same tensor separately (and unmaps it on free)."""
    record, log = _job(tmp_path, "system")
    assert record["mapped"] >= 1
    assert "malloc: system" in log


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setenv(VARIABLE, "jemalloc")
    with pytest.raises(ValueError, match="ADBENCH_MALLOC='jemalloc'.*retain.*system"):
        retain_freed_memory()
