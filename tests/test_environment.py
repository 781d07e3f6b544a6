"""environment.yml and pyproject.toml must pin the same packages at the same versions."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _normalise(spec: str) -> str:
    name, _, version = spec.partition("==")
    return f"{name.strip().lower().replace('_', '-')}=={version.strip()}"


def test_environment_yml_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    from_env = {_normalise(s) for s in pip if not s.startswith("-e")}
    assert from_env == {_normalise(s) for s in project}
    assert all("==" in s for s in project), "every dependency is pinned exactly"


def test_torch_pair_is_pinned_together():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in project and "torchvision==0.29.1" in project


def test_workflow_conda_env_is_the_top_level_environment():
    assert (ROOT / "workflow" / "envs" / "suite.yaml").resolve() == (ROOT / "environment.yml").resolve()
