"""Reference features of the inter branch: per-position mean, greedy k-centre coreset."""
import torch
import torch.nn.functional as F

from fod.reference import coreset_reference, greedy_k_center, mean_reference
from fod.tokens import feature_tokens, grid_positions, pooled


def test_pool_is_3x3_with_zero_padding_counted():
    out = pooled(torch.ones(1, 1, 4, 4), pool=True)[0, 0]
    assert out[0, 0] == 4 / 9 and out[0, 1] == 6 / 9 and out[1, 1] == 1
    assert torch.equal(pooled(torch.ones(1, 1, 4, 4), pool=False), torch.ones(1, 1, 4, 4))


def test_feature_tokens_are_row_major():
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    tokens = feature_tokens(feats, pool=False)
    assert tokens.shape == (1, 12, 2)
    assert torch.equal(tokens[0, 5], feats[0, :, 1, 1])


def test_mean_reference_is_the_per_position_mean_of_the_pooled_features():
    feats = torch.randn(130, 3, 4, 5)  # more than one pooling chunk
    ref, cells = mean_reference(feats, pool=True)
    expected = F.avg_pool2d(feats, 3, 1, 1).mean(0).flatten(1).T
    torch.testing.assert_close(ref, expected)
    assert torch.equal(cells, grid_positions(4, 5))
    torch.testing.assert_close(mean_reference(feats, pool=False)[0], feats.mean(0).flatten(1).T)


def test_greedy_k_center_picks_one_point_per_separated_cluster():
    points = torch.tensor([[0.0], [0.1], [10.0], [10.1], [100.0], [100.1]])
    for seed in range(4):
        chosen = greedy_k_center(points, 3, torch.Generator().manual_seed(seed))
        assert sorted((points[chosen, 0] // 10).tolist()) == [0.0, 1.0, 10.0]


def test_coreset_reference_keeps_real_tokens_and_their_cells():
    feats = torch.randn(6, 150, 3, 4)  # C > 128: distances after the random projection
    ref, cells = coreset_reference(feats, pool=True, generator=torch.Generator().manual_seed(0), positions="keep")
    assert ref.shape == (12, 150) and cells.shape == (12, 2)
    tokens = feature_tokens(feats, pool=True)  # (6, 12, 150)
    for token, (row, col) in zip(ref, cells.tolist()):
        at_cell = tokens[:, row * 4 + col]
        assert (at_cell - token).abs().amax(1).min() == 0
    assert len({tuple(t.tolist()) for t in ref}) == 12  # distinct tokens


def test_coreset_reference_drop_lays_the_same_tokens_on_the_grid_in_selection_order():
    """``drop`` (Table 4's coreset row): the tokens of ``keep``, in greedy selection order, token k at
    row-major cell k, whatever cell it came from."""
    feats = torch.randn(5, 8, 4, 6)
    kept, source = coreset_reference(feats, False, torch.Generator().manual_seed(3), positions="keep")
    dropped, cells = coreset_reference(feats, False, torch.Generator().manual_seed(3), positions="drop")
    assert torch.equal(dropped, kept) and torch.equal(cells, grid_positions(4, 6))
    bank = feature_tokens(feats, pool=False).reshape(-1, 8)
    chosen = greedy_k_center(bank, 24, torch.Generator().manual_seed(3), proj_dim=128)
    assert torch.equal(dropped, bank[chosen])  # selection order, the first centre first
    assert torch.equal(source, grid_positions(4, 6)[chosen % 24])
    assert not torch.equal(source, cells)  # the source cells are not the grid in order
