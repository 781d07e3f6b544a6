"""The per-level transformer: shapes, I2Correlation fusion, positional encoding, what exists per branch."""
import math

import pytest
import torch

from fod.config import resolve
from fod.method import build_levels
from fod.model import I2CorrelationLayer, sincos_encoding
from fod.tokens import grid_positions

# tf_efficientnet_lite0 channel counts at a 64 px input: stride 8 -> 8x8, stride 16 -> 4x4
SHAPES = [{"channels": 40, "grid": [8, 8], "n_reference": 64}, {"channels": 112, "grid": [4, 4], "n_reference": 16}]


def test_output_shapes_at_both_levels_with_the_paper_sizes():
    torch.manual_seed(0)
    cfg = resolve({})  # d_model 256 / 512, 8 heads, 3 layers
    levels = build_levels(cfg, SHAPES)
    for level, shape in zip(levels, SHAPES):
        c, (h, w) = shape["channels"], shape["grid"]
        level.set_reference(torch.randn(h * w, c), grid_positions(h, w))
        out = level(torch.randn(2, h * w, c))
        assert out.recon.shape == (2, h * w, c)
        assert len(out.intra) == len(out.inter) == 3
        for corr in out.intra + out.inter:
            assert corr.attn.shape == (2, 8, h * w, h * w)
            assert corr.log_fy.shape == (2, 8, h * w, h) and corr.log_fx.shape == (2, 8, h * w, w)
            torch.testing.assert_close(corr.attn.sum(-1), torch.ones(2, 8, h * w))
        assert all(c.key_pos is None for c in out.inter)  # mean reference: position-aligned
    assert levels[0].embed.out_features == 256 and levels[1].embed.out_features == 512


def test_unaligned_reference_cells_reach_the_prior():
    torch.manual_seed(0)
    cfg = resolve({"d_model": [16], "heads": 2, "layers": 1})
    level = build_levels(cfg, [{"channels": 5, "grid": [3, 3], "n_reference": 4}])[0]
    cells = torch.tensor([[0, 0], [2, 2], [2, 2], [1, 0]])
    level.set_reference(torch.randn(4, 5), cells)
    out = level(torch.randn(1, 9, 5))
    assert out.inter[0].attn.shape == (1, 2, 9, 4)
    assert torch.equal(out.inter[0].key_pos, cells)


def test_positional_encoding_halves_encode_column_then_row():
    pe = sincos_encoding(16, 3, 4).view(3, 4, 16)
    assert torch.equal(pe[0, :, :8], pe[2, :, :8])  # first half: column only
    assert torch.equal(pe[:, 0, 8:], pe[:, 3, 8:])  # second half: row only
    # column 1 at the lowest frequency
    torch.testing.assert_close(pe[0, 1, 0:2], torch.tensor([math.sin(1.0), math.cos(1.0)]))
    assert len({tuple(v.tolist()) for v in pe.view(12, 16)}) == 12


@pytest.mark.parametrize(
    "intra,inter,residual",
    [(True, True, False), (True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_layer_fusion(intra, inter, residual):
    torch.manual_seed(0)
    layer = I2CorrelationLayer(8, 2, 4, intra, inter, residual)
    x, ref = torch.randn(2, 6, 8), torch.randn(6, 8)
    out, branch_g, branch_e = layer(x, ref)
    z_g = layer.self_attn(x, x)[0] if layer.self_attn is not None else None
    z_e = layer.cross_attn(x, ref)[0] if layer.cross_attn is not None else None
    if intra and inter:
        z = z_g - z_e + (x if residual else 0)
    else:
        z = x + (z_g if z_g is not None else z_e)
    z = layer.norm1(z)
    torch.testing.assert_close(out, layer.norm2(z + layer.ffn(z)))
    assert (branch_e is None) == (not inter)
    assert (layer.self_attn is None) == (inter and not intra)
    if layer.self_attn is not None:
        assert (layer.self_attn.sigma is None) == (not intra)  # the patch-wise-only transformer has no prior


def test_modules_that_exist_per_configuration():
    def names(**params):
        cfg = resolve({"d_model": [16], "heads": 2, "layers": 1, **params})
        return {n for n, _ in build_levels(cfg, SHAPES[:1])[0].named_parameters()}

    full = names()
    assert not any("out_proj" in n or ".o." in n for n in full)  # no discarded output projection
    assert any("ref_embed" in n for n in full)
    patchwise = names(intra=False, inter=False, score="rec")
    assert not any("sigma" in n or "cross_attn" in n or "ref_embed" in n for n in patchwise)
    inter_only = names(intra=False)
    assert not any("self_attn" in n for n in inter_only)
