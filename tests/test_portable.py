"""adbench.methods.portable.portable_sqrt: correctly rounded (so the same on every CPU), float32 only."""
import numpy as np
import pytest
import torch

from adbench.methods.portable import portable_sqrt


def test_every_root_is_the_correctly_rounded_float32():
    # torch.sqrt misses the correctly rounded root for ~15% of these on an AMD EPYC host (MKL's refined rsqrtps)
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 100
    x[:4] = torch.tensor([0.0, 1e-30, 4.0, 1e30])
    exact = np.sqrt(x.numpy().astype(np.float64)).astype(np.float32)  # 53 >= 2 * 24 + 2 bits: correctly rounded
    out = portable_sqrt(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert np.array_equal(out.numpy(), exact)


def test_it_is_differentiable_and_refuses_float64():
    x = torch.tensor([4.0, 9.0], requires_grad=True)
    portable_sqrt(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.25, 1 / 6]))
    with pytest.raises(TypeError, match="float32"):
        portable_sqrt(torch.ones(2, dtype=torch.float64))
