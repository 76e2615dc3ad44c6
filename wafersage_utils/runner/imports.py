"""The package's own import graph, read from source: which modules a notebook or a module depends on.

The pipeline fingerprints a stage by the package code it can reach (a change elsewhere leaves its cached
results alone); a test holds the graph free of cycles, between modules and between sub-packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "wafersage_utils"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
WHOLE_PACKAGE = "*"


def package_modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every module by dotted name inside the package ('maps.facts'; a sub-package by its own name, 'maps';
    the package's __init__ as '')."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _package_of(module: str, path: Path) -> list[str]:
    parts = module.split(".") if module else []
    return parts if path.name == "__init__.py" else parts[:-1]


def imports_of(tree: ast.AST, modules: dict[str, Path], module: str | None = None) -> set[str]:
    """Package modules a parsed source imports anywhere (function-level imports included). `module` is the
    importing module's dotted name (None for code outside the package, such as a notebook cell)."""
    found: set[str] = set()

    def add(target: str, names: list[str]) -> None:
        for n in names:
            sub = f"{target}.{n}" if target else n
            if sub in modules:
                found.add(sub)
            elif target in modules:
                found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PACKAGE:
                    found.add(WHOLE_PACKAGE)
                elif a.name.startswith(PACKAGE + "."):
                    found.add(a.name.partition(".")[2])
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level and module is not None:  # relative, inside the package
                base = _package_of(module, modules[module])
                base = base[:len(base) - (node.level - 1)]
                add(".".join(base + ([node.module] if node.module else [])), names)
            elif node.module == PACKAGE:
                add("", names)
            elif (node.module or "").startswith(PACKAGE + "."):
                add(node.module.partition(".")[2], names)
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """{module: package modules it imports}, for every module of the package."""
    modules = package_modules(root)
    return {m: imports_of(ast.parse(p.read_text()), modules, m) - {m} for m, p in modules.items()}


def closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    """The modules reachable from `start` (themselves included), with the __init__ of every package on the way:
    importing `maps.facts` runs `maps/__init__.py` too."""
    if WHOLE_PACKAGE in start:
        return set(graph)
    seen: set[str] = set()
    todo = set(start)
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        parts = m.split(".")
        todo |= {".".join(parts[:i]) for i in range(len(parts))} | graph[m]
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, each as the path that closes it (empty when the graph is a DAG)."""
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                found.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between sub-packages ('maps', 'corpus', ...; top-level modules stand for themselves)."""
    def top(m: str) -> str:
        return m.split(".")[0]
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if m:
            out.setdefault(top(m), set()).update(top(d) for d in deps if d and top(d) != top(m))
    return out
