"""Arithmetic whose float32 results are the same on every x86-64 CPU, where torch's own are not.

``torch.sqrt`` on the CPU (also ``pow(0.5)``, the matrix-product path of ``torch.cdist`` and the
non-fused ``torch.optim.Adam``) runs MKL's vector math, which refines the CPU's approximate reciprocal
square root (``rsqrtps``).  That instruction's result is each vendor's own (Intel's and AMD's differ, an
emulator's differs from both), so ``torch.sqrt`` gave other last bits on another machine even with every
kernel pinned (``adbench.methods.determinism``): about 15% of float32 roots moved by one unit in the last
place between an AMD EPYC host and QEMU's emulated CPUs (tests/test_emulated_cpus.py), and training
turns that into other AUROCs.  ``torch.optim.Adam(fused=True)`` and ``torch.cdist(...,
compute_mode="donot_use_mm_for_euclid_dist")`` take the square root with the exact instruction instead,
so the methods use those.
"""
from __future__ import annotations

import torch


def portable_sqrt(x: torch.Tensor) -> torch.Tensor:
    """Element-wise square root of a float32 tensor, correctly rounded, hence the same on every CPU.

    Taken in float64 and rounded back: a float64 root within a unit of its last place rounds to the
    correctly rounded float32 root (53 >= 2 * 24 + 2 bits), whatever MKL's last float64 bit.

    x: float32, any shape, >= 0 (clamp distances first).  Returns a new float32 tensor of x's shape;
    differentiable.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"portable_sqrt takes float32 (a float64 root keeps MKL's last bit), got {x.dtype}")
    return x.double().sqrt().float()
