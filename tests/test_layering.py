"""The package's import layering, read from the source with ``ast`` (imports at module level and inside
functions alike, relative imports resolved):

    hmpe.utils (0) < hmpe.data, hmpe.models (1) < hmpe.viz (2) < hmpe.engine (3) < hmpe.api (4)
    < hmpe.explore, hmpe.cli, hmpe.__main__, hmpe.integrations (5)
    < hmpe (the package __init__, which exposes Detector lazily)

No module imports a higher layer; packages of one layer may import each other one way only; the module
import graph has no cycle. Importing the root package ``hmpe`` (``__version__``) is allowed from anywhere:
every ``import hmpe.x`` runs it anyway. For cycles, a module importing a package it sits in is not an edge
(Python imported that package before the module, so the import runs nothing); a package ``__init__``
importing its own submodules is (importing the package runs them), and so is every other import except
those under ``if TYPE_CHECKING:`` (never run).

Inside ``hmpe.models`` and ``hmpe.engine`` the modules and folders have ranks (``ROLES``): a module imports
only modules of a lower rank, so the RT-DETR blocks (``hmpe.models.rtdetr``) import none of the paper's
four parts, the parts do not import each other, and training and deployment share evaluation but not
each other.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1] / "hmpe"

LAYERS = {"hmpe.utils": 0, "hmpe.data": 1, "hmpe.models": 1, "hmpe.viz": 2, "hmpe.engine": 3, "hmpe.api": 4,
          "hmpe.explore": 5, "hmpe.cli": 5, "hmpe.__main__": 5, "hmpe": 6,
          "hmpe.integrations": 5}  # adapters for other libraries (SAHI): like the CLI, they drive a Detector
# the one upward import: Detector.explore() starts the optional front end (extra hmpe[explore]) on use, a
# function-level import; nothing in hmpe.explore runs when the API is imported
ALLOWED_UPWARD = {("hmpe.api", "hmpe.explore"): "Detector.explore() starts the explorer on use"}

# the paper's contributions, each a module or folder of hmpe.models by its name (docs/method.md)
PAPER_PARTS = {"heatmap": "HeatMap Embedding: heatmap-guided position encoding, sec. 3.1",
               "mohfe": "MOHFE: multi-scale ObjectBox-heatmap fusion encoder, sec. 3.2.1",
               "hidq": "HIDQ: heatmap-induced decoder queries, sec. 3.2.2",
               "lsconv": "LSConv: Linear-Snake convolution, sec. 3.3"}
# package -> its modules and folders by rank: a module imports only modules of a lower rank of its package
ROLES = {
    "hmpe.models": {"rtdetr": 0,  # the RT-DETR baseline's blocks
                    **dict.fromkeys(PAPER_PARTS, 1),  # plugged into the baseline's hooks by the assembly
                    "detector": 2},  # the assembly from a config
    "hmpe.engine": {"checkpoint": 0, "eval": 0,  # weights in and out; evaluation and inference
                    "train": 1, "deploy": 1},  # both evaluate (validation; INT8 accuracy)
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int
    typing_only: bool = False  # under ``if TYPE_CHECKING:``: counts for the layering, never runs (no cycle)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.src} imports {self.dst}"


def module_names(root: Path) -> dict[str, Path]:
    """``hmpe.engine.train.trainer`` -> its file; packages by their ``__init__.py`` (``hmpe.engine.train``)."""
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


def _type_checking_imports(tree: ast.AST) -> set[int]:
    """The ids of the import nodes inside ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) blocks."""
    out = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt)
                       if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def import_edges(root: Path) -> list[Edge]:
    """Every import of a package module, anywhere in each module (top level, functions, classes)."""
    modules = module_names(root)
    edges = []
    for mod, f in modules.items():
        is_pkg = f.name == "__init__.py"
        rel = str(f.relative_to(root.parent))
        tree = ast.parse(f.read_text(), str(f))
        typing_only = _type_checking_imports(tree)
        for node in ast.walk(tree):
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
                    edges.append(Edge(mod, dst, rel, node.lineno, id(node) in typing_only))
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


def role(mod: str) -> tuple[str, str, int] | None:
    """(package, the module or folder of it that ``mod`` is or sits in, that one's rank) for a module inside a
    package of ``ROLES``; None elsewhere and for the package's own ``__init__``."""
    for pkg, ranks in ROLES.items():
        if mod.startswith(pkg + "."):
            child = mod[len(pkg) + 1:].split(".")[0]
            if child not in ranks:
                raise AssertionError(f"{mod}: {child!r} has no rank in ROLES[{pkg!r}] (tests/test_layering.py)")
            return pkg, child, ranks[child]
    return None


def against_roles(edges: list[Edge]) -> list[str]:
    """Imports inside a package of ``ROLES`` from one of its modules or folders to another of the same or a
    higher rank."""
    bad = []
    for e in edges:
        s, d = role(e.src), role(e.dst)
        if s is not None and d is not None and s[0] == d[0] and s[1] != d[1] and d[2] >= s[2]:
            bad.append(f"{e} (in {s[0]}, {s[1]} has rank {s[2]} and {d[1]} rank {d[2]}: imports go to a lower rank)")
    return bad


def cycle_edges(edges: list[Edge]) -> list[Edge]:
    """Edges that count for cycles: not a module importing a package it sits in (imported before it), not an
    import under ``if TYPE_CHECKING:``."""
    return [e for e in edges if not e.src.startswith(e.dst + ".") and not e.typing_only]


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


def test_imports_follow_the_roles():
    bad = against_roles(import_edges(ROOT))
    assert not bad, "imports against the ranks of ROLES:\n" + "\n".join(bad)


def test_models_show_the_paper_parts_by_name():
    modules = module_names(ROOT)
    missing = [f"hmpe.models.{name} ({what})" for name, what in PAPER_PARTS.items()
               if f"hmpe.models.{name}" not in modules]
    assert not missing, "the paper's parts, each by its name in hmpe/models/:\n" + "\n".join(missing)
    # the baseline apart in a folder of its own, the assembly beside the parts, nothing else at the top
    top = {m.split(".")[2] for m in modules if m.startswith("hmpe.models.")}
    assert top == set(ROLES["hmpe.models"]), f"hmpe/models/ holds {sorted(top)}; give new ones a rank in ROLES"


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
        "api.py": "from hmpe.engine import loop\n",
        "engine/__init__.py": "from . import loop\n",
        "engine/loop.py": "import hmpe\nfrom ..utils.runtime import seed\n",
        "utils/__init__.py": "",
        "utils/runtime.py": "def seed():\n    from hmpe.api import Detector\n",  # lazy and upward
        "data/__init__.py": "",
        "data/a.py": "from hmpe.data import b\n",
        "data/b.py": "def f():\n    from .a import g\n",  # lazy, relative: a cycle with data.a
        "models/__init__.py": "",
        "models/m.py": "from hmpe.data.a import x\n",
    })
    edges = import_edges(root)
    assert Edge("hmpe.engine.loop", "hmpe.utils.runtime", "hmpe/engine/loop.py", 2) in edges
    assert Edge("hmpe.data.b", "hmpe.data.a", "hmpe/data/b.py", 2) in edges
    bad = upward_imports(edges)
    assert bad == ["hmpe/utils/runtime.py:2: hmpe.utils.runtime imports hmpe.api "
                   "(hmpe.utils is layer 0, hmpe.api is layer 4: an upward import)"]
    found = cycles(edges)
    names = sorted(sorted({e.src for e in c}) for c in found)
    # loop -> hmpe (a package it sits in) is no edge; utils.runtime -> api -> engine.loop -> utils.runtime is one
    assert ["hmpe.data.a", "hmpe.data.b"] in names
    assert any("hmpe.utils.runtime" in c for c in names)
    assert "hmpe/data/b.py:2: hmpe.data.b imports hmpe.data.a" in "\n".join(map(_describe, found))
    assert same_layer_both_ways(edges) == []
    (root / "data" / "c.py").write_text("import hmpe.models.m\n")
    assert same_layer_both_ways(import_edges(root))[0].startswith("hmpe.data and hmpe.models import each other")


