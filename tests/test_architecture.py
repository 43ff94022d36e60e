"""The package tree is the architecture (docs/ARCHITECTURE.md), checked:

- the layers of ``[tool.importlinter]`` in pyproject.toml hold (``lint-imports``);
- the layer diagram of docs/ARCHITECTURE.md names every package and top-level module of virkit/,
  in the contract's order;
- no module imports itself back through a circle of imports;
- no module imports another package's private (``_``) names;
- no module is longer than about 450 lines;
- every public function, and every public method of a public class, annotates its parameters and
  its return (``__init__`` its parameters).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "virkit"
MAX_LINES = 450  # "about 450": a module past this is split


def _layers() -> list[list[str]]:
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    contract = doc["tool"]["importlinter"]["contracts"][0]
    return [[m.strip() for m in layer.split("|")] for layer in contract["layers"]]


def test_the_import_contract_holds():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0, "lint-imports: a contract is broken"


def test_the_contract_covers_the_tree_and_the_architecture_page_draws_it():
    layered = [m for layer in _layers() for m in layer]
    children = sorted(
        f"virkit.{p.stem}"
        for p in PKG.iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
        or (p.is_dir() and (p / "__init__.py").is_file())
    )
    assert sorted(layered) == children, "pyproject's layers and virkit/'s packages and modules differ"
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    diagram = page.split("```")[1]
    rows = [line.split("  ")[0] for line in diagram.splitlines() if line.strip() and not line.startswith(" ")]
    names = [[re.sub(r"[/]|\.py$", "", n.strip()) for n in row.split("·")] for row in rows]
    assert names == [[m.split(".", 1)[1] for m in layer] for layer in _layers()], (
        "docs/ARCHITECTURE.md's diagram does not draw pyproject's layers in order"
    )


def _graph() -> dict[str, set[str]]:
    import grimp  # installed with import-linter

    g = grimp.build_graph("virkit")
    return {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}


def test_no_import_circles():
    pytest.importorskip("grimp", reason="import-linter is not installed")
    adj = _graph()
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for m in sorted(adj):
        if m not in index:
            visit(m)
    assert not circles, f"import circles: {circles}"


def _package(module: str) -> str:
    """virkit.training.trainer -> virkit.training; virkit.runs -> virkit.runs."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_module_imports_another_packages_private_names():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        here = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("virkit")
                and _package(node.module) != _package(here)
            ):
                bad += [
                    f"{path.relative_to(REPO)}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_no_module_is_much_longer_than_450_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in sorted(PKG.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules past {MAX_LINES} lines (split them): {long}"


def _untyped(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    a = fn.args
    params = a.posonlyargs + a.args + a.kwonlyargs
    if method and params and params[0].arg in ("self", "cls"):
        params = params[1:]
    missing = [p.arg for p in params if p.annotation is None]
    missing += [f"*{v.arg}" for v in (a.vararg,) if v is not None and v.annotation is None]
    missing += [f"**{v.arg}" for v in (a.kwarg,) if v is not None and v.annotation is None]
    if fn.returns is None and fn.name != "__init__":
        missing.append("return")
    return missing


def test_public_functions_are_typed():
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    untyped = []
    for path in sorted(PKG.rglob("*.py")):
        where = path.relative_to(REPO)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, functions) and not node.name.startswith("_"):
                if missing := _untyped(node, method=False):
                    untyped.append(f"{where}: {node.name} ({', '.join(missing)})")
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for m in node.body:
                    if (
                        isinstance(m, functions)
                        and (not m.name.startswith("_") or m.name == "__init__")
                        and (missing := _untyped(m, method=True))
                    ):
                        untyped.append(f"{where}: {node.name}.{m.name} ({', '.join(missing)})")
    assert not untyped, f"{len(untyped)} public functions without annotations:\n" + "\n".join(untyped)
