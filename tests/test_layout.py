"""The shape of the house (issue 20): no import cycles, `modeling/` pure, one job per file.

Parses the package's imports with `ast` (nothing is imported), so a violation fails here, in
seconds, with the modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "entitysam"
MAX_LINES = 420  # "no file over ~400 lines"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import of a package module in `path`, lazy
    imports inside functions included; `from . import x` resolves to the submodule x when it is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "entitysam"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "entitysam":
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found += [(s, [], node.lineno) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _, _ in imported(path, name, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). A package's
    `__init__` importing its own submodules is not a cycle unless a submodule imports it back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_modeling_imports_nothing_above_it():
    allowed = ("entitysam.modeling", "entitysam.config")
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if m.startswith("entitysam.modeling")
           for t in targets if not t.startswith(allowed)]
    assert not bad, bad


# What each part of the package may import (besides itself and the small shared modules errors,
# argtypes, jsonio, config, sharding, interrupts, regular_file): the layers of docs/architecture.md,
# lowest first.
SHARED = {"errors", "argtypes", "jsonio", "config", "sharding", "interrupts", "regular_file"}
ALLOWED = {
    "modeling": set(),
    "io": set(),
    "inference": {"modeling"},
    "data": {"io"},
    "checkpoints": {"modeling", "checkpoint_scan", "checkpoint_file"},
    "checkpoint_scan": {"checkpoint_pickle"},
    "checkpoint_pickle": {"checkpoint_budget"},
    "checkpoint_budget": set(),
    "checkpoint_file": set(),
    "hub": set(),
    "train": {"modeling", "checkpoints", "io", "data"},
    "pipeline": {"modeling", "checkpoints", "hub", "inference", "io", "data", "eval", "entitysam"},
    "eval": {"inference", "io", "pipeline"},
    "review": {"io", "pipeline", "data", "entitysam"},
    "distributed": {"pipeline", "inference", "io", "data", "eval", "checkpoints", "hub", "entitysam"},
    "cli": {"checkpoints", "hub", "inference", "io", "data", "eval", "pipeline", "entitysam", "review", "distributed"},
}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "entitysam"


def test_each_part_imports_only_the_layers_below_it():
    bad = sorted({f"{m} imports {t}" for m, targets in import_graph().items() for t in targets
                  if part(m) in ALLOWED and part(t) != part(m) and part(t) not in SHARED
                  and part(t) not in ALLOWED[part(m)]})
    assert not bad, "\n".join(bad)


def test_no_private_name_imported_across_modules():
    mods = modules()
    known = set(mods)
    bad = []
    for name, path in mods.items():
        for target, names, line in imported(path, name, known):
            bad += [f"{path.relative_to(REPO)}:{line} imports {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_no_source_file_over_the_line_limit():
    # the package's Python and the viewer's front end; also the tools beside it (benchmarks, the reference harness)
    files = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.js"), *(REPO / "benchmarks").glob("*.py"),
             *(REPO / "scripts").rglob("*.py")]
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert len(files) > 100 and not long, long


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected
