"""The scripts and benchmarks import names of the package inside their functions, where no test run
reaches them without a GPU, the official code or minutes of CPU: every such name must exist (the
reference harness imported a function after it had moved, and failed only when run)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*REPO.glob("scripts/**/*.py"), *REPO.glob("benchmarks/**/*.py")])


def package_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `from entitysam... import name` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "entitysam":
            found += [(node.lineno, node.module, alias.name) for alias in node.names if alias.name != "*"]
    return found


def test_the_scripts_import_package_names():
    assert any(package_imports(p) for p in SCRIPTS), "no script imports the package: the test checks nothing"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_package_name_a_script_imports_exists(path):
    missing = []
    for line, module, name in package_imports(path):
        target = importlib.import_module(module)
        if not hasattr(target, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{path.name}:{line}: from {module} import {name}")
    assert not missing, "\n".join(missing)
