"""config/paper.yaml is merged over config/config.yaml: the default's reduced budgets must not leak into it."""
import importlib

import pytest

from adbench.estimate import ROOT, load_config
from adbench.registry import method_class

PAPER = load_config(ROOT / "config" / "paper.yaml")
BUDGET_KEYS = ("lr", "epochs", "meta_epochs", "sub_epochs", "batch_size", "repeat")


@pytest.mark.parametrize("method", [m for m in PAPER["run"]["methods"] if PAPER["methods"][m]["impl"] != "fod"])
def test_the_paper_profile_trains_every_baseline_with_the_public_budget(method):
    entry = PAPER["methods"][method]
    public = importlib.import_module(f"baselines.{entry['impl']}").PAPER_PARAMS
    resolved = method_class(entry["impl"])(entry.get("params") or {}).params
    for key in BUDGET_KEYS:
        if key in public:
            assert resolved[key] == public[key], f"{method}.{key}: {resolved[key]} (public code: {public[key]})"


@pytest.mark.parametrize("method", [m for m in PAPER["run"]["methods"] if PAPER["methods"][m]["impl"] == "fod"])
def test_the_paper_profile_trains_fod_at_the_papers_size_and_budget(method):
    config = method_class("fod").check_params(PAPER["methods"][method]["params"])
    assert (config["lr"], config["epochs"], config["batch_size"]) == (1e-4, 100, 1)
    assert (tuple(config["d_model"]), config["layers"], config["heads"]) == ((256, 512), 3, 8)
