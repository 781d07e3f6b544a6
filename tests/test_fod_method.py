"""The FOD AnomalyMethod end to end on synthetic cached features with a planted anomaly."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from adbench.evaluation.metrics import roc_auc
from adbench.protocol import Split
from fod.ablations import ABLATIONS
from fod.config import VARIANTS, resolve
from fod.method import FOD
from fod.prior import prior_block
from fod.tokens import feature_tokens, grid_positions
from synthetic import RecordingTracker

SIZE = 64  # pixels; levels at strides 8 and 16 -> 8x8 and 4x4 token grids
CHANNELS = (6, 10)
TINY = {"d_model": [16, 32], "heads": 2, "layers": 2, "epochs": 3, "lr": 1e-3, "progress": False}


def synthetic_split(n_normal: int, n_anomalous: int, seed: int) -> Split:
    """Features = a fixed position-dependent pattern + noise; anomalies add +4 on a block of cells
    (pixels rows 16-31, columns 32-47), which is also their mask."""
    pattern = torch.Generator().manual_seed(1234)
    noise = torch.Generator().manual_seed(seed)
    n = n_normal + n_anomalous
    features = []
    for channels, stride in zip(CHANNELS, (8, 16)):
        cells = SIZE // stride
        base = torch.randn(channels, cells, cells, generator=pattern)
        feats = base + 0.1 * torch.randn(n, channels, cells, cells, generator=noise)
        feats[n_normal:, :, 16 // stride : 32 // stride, 32 // stride : 48 // stride] += 4.0
        features.append(feats)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    masks[n_normal:, 16:32, 32:48] = 1
    labels = np.array([0] * n_normal + [1] * n_anomalous, dtype=np.int64)
    return Split(
        ids=[f"s/{i:03d}" for i in range(n)],
        labels=labels,
        defect_types=["good" if label == 0 else "block" for label in labels],
        images=torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8),
        masks=masks,
        features=features,
        strides=(8, 16),
        backbone="synthetic",
    )


TRAIN = synthetic_split(8, 0, seed=0)
TEST = synthetic_split(3, 3, seed=1)


def test_fit_predict_shapes():
    """Shapes and finiteness only: whether FOD learns is tests/test_learning.py's (this planted +4 block is
    found as well by the untrained transformers: image AUROC 1.0 and pixel AUROC 0.97 at seed 0)."""
    pred = FOD(TINY, seed=0).fit(TRAIN).predict(TEST)
    assert pred.scores.shape == (6,) and pred.maps.shape == (6, SIZE, SIZE)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert pred.extra == {}


def test_short_training_lowers_the_reconstruction_loss_and_logs_every_epoch():
    tracker = RecordingTracker()
    FOD({**TINY, "epochs": 4}, seed=0).fit(TRAIN, tracker=tracker)
    assert [step for _, step in tracker.calls] == [1, 2, 3, 4]
    first, last = tracker.calls[0][0], tracker.calls[-1][0]
    assert set(first) == {"rec", "intra_div", "intra_entropy", "inter_div", "inter_entropy", "loss1", "loss2"}
    assert last["rec"] < 0.8 * first["rec"]


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    method = FOD({**TINY, "monitor_every": 2}, seed=0).fit(TRAIN, monitor=TEST)
    method.save(tmp_path / "fod.pt")
    loaded = FOD.load(tmp_path / "fod.pt")
    before, after = method.predict(TEST), loaded.predict(TEST)
    np.testing.assert_array_equal(before.scores, after.scores)
    np.testing.assert_array_equal(before.maps, after.maps)
    assert before.extra == after.extra and before.extra
    assert loaded.state_dict()["config"] == resolve(TINY | {"monitor_every": 2}).as_dict()


def test_training_is_deterministic_given_the_seed():
    def weights(seed, params=TINY):
        return FOD(params, seed=seed).fit(TRAIN).state_dict()["weights"]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    coreset = {**TINY, "reference": "coreset", "epochs": 1}
    a, b = weights(0, coreset), weights(0, coreset)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_monitor_tracks_the_best_image_and_pixel_auroc_separately():
    tracker = RecordingTracker()
    pred = FOD({**TINY, "epochs": 4, "monitor_every": 2}, seed=0).fit(TRAIN, tracker, monitor=TEST).predict(TEST)
    assert set(pred.extra) == {
        "best_on_test_image_auroc", "best_on_test_pixel_auroc", "best_on_test_image_epoch", "best_on_test_pixel_epoch"
    }
    monitored = {step: m for m, step in tracker.calls if "monitor_image_auroc" in m}
    assert sorted(monitored) == [2, 4]
    for kind in ("image", "pixel"):
        best_epoch = max(monitored, key=lambda s: (monitored[s][f"monitor_{kind}_auroc"], -s))
        assert pred.extra[f"best_on_test_{kind}_epoch"] == best_epoch
        assert pred.extra[f"best_on_test_{kind}_auroc"] == monitored[best_epoch][f"monitor_{kind}_auroc"]
    with pytest.raises(ValueError, match="monitor"):
        FOD({**TINY, "monitor_every": 1}).fit(TRAIN)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_table4_ablation_trains_and_scores(name):
    pred = FOD({**TINY, "epochs": 1, **ABLATIONS[name]}, seed=0).fit(TRAIN).predict(TEST)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert pred.maps.std() > 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_both_variants_train_with_batches(variant):
    pred = FOD({**TINY, "epochs": 1, "batch_size": 3, "variant": variant}, seed=0).fit(TRAIN).predict(TEST)
    assert np.isfinite(pred.scores).all()


def test_params_resolution():
    paper = resolve({"variant": "paper"})
    switches = ("pool", "residual", "prior", "rec", "token_reduction", "corr_score", "level_steps")
    assert tuple(getattr(paper, key) for key in switches) == (
        False, True, "isotropic", "l2_cos", "sum", "one_minus", "joint"
    )
    assert resolve({"variant": "paper", "pool": True}).pool is True  # an explicit switch beats the preset
    official = resolve({})
    assert official.variant == "official" and official.pool and official.d_model == (256, 512)
    bad_params = (
        {"nope": 1},
        {"variant": "x"},
        {"prior": "x"},
        {"coreset_positions": "x"},
        {"entropy": "sum"},  # replaced by token_reduction
        {"intra": False, "inter": False},  # rec_div needs a correlation branch
        {"d_model": [30, 512]},
    )
    for bad in bad_params:
        with pytest.raises(ValueError):
            resolve(bad)


def test_ablation_param_applies_the_table4_row_over_the_budget():
    cfg = resolve({"d_model": [8, 16], "epochs": 2, "ablation": "intra_noent_div"})
    assert (cfg.intra, cfg.inter, cfg.lambda2, cfg.score) == (True, False, 0.0, "div")
    assert cfg.d_model == (8, 16) and cfg.epochs == 2
    with pytest.raises(ValueError, match="unknown FOD ablation"):
        resolve({"ablation": "nosuch"})


def test_paper_token_sum_trains_like_token_mean():
    """``token_reduction: sum`` multiplies each level's loss by its token count; Adam's steps are invariant
    to that up to its epsilon, so the maps agree (the weights differ only where gradients vanish, e.g. the
    key biases, whose gradient is zero)."""
    paper = {**TINY, "epochs": 2, "variant": "paper"}
    summed = FOD(paper, seed=0).fit(TRAIN).predict(TEST)
    mean = FOD({**paper, "token_reduction": "mean"}, seed=0).fit(TRAIN).predict(TEST)
    np.testing.assert_allclose(summed.maps, mean.maps, rtol=0, atol=1e-4 * np.abs(mean.maps).max())


def test_table4_coreset_row_drops_the_source_cells():
    assert resolve({}).coreset_positions == "drop"
    dropped = FOD({**TINY, "epochs": 1, "ablation": "inter_coreset_recdiv"}, seed=0).fit(TRAIN)
    kept = FOD({**TINY, "epochs": 1, "ablation": "inter_coreset_cells_recdiv"}, seed=0).fit(TRAIN)
    for drop, keep, features in zip(dropped.levels, kept.levels, TRAIN.features):
        grid = grid_positions(*features.shape[-2:])
        assert torch.equal(drop.reference, keep.reference)  # the same coreset tokens
        assert torch.equal(drop.reference_pos, grid) and not torch.equal(keep.reference_pos, grid)
        tokens = feature_tokens(features[:1], pool=True)
        assert drop(tokens).inter[0].key_pos is None  # a plain row-major reference sequence
        assert torch.equal(keep(tokens).inter[0].key_pos, keep.reference_pos)


def raw_div_aurocs(method: FOD, split: Split) -> dict[str, float]:
    """The raw-divergence AUROCs recomputed from the attention maps: Div = KL(T||S) + KL(S||T) per token,
    averaged over heads and layers, d (inter) or -d (intra), upsampled and averaged over the levels."""
    branch = "inter" if method.config.inter else "intra"
    maps = torch.zeros(len(split), SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        for level, features in zip(method.levels, split.features):
            divs = []
            for corr in getattr(level(feature_tokens(features, method.config.pool)), branch):
                s, t = corr.attn.double(), prior_block(corr.log_fy, corr.log_fx, corr.key_pos).double()
                divs.append(((t - s) * ((t + 1e-4).log() - (s + 1e-4).log())).sum(-1).mean(1))
            d = torch.stack(divs).mean(0) * (1.0 if branch == "inter" else -1.0)
            grid = d.reshape(len(split), 1, *level.grid)
            maps += F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)[:, 0]
    maps = (maps / len(method.levels)).numpy()
    scores = [gaussian_filter(m, sigma=4).max() for m in maps]
    return {"raw_div_image_auroc": roc_auc(split.labels, scores),
            "raw_div_pixel_auroc": roc_auc(split.masks.numpy().ravel(), maps.ravel())}


@pytest.mark.parametrize("name", ["intra_ent_div", "intra_inter_div"])
def test_div_rows_report_the_raw_divergence_aurocs_beside_the_headline(name):
    method = FOD({**TINY, "epochs": 2, "ablation": name}, seed=0).fit(TRAIN)
    pred = method.predict(TEST)
    expected = raw_div_aurocs(method, TEST)
    assert set(pred.extra) == set(expected)
    for key, value in expected.items():
        assert pred.extra[key] == pytest.approx(value, abs=1e-6), key
    # the headline stays the softmax-normalised factor, a different score
    assert pred.extra["raw_div_pixel_auroc"] != roc_auc(TEST.masks.numpy().ravel(), pred.maps.ravel())


def test_rows_scored_with_rec_report_no_raw_divergence():
    pred = FOD({**TINY, "epochs": 1, "ablation": "intra_ent_recdiv"}, seed=0).fit(TRAIN).predict(TEST)
    assert pred.extra == {}
