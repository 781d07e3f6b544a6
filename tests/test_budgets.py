"""benchmarks/budgets.py, the command behind the READMEs' budget tables: its numbers are the method's own."""
import importlib.util
from pathlib import Path

import pytest

from adbench.datasets import defect_kinds
from adbench.features import save_split
from adbench.metrics import per_defect, roc_auc
from adbench.registry import method_class

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "budgets.py"
_spec = importlib.util.spec_from_file_location("budgets", _BENCH)
budgets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(budgets)


def test_the_budget_summary_is_the_fits_own_aurocs(embedded_splits, tmp_path):
    train, test = embedded_splits("coins")
    for name, split in (("train", train), ("test", test)):
        save_split(split, tmp_path / "coins" / "lite0_64" / f"{name}.pt", {"category": "coins"})
    summary = budgets.main(["patchcore", '{"coreset_ratio": 0.5}', "--seeds", "3", "--categories", "coins",
                            "--cache", str(tmp_path), "--backbone", "lite0_64", "--out", str(tmp_path / "b.json")])
    pred = method_class("patchcore")({"coreset_ratio": 0.5}, seed=3).fit(train).predict(test)
    local = per_defect(test.labels, test.defect_types, pred.scores, test.masks.numpy(), pred.maps,
                       defect_kinds("embedded"))["defect_kinds"]["local"]
    assert summary["mean_image_auroc"] == pytest.approx(roc_auc(test.labels, pred.scores))
    assert summary["min_local_pixel_auroc"] == pytest.approx(local["pixel_auroc"])
    assert summary["per_seed_mean_image_auroc"] == {3: summary["mean_image_auroc"]}
    assert (tmp_path / "b.json").exists() and summary["seconds_per_category"] > 0
