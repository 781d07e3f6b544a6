"""config/paper.yaml is merged over config/config.yaml: the default's reduced budgets must not leak into it."""
import fnmatch
import importlib
import re

import pytest
import yaml

from adbench.operations.estimate import ROOT, load_config
from adbench.methods.registry import method_class

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


SOURCES = yaml.safe_load((ROOT / "config" / "paper_sources.yaml").read_text())
#: A source names a repository at a commit, a package at a version, the paper, or (for where a file goes)
#: this suite.
SOURCE = re.compile(r"^(paper\b|suite:|[\w.-]+/[\w.-]+@[0-9a-f]{7}|[\w.-]+/[\w.-]+ main line|[\w.-]+==[\d.]+)")


def _settings(profile: dict) -> dict[str, object]:
    """Every setting of config/paper.yaml that comes from somewhere (flattened to dotted keys)."""
    out = {"run.seeds": profile["run"]["seeds"]}
    out.update({f"backbone.{k}": v for k, v in profile["backbone"].items()})
    for name, entry in profile["datasets"].items():
        out.update({f"datasets.{name}.{k}": entry[k] for k in ("categories", "url", "sha256") if k in entry})
    for name, entry in profile["methods"].items():
        out.update({f"methods.{name}.params.{k}": v for k, v in (entry.get("params") or {}).items()})
        for category, params in (entry.get("per_category") or {}).items():
            out.update({f"methods.{name}.per_category.{category}.{k}": v for k, v in params.items()})
    return out


def test_every_paper_profile_setting_has_one_source_with_the_same_value():
    """Issue 17: a setting of the paper profile traces to what the authors or the baselines' public codes ran;
    a new setting without a row, a row without a setting, or a value changed on one side only, fails."""
    settings = _settings(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    used = set()
    for key, value in settings.items():
        rows = [pattern for pattern in SOURCES if fnmatch.fnmatchcase(key, pattern)]
        assert len(rows) == 1, f"{key}: {len(rows)} rows of config/paper_sources.yaml match ({rows})"
        assert SOURCES[rows[0]]["value"] == value, f"{key} = {value!r}, its source says {SOURCES[rows[0]]['value']!r}"
        used.add(rows[0])
    assert set(SOURCES) == used, f"rows without a setting: {sorted(set(SOURCES) - used)}"
    for pattern, row in SOURCES.items():
        assert SOURCE.match(row["source"]), f"{pattern}: source {row['source']!r} names no repository@commit, package==version or the paper"


def test_the_paper_profile_names_each_sources_repository_in_a_comment():
    text = (ROOT / "config" / "paper.yaml").read_text()
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    for row in SOURCES.values():
        repo = re.match(r"([\w.-]+/[\w.-]+)[@ ]", row["source"])
        if repo:
            assert repo.group(1) in comments, f"config/paper.yaml has no comment naming {repo.group(1)}"
