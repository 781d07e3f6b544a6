import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from adbench.data.embedded import DEFECT_KIND
from adbench.evaluation.metrics import roc_auc
from adbench.protocol import Split
from adbench.spec import ParamError
from baselines.patchcore import PAPER_PARAMS, PatchCore, patch_embeddings, smoothing_sigma_px


def _levels(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 4, 4, generator=g)]


def test_public_embeddings_follow_the_public_recipe():
    """Shapes, and one patch computed by hand: unfold 3x3, upsample level 1, pool per level, pool stacked."""
    f0, f1 = _levels()
    emb, grid = patch_embeddings([f0, f1], "public", 3, pretrain_dim=16, target_dim=8)
    assert grid == (8, 8) and emb.shape == (2 * 64, 8)
    u0 = F.unfold(f0, 3, padding=1)[1, :, 9]  # image 1, patch (1, 1)
    u1 = F.interpolate(F.unfold(f1, 3, padding=1).reshape(2, -1, 4, 4), size=(8, 8), mode="bilinear",
                       align_corners=False).reshape(2, -1, 64)[1, :, 9]
    p = [F.adaptive_avg_pool1d(u[None, None], 16)[0, 0] for u in (u0, u1)]
    expected = F.adaptive_avg_pool1d(torch.cat(p)[None, None], 8)[0, 0]
    torch.testing.assert_close(emb[64 + 9], expected)


