"""The pinned numbers on other CPUs: the pipeline at a tiny size (tests/isa_fingerprint.py) on this host and
on CPUs that QEMU's user-mode emulator presents (Intel's Haswell and AMD's EPYC-Rome: AVX2, no AVX-512), with
the workflow's pin (``adbench.methods.determinism``).  The emulator decodes the instructions itself, so
every library sees the emulated CPU and picks its kernels for it, as on a real machine of that kind.

QEMU (``qemu-user``, 7.2 or later: earlier versions do not emulate AVX2) is installed with apt-get when
it is missing and the tests run as root; otherwise they skip, saying why.  Each emulated run takes about a
minute.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adbench.methods.determinism import FLUSH_VARIABLE, ISA_VARIABLES, isa_environment

FINGERPRINT = Path(__file__).resolve().parent / "isa_fingerprint.py"
# QEMU's CPU model -> what it is: one Intel and one AMD CPU, since MKL picks its kernels by vendor too.
EMULATED = {"Haswell-v4": "Intel, AVX2", "EPYC-Rome-v2": "AMD, AVX2"}
EMULATED_SECONDS = 1200  # about 65 s on the developers' machine; the emulator's speed varies with the host


def _install_qemu() -> str | None:
    """``qemu-x86_64``'s path, installing Debian's qemu-user when possible; None otherwise."""
    if shutil.which("qemu-x86_64") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "qemu-user"]):
            subprocess.run(command, capture_output=True, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("qemu-x86_64")


@pytest.fixture(scope="module")
def qemu() -> str:
    if platform.machine() != "x86_64":
        pytest.skip(f"this host is {platform.machine()}, not x86-64: there is no native run to compare with")
    path = _install_qemu()
    if path is None:
        pytest.skip("qemu-x86_64 is not installed and cannot be here (needs root and apt-get): "
                    "apt-get install qemu-user")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"version (\d+)\.(\d+)", version)
    if found is None or tuple(map(int, found.groups())) < (7, 2):
        pytest.skip(f"{path} is {version.splitlines()[0] if version else 'of unknown version'}: "
                    "QEMU emulates AVX2 from 7.2 on")
    return path


def fingerprint(env: dict[str, str], *args: str, cpu: str | None = None, qemu: str | None = None) -> dict:
    """tests/isa_fingerprint.py's record, natively or on QEMU's ``cpu`` model, with exactly ``env``'s pins."""
    clean = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES + (FLUSH_VARIABLE,)}
    command = [sys.executable, str(FINGERPRINT), *args]
    if cpu is not None:
        command = [qemu, "-cpu", cpu, *command]
    proc = subprocess.run(command, capture_output=True, text=True, env={**clean, **env},
                          timeout=EMULATED_SECONDS if cpu else 300)
    assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.splitlines()[-1])


def differing(a: dict, b: dict) -> list[str]:
    """The digests that both fingerprint records hold and that differ."""
    return sorted(k for k in a["digests"].keys() & b["digests"].keys() if a["digests"][k] != b["digests"][k])


@pytest.fixture(scope="module")
def pinned(qemu) -> dict[str, dict]:
    """The fingerprint with the workflow's pin: ``"host"`` and each ``EMULATED`` model."""
    pin = isa_environment("avx2")
    runs = {"host": fingerprint(pin)}
    for cpu in EMULATED:
        runs[cpu] = fingerprint(pin, cpu=cpu, qemu=qemu)
    return runs


def test_the_pinned_pipeline_is_bit_identical_on_emulated_intel_and_amd_cpus(pinned):
    host = pinned["host"]
    assert len(host["digests"]) >= 20  # embedded images, features, 3 digests per method, significance
    for cpu, what in EMULATED.items():
        record = pinned[cpu]
        assert not record["cpu"]["avx512f"], f"QEMU's {cpu} should have no AVX-512: {record['cpu']}"
        assert (record["cpu"]["cpu_capability"], record["cpu"]["mkl_branch"]) == ("AVX2", "COMPATIBLE"), record["cpu"]
        assert record["digests"].keys() == host["digests"].keys()
        moved = differing(host, record)
        assert not moved, (f"pinned, this host ({host['cpu']}) and an emulated {cpu} ({what}) differ on {moved}: "
                           f"some library still picks kernels by CPU; see adbench/methods/determinism.py")


def test_unpinned_the_host_differs_from_the_emulated_cpus(pinned):
    """Negative control: the comparison can fail.  Unpinned, MKL runs its own branch for the host (not
    ``COMPATIBLE``), so every method that multiplies matrices moves."""
    native = fingerprint({}, "--no-features")
    moved = differing(native, pinned["Haswell-v4"])
    assert any(key.endswith("/scores") for key in moved), (native["cpu"], moved)


def test_without_numpys_pin_an_avx512_host_differs(pinned):
    """The pin's numpy part is needed: on an AVX-512 host numpy's float64 exp/log/power (hence the Gaussian
    blur of every method's maps) round differently from an AVX2 CPU's."""
    if not pinned["host"]["cpu"]["avx512f"]:
        pytest.skip("this host has no AVX-512: numpy dispatches as on the emulated AVX2 CPUs anyway")
    pin = {k: v for k, v in isa_environment("avx2").items() if k != "NPY_DISABLE_CPU_FEATURES"}
    moved = differing(fingerprint(pin, "--no-features"), pinned["Haswell-v4"])
    assert moved, "numpy's AVX-512 targets made no difference: the numpy pin would be untested"
