import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adbench.embedded import DEFECT_KIND
from adbench.metrics import roc_auc
from adbench.protocol import Split
from baselines.patchcore import PatchCore, patch_embeddings


def test_embeddings_follow_the_public_recipe():
    """Shapes, and one patch computed by hand: unfold 3x3, upsample level 1, pool per level, pool stacked."""
    g = torch.Generator().manual_seed(0)
    f0, f1 = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    emb, grid = patch_embeddings([f0, f1], 3, pretrain_dim=16, target_dim=8)
    assert grid == (8, 8) and emb.shape == (2 * 64, 8)
    u0 = F.unfold(f0, 3, padding=1)[1, :, 9]  # image 1, patch (1, 1)
    u1 = F.interpolate(F.unfold(f1, 3, padding=1).reshape(2, -1, 4, 4), size=(8, 8), mode="bilinear",
                       align_corners=False).reshape(2, -1, 64)[1, :, 9]
    p = [F.adaptive_avg_pool1d(u[None, None], 16)[0, 0] for u in (u0, u1)]
    expected = F.adaptive_avg_pool1d(torch.cat(p)[None, None], 8)[0, 0]
    torch.testing.assert_close(emb[64 + 9], expected)


def test_unknown_params_are_rejected():
    with pytest.raises(ValueError, match="unknown PatchCore params"):
        PatchCore({"coreset_rate": 0.1})


def _synthetic_split(n: int, anomalous: bool, g: torch.Generator) -> Split:
    """Patches drawn from 12 prototypes plus noise; anomalous images get a 2x2 patch shifted off them."""
    protos = torch.randn(12, 24, generator=torch.Generator().manual_seed(99)) * 2
    f = protos[torch.randint(12, (n, 16, 16), generator=g)].permute(0, 3, 1, 2) + 0.6 * torch.randn(
        n, 24, 16, 16, generator=g)
    labels = np.zeros(n, np.int64)
    for i in range(n // 2 if anomalous else 0):
        r, c = torch.randint(2, 14, (2,), generator=g).tolist()
        f[i, :, r - 1:r + 1, c - 1:c + 1] += 2.0 * torch.randn(24, 1, 1, generator=g)
        labels[i] = 1
    return Split([str(i) for i in range(n)], labels, ["x"] * n, torch.zeros(n, 3, 128, 128, dtype=torch.uint8),
                 torch.zeros(n, 128, 128, dtype=torch.uint8), [f, F.avg_pool2d(f, 2)], (8, 16), "synthetic")


@pytest.mark.parametrize("seed", [0, 1])
def test_coreset_stays_within_001_of_exact_search(seed):
    """With a bank large enough for a 10% coreset to cover it (15,360 patches), image AUROC matches exact
    1-NN search; a random 10% subset instead loses ~0.03 here, so this catches a broken selection."""
    g = torch.Generator().manual_seed(seed)
    train, test = _synthetic_split(60, False, g), _synthetic_split(200, True, g)
    dims = {"pretrain_embed_dim": 128, "target_embed_dim": 128}
    exact = roc_auc(test.labels, PatchCore({"coreset_ratio": 1.0, **dims}).fit(train).predict(test).scores)
    approx = roc_auc(test.labels, PatchCore({"coreset_ratio": 0.1, **dims}).fit(train).predict(test).scores)
    assert 0.95 < exact < 1.0  # hard enough that the bank's coverage matters
    # coreset seeds 0-4, AVX2 and AVX-512 alike: at most 0.0097 (random 10% subsets: 0.015-0.053), so the bound
    # stays (benchmarks/learning_margins.py)
    assert abs(exact - approx) <= 0.01


def local_defects(test: Split) -> np.ndarray:
    """Which test images are normal or carry a local defect (not the subtle global colour change)."""
    return np.array([t == "good" or DEFECT_KIND[t] == "local" for t in test.defect_types])


def test_scores_maps_determinism_and_round_trip(embedded_splits, tmp_path):
    train, test = embedded_splits("brick")
    a = PatchCore({}, seed=0).fit(train)
    pa = a.predict(test)
    assert pa.maps.shape == (len(test), test.image_size, test.image_size)
    assert np.isfinite(pa.maps).all() and (pa.scores >= 0).all()
    # the texture category's local defects are easy: min over coreset seeds 0-4 x {AVX2, AVX-512} 0.94; with the
    # colour defects too it is 0.84 (benchmarks/learning_margins.py)
    local = local_defects(test)
    assert roc_auc(test.labels[local], pa.scores[local]) > 0.85
    pb = PatchCore({}, seed=0).fit(train).predict(test)
    np.testing.assert_array_equal(pa.scores, pb.scores)
    a.save(tmp_path / "m.pt")
    pc = PatchCore.load(tmp_path / "m.pt").predict(test)
    np.testing.assert_array_equal(pa.maps, pc.maps)
