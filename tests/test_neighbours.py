"""adbench.methods.neighbours: exact nearest-neighbour distances and greedy k-centre selection, in each caller's variant."""
import pytest
import torch

from adbench.methods.neighbours import greedy_k_center, nearest_distances, random_projection


def _naive_greedy(z: torch.Tensor, n: int, start: torch.Tensor) -> list[int]:
    """The public PatchCore code's loop, written plainly: full distance update every step."""
    min_d = torch.cdist(z, z[start]).mean(1)
    chosen = []
    for _ in range(n):
        i = int(torch.argmax(min_d))
        chosen.append(i)
        min_d = torch.minimum(min_d, torch.cdist(z, z[i:i + 1])[:, 0])
    return chosen


def test_lazy_greedy_selects_the_same_points_as_the_plain_loop():
    """PatchCore's variant (mean distance to 10 random start points, Euclidean, lazy blocks)."""
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(1))
    got = greedy_k_center(x, 200, torch.Generator().manual_seed(5), projection_dim=0, start_points=10, block=256)
    start = torch.randint(3000, (10,), generator=torch.Generator().manual_seed(5))
    assert got.tolist() == _naive_greedy(x, 200, start)


@pytest.mark.parametrize("start_points", [None, 10])
@pytest.mark.parametrize("squared", [False, True])
def test_lazy_and_plain_loops_agree(start_points, squared):
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(2))
    kw = dict(start_points=start_points, squared=squared)
    lazy = greedy_k_center(x, 150, torch.Generator().manual_seed(3), block=256, **kw)
    plain = greedy_k_center(x, 150, torch.Generator().manual_seed(3), **kw)
    assert lazy.tolist() == plain.tolist()
    assert len(set(lazy.tolist())) == 150


def test_random_start_is_selected_first_and_counts_are_clamped():
    """FOD's variant: the first point is the generator's random draw; at most P points come back."""
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    got = greedy_k_center(x, 100, torch.Generator().manual_seed(7), squared=True)
    assert int(got[0]) == int(torch.randint(40, (1,), generator=torch.Generator().manual_seed(7)))
    assert sorted(got.tolist()) == list(range(40))


def test_projection_is_skipped_when_it_would_not_reduce_and_draws_nothing():
    x = torch.randn(10, 128)
    for kind in ("linear", "gaussian"):
        g = torch.Generator().manual_seed(0)
        before = g.get_state()
        assert random_projection(x, 128, g, kind) is x and random_projection(x, 0, g, kind) is x
        assert torch.equal(g.get_state(), before)
        assert random_projection(torch.randn(10, 129), 128, g, kind).shape == (10, 128)
    with pytest.raises(ValueError, match="projection"):
        random_projection(x, 4, g, "sparse")


def test_nearest_distances_match_cdist():
    """PatchCore's order (full squared distances, k smallest), chunked by rows."""
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(500, 12, generator=g), torch.randn(90, 12, generator=g)
    torch.testing.assert_close(nearest_distances(q, bank, chunk=128), torch.cdist(q, bank).min(1).values,
                               atol=1e-4, rtol=1e-4)
    top3 = torch.cdist(q, bank).topk(3, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(nearest_distances(q, bank, 3, chunk=128), top3, atol=1e-4, rtol=1e-4)


def test_nearest_distances_min_first_against_naive_version():
    """PatchSVDD's order (row minimum of |b|^2 - 2 q.b, then + |q|^2), chunked by matrix size."""
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 8, generator=g), torch.randn(300, 8, generator=g)
    expected = torch.cdist(q, bank).amin(1)
    torch.testing.assert_close(nearest_distances(q, bank, max_elements=1000, min_first=True), expected,
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="k = 1"):
        nearest_distances(q, bank, 2, min_first=True)
    assert nearest_distances(q[:0], bank).shape == (0,)
