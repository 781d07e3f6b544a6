"""adbench's sub-packages mirror the DAG's stages, and imports only go down them (adbench/__init__.py):
a module may import from its own stage or a lower one, never from a later stage, and no module imports
itself back through others (a cycle), counting imports made inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adbench import ROOT

STAGES = ["spec", "protocol", "data", "features", "methods", "evaluation", "reporting", "operations", "jobs", "worker"]
PACKAGE = ROOT / "adbench"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of adbench (packages' __init__ included)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The adbench modules ``path`` imports, anywhere in the file (``from adbench import X`` counts as
    ``adbench.X`` when X is a module, else as ``adbench``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("adbench")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adbench"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def _stage(module: str) -> int:
    parts = module.split(".")
    return -1 if len(parts) == 1 else STAGES.index(parts[1])


def test_every_module_lives_in_a_stage():
    for module in MODULES:
        parts = module.split(".")
        assert len(parts) == 1 or parts[1] in STAGES, f"{module} is outside the stages {STAGES}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down_the_stages(module):
    own = _stage(module)
    later = sorted(m for m in _imports(MODULES[module]) if _stage(m) > own)
    assert not later, f"{module} (stage {STAGES[own] if own >= 0 else 'adbench'}) imports a later stage: {later}"


def test_no_import_cycles():
    graph = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    done, path = set(), []

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + [module])}"
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)
