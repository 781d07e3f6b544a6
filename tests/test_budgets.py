"""benchmarks/budgets.py, the command behind the READMEs' budget tables: its numbers are the method's own, on
the validation split, at every size asked for, and it never generates or reads a test split."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from adbench.data.datasets import defect_kinds
from adbench.data.embedded import EmbeddedConfig, generate_category
from adbench.features.cache import extract_split
from adbench.evaluation.metrics import per_defect, roc_auc
from adbench.protocol import CollapseError, Prediction
from adbench.methods.registry import method_class

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "budgets.py"
_spec = importlib.util.spec_from_file_location("budgets", _BENCH)
budgets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budgets)

# every generator key, so the config's values do not matter; validation sizes default to the test ones
GEN = {"seed": 2, "size": 64, "n_train": 8, "n_test_good": 4, "n_test_anomalous": 6}
SIZES = (32, 64)


def _run(work, weights_dir, *extra):
    return budgets.main(["patchcore", '{"coreset_ratio": 0.5}', "--seeds", "3", "--categories", "coins",
                         "--generator", json.dumps(GEN), "--work", str(work), "--weights-dir", str(weights_dir),
                         *extra])


def test_the_budget_summary_is_the_fits_own_aurocs_on_validation(tmp_path, weights_dir, backbone):
    work = tmp_path / "cache"
    out = tmp_path / "b.json"
    result = _run(work, weights_dir, "--image-size", *map(str, SIZES), "--out", str(out))

    # nothing of a test split was generated or extracted: budgets.py could not have read one
    files = [p.relative_to(work) for p in work.rglob("*")]
    assert files and not [p for p in files if p.name in ("test", "ground_truth", "test.pt")], files
    assert {p.name for p in files if p.suffix == ".pt"} == {"train.pt", "validation.pt"}

    # the same numbers from an independent generation (all splits) and fit, scored on its validation split
    root = tmp_path / "independent"
    generate_category(root, "coins", EmbeddedConfig(**GEN))
    assert result["split"] == "validation" and set(result["sizes"]) == set(SIZES)
    for size in SIZES:
        train, val = (extract_split("embedded", root, "coins", s, backbone, size, progress=False)
                      for s in ("train", "validation"))
        assert all(i.startswith("validation/") for i in val.ids) and val.labels.sum() == 6
        pred = method_class("patchcore")({"coreset_ratio": 0.5}, seed=3).fit(train).predict(val)
        local = per_defect(val.labels, val.defect_types, pred.scores, val.masks.numpy(), pred.maps,
                           defect_kinds("embedded"))["defect_kinds"]["local"]
        summary = result["sizes"][size]
        assert summary["mean_image_auroc"] == pytest.approx(roc_auc(val.labels, pred.scores))
        assert summary["min_local_pixel_auroc"] == pytest.approx(local["pixel_auroc"])
        assert summary["per_seed_mean_image_auroc"] == {3: summary["mean_image_auroc"]}
        assert summary["seconds_per_category"] > 0 and summary["collapsed"] is False
    assert [(r["image_size"], r["seed"]) for r in result["rows"]] == [(32, 3), (64, 3)]
    assert json.loads(out.read_text())["sizes"]["64"]["mean_image_auroc"] == result["sizes"][64]["mean_image_auroc"]

    # a second run reads the cache (same numbers, files untouched) ...
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.pt")}
    again = _run(work, weights_dir, "--image-size", "64")
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.pt")} == stamps
    assert again["sizes"][64]["mean_image_auroc"] == result["sizes"][64]["mean_image_auroc"]
    # ... and refuses a cache that holds a test split
    (next(work.glob("gen-*")) / "data" / "coins" / "test").mkdir()
    with pytest.raises(RuntimeError, match="no test split"):
        _run(work, weights_dir, "--image-size", "48")


def test_constant_scores_or_maps_are_reported_as_collapsed(tmp_path, weights_dir, monkeypatch):
    class Constant:  # a collapsed model: one value for every image and every pixel
        def fit(self, train):
            return self

        def predict(self, split):
            n, size = len(split), split.image_size
            return Prediction(np.zeros(n), np.zeros((n, size, size), np.float32))

    class Raises(Constant):  # a method that notices its own collapse during fit
        def fit(self, train):
            raise CollapseError("its embedding collapsed", "lower lambda", "fake")

    for model, message in ((Constant(), None), (Raises(), "fake: its embedding collapsed")):
        monkeypatch.setattr(budgets, "build_method", lambda cfg, weights: model)
        result = _run(tmp_path, weights_dir, "--image-size", "32")
        summary, row = result["sizes"][32], result["rows"][0]
        assert summary["collapsed"] is True and summary["collapsed_cells"] == ["coins/seed3"]
        assert summary["mean_image_auroc"] == 0.5 and summary["min_local_pixel_auroc"] == 0.5
        assert row["constant_scores"] and row["constant_maps"]
        assert row["collapse"] == message or row["collapse"].startswith(message)


def test_monitoring_is_refused(tmp_path, weights_dir):
    with pytest.raises(SystemExit):
        budgets.main(["fod", '{"monitor_every": 1}', "--work", str(tmp_path), "--weights-dir", str(weights_dir)])
    assert not list(tmp_path.iterdir())
