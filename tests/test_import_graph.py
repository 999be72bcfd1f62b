"""The astrojax package's import graph has no cycles.

Every module of the package is parsed with ``ast`` (nothing is imported); every import
statement anywhere in a module -- top level, inside functions and methods, under ``if``
or ``try`` -- adds an edge to each astrojax module it names: ``import astrojax.x.y``,
``from astrojax.x import y`` (``y`` a submodule or a name of ``x``), and relative imports
(``from . import y``, ``from ..x import z``) resolved against the importing module's
package. Importing a submodule also imports its parent packages, so ``a.b.c`` adds edges
to ``a.b`` and ``a`` as well (a package's ``__init__`` runs first).
"""

from __future__ import annotations

import ast
import os
import sys

import pytest

import astrojax

ROOT = os.path.dirname(os.path.abspath(astrojax.__file__))
PKG = "astrojax"


def modules() -> dict[str, str]:
    """``{dotted module name: file path}`` of every module of the package."""
    out = {}
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x != "__pycache__" and os.path.isfile(os.path.join(d, x, "__init__.py"))]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([PKG, *rel])] = os.path.join(d, f)
    return out


def _targets(name: str, known: set[str]) -> set[str]:
    """The package modules a dotted name makes Python import: the longest known prefix
    and its parent packages."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        mod = ".".join(parts[:n])
        if mod in known:
            return {".".join(parts[:k]) for k in range(1, n + 1)} & known
    return set()


def imports_of(module: str, path: str, known: set[str]) -> set[str]:
    """Every package module ``module`` imports (anywhere in its source)."""
    is_pkg = os.path.basename(path) == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out |= _targets(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                base = ".".join(base)
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module or ""
            if not (src == PKG or src.startswith(PKG + ".")):
                continue
            out |= _targets(src, known)
            for alias in node.names:  # `from pkg import submodule`
                out |= _targets(f"{src}.{alias.name}", known) if f"{src}.{alias.name}" in known else set()
    out.discard(module)
    # a module's own parent packages are already imported when it runs: not a dependency
    return {t for t in out if not (module == t or module.startswith(t + "."))}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``g`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {n: WHITE for n in g}
    for start in sorted(g):
        if color[start] != WHITE:
            continue
        stack = [(start, iter(sorted(g[start])))]
        path = [start]
        color[start] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = BLACK
                stack.pop()
                path.pop()
            elif color.get(nxt, BLACK) == GREY:
                return path[path.index(nxt):] + [nxt]
            elif color.get(nxt) == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                stack.append((nxt, iter(sorted(g[nxt]))))
    return None


def test_the_graph_sees_every_kind_of_import():
    """The parser finds top-level, function-level, relative and absolute imports (checked
    on modules known to use each), so a cycle through any of them would be seen."""
    g = graph()
    assert len(g) > 30 and "astrojax.train.app" in g and "astrojax.cli" in g
    assert "astrojax.train.config" in g["astrojax.train.app"]     # `from .config import ...` (top level)
    assert "astrojax.train.parallel" in g["astrojax.train.loop"]  # `from .parallel import ...` inside a function
    assert "astrojax._config" in g["astrojax.reproduce"]          # `from ._config import ...`
    assert "astrojax.dynamics" in g["astrojax.train.config"]      # `from ..dynamics import ...` inside a function


def test_finder_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    if cycle:
        print("import cycle: " + " -> ".join(cycle), file=sys.stderr)
        pytest.fail("import cycle in the astrojax package: " + " -> ".join(cycle))