def test_checker_sees_a_cycle_through_a_package_init_but_not_type_checking_imports(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "api.py": "def explore():\n    from hmpe.explore import serve\n",
        "explore/__init__.py": "from hmpe.explore.session import Session\n",
        "explore/session.py": "import hmpe.explore\nfrom hmpe.api import Detector\n",  # the first: no edge
    })
    found = cycles(import_edges(root))
    assert [_describe(c).splitlines()[0] for c in found] == \
        ["hmpe.api -> hmpe.explore -> hmpe.explore.session -> hmpe.api"]
    (root / "explore" / "session.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hmpe.api import Detector\n")
    edges = import_edges(root)
    assert Edge("hmpe.explore.session", "hmpe.api", "hmpe/explore/session.py", 3, typing_only=True) in edges
    assert cycles(edges) == []


def test_checker_finds_imports_against_the_roles(tmp_path):
    root = _package(tmp_path, {
        "models/__init__.py": "",
        "models/rtdetr/__init__.py": "",
        "models/rtdetr/backbone.py": "def f():\n    from hmpe.models.lsconv import build\n",  # baseline -> a part
        "models/rtdetr/common.py": "",
        "models/lsconv.py": "from hmpe.models.rtdetr.common import x\n",  # a part -> the baseline: fine
        "models/hidq.py": "from hmpe.models.heatmap import maps\n",  # a part -> another part
        "models/heatmap/__init__.py": "",
        "models/heatmap/maps.py": "",
        "models/detector.py": "from hmpe.models import hidq, lsconv\n",
    })
    assert sorted(b.split(" (")[0] for b in against_roles(import_edges(root))) == [
        "hmpe/models/hidq.py:1: hmpe.models.hidq imports hmpe.models.heatmap.maps",
        "hmpe/models/rtdetr/backbone.py:2: hmpe.models.rtdetr.backbone imports hmpe.models.lsconv"]
    (root / "models" / "extra.py").write_text("from hmpe.models.rtdetr.common import x\n")  # a module without a rank
    with pytest.raises(AssertionError, match="'extra' has no rank"):
        against_roles(import_edges(root))