def _box_mean(f: torch.Tensor) -> torch.Tensor:
    """3x3 mean of every cell over a zero border (the padded cells count), by explicit shifted sums."""
    padded = F.pad(f, (1, 1, 1, 1))
    h, w = f.shape[-2:]
    return sum(padded[..., i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def test_average_embeddings_are_a_3x3_mean_per_level_concatenated():
    """Level 0's 3x3 mean, level 1's 3x3 mean upsampled bilinearly to level 0's grid, channels concatenated
    (4 + 6 dims, no dimension pooling); a corner cell averages over 9 with the zero border, as unfold does."""
    f0, f1 = _levels()
    emb, grid = patch_embeddings([f0, f1], "average", 3, pretrain_dim=16, target_dim=8, chunk=1)
    assert grid == (8, 8) and emb.shape == (2 * 64, 10)
    up = F.interpolate(_box_mean(f1), size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.cat([_box_mean(f0), up], 1).permute(0, 2, 3, 1).reshape(128, 10)
    torch.testing.assert_close(emb, expected)
    torch.testing.assert_close(emb[64 + 9, :4], f0[1, :, 0:3, 0:3].mean((1, 2)))  # image 1, cell (1, 1)
    torch.testing.assert_close(emb[0, :4], f0[0, :, 0:2, 0:2].sum((1, 2)) / 9)  # corner: zeros count


def test_sigma_follows_the_evaluation_resolution_when_asked():
    assert smoothing_sigma_px(4.0, "pixels", 128) == 4.0
    assert smoothing_sigma_px(4.0, "resolution", 128) == pytest.approx(4 * 128 / 224)
    assert smoothing_sigma_px(4.0, "resolution", 224) == 4.0
    with pytest.raises(ValueError, match="smoothing_scale"):
        smoothing_sigma_px(4.0, "px", 128)


def test_paper_params_are_the_literal_public_code():
    """The public RescaleSegmentor blurs with sigma = 4 px at whatever size it upsamples to (issue 17: the
    'resolution' reading was called the public code but is in neither it nor anomalib)."""
    assert {k: PAPER_PARAMS[k] for k in ("aggregation", "distance", "smoothing_scale", "num_neighbors")} == {
        "aggregation": "public", "distance": "squared", "smoothing_scale": "pixels", "num_neighbors": 1}
    assert smoothing_sigma_px(PAPER_PARAMS["smoothing_sigma"], PAPER_PARAMS["smoothing_scale"], 256) == 4.0


@pytest.mark.parametrize("params, fix", [({"aggregation": "mean"}, "public, average"),
                                         ({"distance": "l2"}, "squared, euclidean"),
                                         ({"smoothing_scale": "px"}, "pixels, resolution"),
                                         ({"distance": "squared", "num_neighbors": 3}, "euclidean")])
def test_bad_choices_are_rejected(params, fix):
    with pytest.raises(ParamError, match=fix):
        PatchCore(params)


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
    1-NN search (default params: the ``average`` embedding); a random 10% subset instead loses 0.012-0.036
    here, so this catches a broken selection."""
    g = torch.Generator().manual_seed(seed)
    train, test = _synthetic_split(60, False, g), _synthetic_split(200, True, g)
    dims = {"pretrain_embed_dim": 128, "target_embed_dim": 128}
    exact = roc_auc(test.labels, PatchCore({"coreset_ratio": 1.0, **dims}).fit(train).predict(test).scores)
    approx = roc_auc(test.labels, PatchCore({"coreset_ratio": 0.1, **dims}).fit(train).predict(test).scores)
    assert 0.95 < exact < 1.0  # hard enough that the bank's coverage matters
    # coreset seeds 0-4, AVX2 and AVX-512 alike: at most 0.0039 (random 10% subsets: 0.012-0.036), so the bound
    # stays (benchmarks/learning_margins.py)
    assert abs(exact - approx) <= 0.01


@pytest.mark.parametrize("aggregation", ["public", "average"])
@pytest.mark.parametrize("distance, scale", [("euclidean", "pixels"), ("squared", "resolution")])
def test_predict_is_nearest_distance_upsampled_and_smoothed(aggregation, distance, scale):
    """Scores and maps against an independent float64 recomputation from the embeddings: 1-NN distance
    (squared or not), max per image; bilinear upsampling to 128 px, Gaussian of sigma 4 or 4 * 128 / 224 px."""
    g = torch.Generator().manual_seed(3)
    train, test = _synthetic_split(6, False, g), _synthetic_split(4, True, g)
    dims = {"pretrain_embed_dim": 64, "target_embed_dim": 32}
    params = {"aggregation": aggregation, "distance": distance, "smoothing_scale": scale, "coreset_ratio": 1.0, **dims}
    pred = PatchCore(params).fit(train).predict(test)
    bank, _ = patch_embeddings(train.features, aggregation, 3, 64, 32)
    emb, (h, w) = patch_embeddings(test.features, aggregation, 3, 64, 32)
    d = torch.cdist(emb.double(), bank.double()).min(1).values.reshape(len(test), h, w)
    d = d.square() if distance == "squared" else d
    up = F.interpolate(d[:, None], size=(128, 128), mode="bilinear", align_corners=False)[:, 0].numpy()
    sigma = 4.0 if scale == "pixels" else 4.0 * 128 / 224
    expected = np.stack([ndimage.gaussian_filter(m, sigma) for m in up])
    np.testing.assert_allclose(pred.maps, expected, rtol=1e-4, atol=1e-4 * expected.max())
    np.testing.assert_allclose(pred.scores, d.flatten(1).max(1).values.numpy(), rtol=1e-4)


def test_squared_distances_change_only_a_monotone_transform_of_the_scores():
    """With num_neighbors 1 the image scores are the Euclidean ones squared (same ranking); the maps are not
    (squaring before the upsampling and smoothing is not squaring after them)."""
    g = torch.Generator().manual_seed(4)
    train, test = _synthetic_split(20, False, g), _synthetic_split(40, True, g)
    eu, sq = (PatchCore({"distance": d}, seed=0).fit(train).predict(test) for d in ("euclidean", "squared"))
    np.testing.assert_allclose(sq.scores, eu.scores ** 2, rtol=1e-5)
    np.testing.assert_array_equal(np.argsort(sq.scores), np.argsort(eu.scores))
    assert roc_auc(test.labels, sq.scores) == roc_auc(test.labels, eu.scores)
    assert np.abs(sq.maps - eu.maps ** 2).max() > 0.01 * (eu.maps ** 2).max()


def local_defects(test: Split) -> np.ndarray:
    """Which test images are normal or carry a local defect (not the subtle global colour change)."""
    return np.array([t == "good" or DEFECT_KIND[t] == "local" for t in test.defect_types])


def test_scores_maps_determinism_and_round_trip(embedded_splits, tmp_path):
    train, test = embedded_splits("brick")
    a = PatchCore({}, seed=0).fit(train)
    pa = a.predict(test)
    assert pa.maps.shape == (len(test), test.image_size, test.image_size)
    assert np.isfinite(pa.maps).all() and (pa.scores >= 0).all()
    # the texture category's local defects are easy: min over coreset seeds 0-4 x {AVX2, AVX-512} 0.958; with the
    # colour defects too it is 0.917 (benchmarks/learning_margins.py)
    local = local_defects(test)
    assert roc_auc(test.labels[local], pa.scores[local]) > 0.85
    pb = PatchCore({}, seed=0).fit(train).predict(test)
    np.testing.assert_array_equal(pa.scores, pb.scores)
    a.save(tmp_path / "m.pt")
    pc = PatchCore.load(tmp_path / "m.pt").predict(test)
    np.testing.assert_array_equal(pa.maps, pc.maps)
