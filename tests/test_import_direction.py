"""Imports go one way only: recipes -> tasks -> backbone -> kernels; recipes never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["kernels", "backbone", "tasks", "recipes"]  # each may import only the ones before it


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down_the_stack(package):
    forbidden = set(LAYERS[LAYERS.index(package) + 1 :])
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imported_top_modules(path):
            top = name.split(".")[0]
            if top in forbidden:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
            if package == "backbone" and top == "tasks":
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_recipes_do_not_import_each_other():
    recipes = {p.stem for p in (ROOT / "recipes").glob("*.py") if p.stem != "__init__"}
    offenders = [
        f"{path.name} imports {name}"
        for path in sorted((ROOT / "recipes").glob("*.py"))
        for name in _imported_top_modules(path)
        if name.startswith("recipes.") and name.split(".")[1] in recipes
    ]
    assert not offenders, "\n".join(offenders)
