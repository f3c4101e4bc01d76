"""The shape of the house (issue 20): no import cycles, `modeling/` pure, one job per file.

Parses the package's imports with `ast` (nothing is imported), so a violation fails here, in
seconds, with the modules named.
"""

from __future__ import annotations

import ast
import re
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
    "checkpoint_scan": {"checkpoint_pickle", "checkpoint_zip"},
    "checkpoint_zip": set(),
    "checkpoint_pickle": {"checkpoint_budget", "checkpoint_values"},
    "checkpoint_values": set(),
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


# The README's "How the code is laid out": a code block of entries, one a line at indent 2 under
# src/entitysam/ (`name.py` or `package/`) or at indent 0 (benchmarks/, scripts/..., docs/), each
# continued by the more indented lines below it.
ENTRY = re.compile(r"^(  )?(\S+?)(?:,|\s{2,}|$)")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def readme_layout(readme: str) -> dict[str, str]:
    """The layout section's entries: name as written (`config.py`, `inference/`, `benchmarks/`,
    names under src/entitysam/ prefixed with it) -> its text, continuation lines included."""
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1].split("\n", 1)[1]
    entries: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        match = ENTRY.match(line)
        if line.strip() and match and not line.startswith("   "):
            top = match.group(2)
            name = f"src/entitysam/{top}" if match.group(1) else top
            entries[name] = line
        elif name is not None:
            entries[name] += "\n" + line
    return entries


def layout_problems(entries: dict[str, str], repo: Path) -> list[str]:
    """What the layout gets wrong about the tree under `repo`: a module (.py, or the viewer's .js)
    of src/entitysam/ or a benchmark its entry does not name, or an entry, `x.py` or `x/` it
    names that does not exist."""
    package = repo / "src" / "entitysam"
    problems = [f"the layout names {name}, which does not exist" for name in entries
                if not (repo / name.rstrip("/")).exists()]
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.js")]):
        rel = path.relative_to(repo).as_posix()
        if path.name == "__init__.py" and path.parent != package:
            continue  # a package's own line covers its __init__
        owner = max((n for n in entries if n.endswith("/") and rel.startswith(n) and n != "src/entitysam/"),
                    key=len, default=None)
        text = entries.get(owner, "") if owner else "\n".join(v for n, v in entries.items() if not n.endswith("/"))
        if owner is None and path.parent != package:
            problems.append(f"{rel}: its package has no line in the layout")
            continue
        below = rel[len(owner):].split("/")[:-1] if owner else []
        wanted = [f"{d}/" for d in below] + [path.name if owner is None else path.stem]
        words = set(WORD.findall(text)) | set(re.findall(r"\S+?/", text)) | set(re.findall(r"[\w.]+\.py", text))
        missing = [w for w in wanted if w not in words]
        if missing:
            problems.append(f"{rel}: the layout's {owner or 'src/entitysam/'} line does not name {', '.join(missing)}")
    for bench in sorted((repo / "benchmarks").glob("[!_]*.py")):
        if bench.name not in entries.get("benchmarks/", ""):
            problems.append(f"benchmarks/{bench.name}: not named in the layout's benchmarks/ line")
    for name, text in entries.items():
        folder = repo / name if name.endswith("/") else repo / "src" / "entitysam"
        problems += [f"the layout's {name} line names {f}, which does not exist"
                     for f in re.findall(r"\b\w+\.py\b", text)
                     if not any(folder.rglob(f)) and not (name == f or name.endswith("/" + f))]
    return problems


def test_the_readme_layout_names_every_module_and_only_modules_that_exist():
    problems = layout_problems(readme_layout((REPO / "README.md").read_text(encoding="utf-8")), REPO)
    assert not problems, "README.md, How the code is laid out:\n" + "\n".join(problems)


def test_the_layout_check_finds_a_module_left_out_and_one_that_is_gone(tmp_path):
    (tmp_path / "src" / "entitysam" / "io").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    for name in ("__init__.py", "errors.py", "io/__init__.py", "io/atomic.py", "io/file_lock.py"):
        (tmp_path / "src" / "entitysam" / name).write_text("")
    readme = ("## How the code is laid out\n\n```\nsrc/entitysam/\n  __init__.py   the API\n"
              "  errors.py     errors\n  hub.py        gone\n  io/           atomic (atomic writes),\n"
              "                overlay.py\nbenchmarks/     none\n```\n\n## Next\n")
    problems = layout_problems(readme_layout(readme), tmp_path)
    assert problems == ["the layout names src/entitysam/hub.py, which does not exist",
                        "src/entitysam/io/file_lock.py: the layout's src/entitysam/io/ line does not name file_lock",
                        "the layout's src/entitysam/io/ line names overlay.py, which does not exist"]
