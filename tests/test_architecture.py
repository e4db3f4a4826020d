"""The house's layers (../shared/DESIGN.md, "Layers of the house"): nothing imports from a layer above
it, not even inside a function. Every ``import``/``from ... import`` of ``simfoe`` anywhere in a module
(ast.walk reaches function bodies) must point at the same layer or below."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "simfoe"

# Rank of each top-level unit of the package: a unit may import its own rank or lower ones.
RANKS: dict[str, int] = {
    # plain utilities every layer uses
    "__init__": 0, "errors": 0, "outputs": 0, "paths": 0, "inputs": 0, "registry": 0, "limits": 0,
    "timeline": 0,
    "specs": 1, "workloads": 1,  # specs at the bottom; workloads make request tables from specs' words
    "provenance": 2, "fabric": 2,
    "costs": 3,
    "forward": 4,
    "serving": 5, "api": 5,  # api: the forward pass's public functions
    "pipelines": 6, "calibration": 6,
    "sweep": 7, "planner": 7, "whatif": 7, "compare": 7, "presets": 7,
    "cli": 8, "__main__": 8,
}


def _unit(module: str) -> str:
    """'simfoe.costs.kernels' -> 'costs'; 'simfoe' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package_dir: Path = PACKAGE) -> list[tuple[str, int]]:
    """(imported simfoe module, line) for every import in the file, relative ones resolved."""
    mod = _module_name(path, package_dir)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            found.append((target or "", node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
    return [(t, line) for t, line in found if t == "simfoe" or t.startswith("simfoe.")]


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_rank():
    units = {_unit(_module_name(f)) for f in FILES}
    assert units - set(RANKS) == set(), "give each new top-level module or package a rank in RANKS"


def _upward(path: Path, package_dir: Path = PACKAGE) -> list[str]:
    own = _unit(_module_name(path, package_dir))
    return [f"line {line}: {target} (rank {RANKS.get(_unit(target))} > {own}'s {RANKS[own]})"
            for target, line in _imports(path, package_dir) if RANKS.get(_unit(target), -1) > RANKS[own]]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_import_from_a_layer_above(path):
    upward = _upward(path)
    assert not upward, "; ".join(upward)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "simfoe"
    (pkg / "costs").mkdir(parents=True)
    planted = pkg / "costs" / "planted.py"
    planted.write_text("from .kernels import gemm\n\ndef f():\n    from ..cli import main\n    return main\n")
    assert _upward(planted, pkg) == ["line 4: simfoe.cli (rank 8 > costs's 3)"]
