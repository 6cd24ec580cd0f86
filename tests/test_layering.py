"""The package's import layering, read from the source with ``ast`` (imports at module level and inside
functions alike, relative imports resolved):

    hmpe.utils (0) < hmpe.data, hmpe.models (1) < hmpe.viz (2) < hmpe.engine (3) < hmpe.api (4)
    < hmpe.explore, hmpe.cli, hmpe.__main__, hmpe.integrations (5)
    < hmpe (the package __init__, which exposes Detector lazily)

No module imports a higher layer; packages of one layer may import each other one way only; the module
import graph has no cycle. Importing the root package ``hmpe`` (``__version__``) is allowed from anywhere:
every ``import hmpe.x`` runs it anyway. For cycles, a package ``__init__`` importing its own submodules is
not an edge (Python runs the submodule after the ``__init__`` started); a submodule importing its package's
``__init__`` is.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "hmpe"

LAYERS = {"hmpe.utils": 0, "hmpe.data": 1, "hmpe.models": 1, "hmpe.viz": 2, "hmpe.engine": 3, "hmpe.api": 4,
          "hmpe.explore": 5, "hmpe.cli": 5, "hmpe.__main__": 5, "hmpe": 6,
          "hmpe.integrations": 5}  # adapters for other libraries (SAHI): like the CLI, they drive a Detector
# the one upward import: Detector.explore() starts the optional front end (extra hmpe[explore]) on use, a
# function-level import; nothing in hmpe.explore runs when the API is imported
ALLOWED_UPWARD = {("hmpe.api", "hmpe.explore"): "Detector.explore() starts the explorer on use"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.src} imports {self.dst}"


def module_names(root: Path) -> dict[str, Path]:
    """``hmpe.engine.trainer`` -> its file; packages by their ``__init__.py`` (``hmpe.engine``)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of the package that ``name`` (a module or a name inside one) refers to."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_edges(root: Path) -> list[Edge]:
    """Every import of a package module, anywhere in each module (top level, functions, classes)."""
    modules = module_names(root)
    edges = []
    for mod, f in modules.items():
        is_pkg = f.name == "__init__.py"
        rel = str(f.relative_to(root.parent))
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # ``from pkg import name``: the submodule pkg.name when there is one, else pkg itself
                names = [f"{prefix}.{a.name}" for a in node.names] if prefix else []
            for n in names:
                dst = _target(n, modules)
                if dst is not None and dst != mod:
                    edges.append(Edge(mod, dst, rel, node.lineno))
    return edges


def layer(mod: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if mod == prefix or mod.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{mod}: not in any layer of LAYERS; add its package to tests/test_layering.py")


def upward_imports(edges: list[Edge]) -> list[str]:
    bad = []
    for e in edges:
        if e.dst == "hmpe" or (e.src, e.dst) in ALLOWED_UPWARD:
            continue  # the root package: __version__ (see the module docstring); the explorer's entry point
        (sp, sl), (dp, dl) = layer(e.src), layer(e.dst)
        if dl > sl:
            bad.append(f"{e} ({sp} is layer {sl}, {dp} is layer {dl}: an upward import)")
    return bad


def same_layer_both_ways(edges: list[Edge]) -> list[str]:
    """Packages of one layer importing each other in both directions (a package-level cycle)."""
    first: dict[tuple[str, str], Edge] = {}
    for e in edges:
        (sp, sl), (dp, dl) = layer(e.src), layer(e.dst)
        if sp != dp and sl == dl:
            first.setdefault((sp, dp), e)
    return [f"{sp} and {dp} import each other: {e} and {first[(dp, sp)]}"
            for (sp, dp), e in sorted(first.items()) if (dp, sp) in first and sp < dp]


def cycle_edges(edges: list[Edge]) -> list[Edge]:
    """Edges that count for cycles: not a package ``__init__`` importing its own submodules."""
    return [e for e in edges if not e.dst.startswith(e.src + ".")]


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component of the module graph with a cycle."""
    graph: dict[str, list[Edge]] = {}
    for e in cycle_edges(edges):
        graph.setdefault(e.src, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for e in graph.get(v, []):
            if e.dst not in index:
                visit(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in stack:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(sorted(c)[0], c, graph) for c in comps]


def _one_cycle(start: str, comp: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest path from ``start`` back to itself inside its component (breadth first)."""
    prev: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in graph.get(v, []):
                if e.dst not in comp or e.dst in prev:
                    continue
                prev[e.dst] = e
                if e.dst == start:
                    path, w = [], start
                    while True:
                        path.append(prev[w])
                        w = prev[w].src
                        if w == start:
                            return path[::-1]
                nxt.append(e.dst)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def _describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].src] + [e.dst for e in cycle]) + "\n    " + "\n    ".join(map(str, cycle))


# ---------------------------------------------------------------------------------------------- the package
def test_no_upward_import():
    bad = upward_imports(import_edges(ROOT))
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_same_layer_packages_import_one_way():
    bad = same_layer_both_ways(import_edges(ROOT))
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_edges(ROOT))
    assert not found, "import cycles:\n" + "\n".join(map(_describe, found))


# ---------------------------------------------------------------------------------------------- the checker
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "hmpe"
    for name, text in files.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def test_checker_finds_lazy_relative_upward_imports_and_cycles(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "def __getattr__(n):\n    from hmpe.api import Detector\n    return Detector\n",
        "api.py": "from hmpe.engine import trainer\n",
        "engine/__init__.py": "from . import trainer\n",
        "engine/trainer.py": "import hmpe\nfrom ..utils.runtime import seed\n",
        "utils/__init__.py": "",
        "utils/runtime.py": "def seed():\n    from hmpe.api import Detector\n",  # lazy and upward
        "data/__init__.py": "",
        "data/a.py": "from hmpe.data import b\n",
        "data/b.py": "def f():\n    from .a import g\n",  # lazy, relative: a cycle with data.a
        "models/__init__.py": "",
        "models/m.py": "from hmpe.data.a import x\n",
    })
    edges = import_edges(root)
    assert Edge("hmpe.engine.trainer", "hmpe.utils.runtime", "hmpe/engine/trainer.py", 2) in edges
    assert Edge("hmpe.data.b", "hmpe.data.a", "hmpe/data/b.py", 2) in edges
    bad = upward_imports(edges)
    assert bad == ["hmpe/utils/runtime.py:2: hmpe.utils.runtime imports hmpe.api "
                   "(hmpe.utils is layer 0, hmpe.api is layer 4: an upward import)"]
    found = cycles(edges)
    names = sorted(sorted({e.src for e in c}) for c in found)
    # engine/__init__ -> trainer is no edge; utils.runtime -> api -> engine -> ... -> utils.runtime is one
    assert ["hmpe.data.a", "hmpe.data.b"] in names
    assert any("hmpe.utils.runtime" in c for c in names)
    assert "hmpe/data/b.py:2: hmpe.data.b imports hmpe.data.a" in "\n".join(map(_describe, found))
    assert same_layer_both_ways(edges) == []
    (root / "data" / "c.py").write_text("import hmpe.models.m\n")
    assert same_layer_both_ways(import_edges(root))[0].startswith("hmpe.data and hmpe.models import each other")
