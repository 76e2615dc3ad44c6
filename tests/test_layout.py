"""The package's layout holds: no import cycle (between modules or sub-packages), no module importing another's
private names, and package imports at module top (the one exception loads torch only when asked)."""
from __future__ import annotations

import ast

from wafersage_utils.runner import imports

# (module, imported module): function-level imports kept on purpose, each with its reason.
LAZY_ALLOWED = {("maps.classify", "maps.embedding"): "the CNN (and torch) only when an out-of-fold CNN is asked for"}


def test_no_import_cycle_between_modules():
    assert imports.cycles(imports.import_graph()) == []


def test_no_import_cycle_between_subpackages():
    graph = imports.subpackage_graph(imports.import_graph())
    assert imports.cycles(graph) == [], graph
    assert "training" not in graph["evaluation"]  # evaluation reads answers; it never needs the trainers


def test_cycle_detection_finds_a_cycle():
    assert imports.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert imports.cycles({"a": {"b"}, "b": set()}) == []


def _package_import_nodes():
    modules = imports.package_modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                yield name, tree, node, modules


def test_no_private_names_imported_across_modules():
    bad = [f"{m}: from {'.' * n.level}{n.module or ''} import {a.name}"
           for m, _, n, _ in _package_import_nodes() for a in n.names if a.name.startswith("_")]
    assert bad == []


def test_package_imports_at_module_top():
    lazy = []
    for m, tree, node, modules in _package_import_nodes():
        if node not in tree.body:
            targets = imports.imports_of(ast.Module(body=[node], type_ignores=[]), modules, m)
            lazy += [(m, t) for t in targets if (m, t) not in LAZY_ALLOWED]
    assert lazy == []


def test_code_hash_follows_subpackage_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "maps").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "maps" / "__init__.py").write_text("")
    (root / "maps" / "a.py").write_text("from .b import x\n")
    (root / "maps" / "b.py").write_text("from ..c import y\nx = 1\n")
    (root / "c.py").write_text("y = 2\n")
    (root / "d.py").write_text("z = 3\n")
    graph = imports.import_graph(root)
    assert graph["maps.a"] == {"maps.b"} and graph["maps.b"] == {"c"}
    reach = imports.closure({"maps.a"}, graph)
    assert reach == {"", "maps", "maps.a", "maps.b", "c"}  # d is never reached; packages' __init__ are
