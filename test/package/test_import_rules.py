"""The house rules on imports, read statically from every module's source (``ast``, function-level
imports included, so an import hidden in a function that no test happens to call still counts):

- the core (everything outside ``pose6d_ros/ros/``) never imports ROS (rclpy, message packages,
  cv_bridge, launch) nor ``pose6d_ros.ros``;
- ``runtime``, ``ros``, ``evaluation`` and ``detection`` never import ``training``, directly or
  through another module of the package (serving and scoring must not load training code);
- the package's import graph has no loop.

A failure names each offending ``file:line`` and its import statement (for an indirect import, every
hop of the chain). ``test_import_without_ros.py`` checks the ROS rule at run time as well, through
third-party packages too.
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = ROOT / "pose6d_ros"

#: top-level names of ROS 2 client libraries and tools; any ``*_msgs`` / ``*_srvs`` / ``*_interfaces`` too
ROS_TOP = {"rclpy", "rcl_interfaces", "rosidl_runtime_py", "rosidl_parser", "cv_bridge", "launch", "launch_ros",
           "message_filters", "tf2_ros", "tf2_py", "ament_index_python", "rosbag2_py", "image_transport"}
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces")

#: package -> packages it must never reach (directly or through other modules of pose6d_ros)
FORBIDDEN = {
    "pose6d_ros.runtime": ("pose6d_ros.training",),
    "pose6d_ros.ros": ("pose6d_ros.training",),
    "pose6d_ros.evaluation": ("pose6d_ros.training",),
    "pose6d_ros.detection": ("pose6d_ros.training",),
}
#: training entry points that live beside what they train: they may use the trainer's hooks themselves, but
#: serving code reaching them is still caught (the chain from e.g. ``pose6d_ros.ros`` goes through them)
TRAINER_MODULES = {"pose6d_ros.detection.train"}


@dataclass(frozen=True)
class Edge:
    """One import statement of ``src`` that loads module ``dst``."""

    src: str
    dst: str
    file: str
    line: int
    stmt: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.stmt}"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, pathlib.Path()).name == "__init__.py"


def _resolve(name: str) -> Optional[str]:
    """The module of ``pose6d_ros`` that importing ``name`` loads last (``a.b.Symbol`` -> ``a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, src: str) -> List[Tuple[str, str]]:
    """``(kind, name)`` of what an import statement loads: ``("pkg", module)`` for modules of
    pose6d_ros (with the parent packages Python initialises on the way), ``("ext", top-level name)``
    for anything else."""
    raw: List[str] = []
    if isinstance(node, ast.Import):
        raw = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the package of src (src itself when it is a package)
            base = src if _is_package(src) else src.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = f"{base}.{node.module}" if node.module else base
        else:
            mod = node.module or ""
        raw = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from pkg import submodule` loads it
    out: List[Tuple[str, str]] = []
    for name in raw:
        if name.split(".")[0] != "pose6d_ros":
            out.append(("ext", name.split(".")[0]))
            continue
        target = _resolve(name)
        while target:  # the module and every package above it that src is not already inside
            if not (src == target or src.startswith(target + ".")):
                out.append(("pkg", target))
            target = target.rpartition(".")[0]
    return out


def _imports() -> Tuple[List[Edge], List[Tuple[str, str, Edge]]]:
    """Every import statement of the package: edges between its modules, and external imports as
    ``(src, top-level name, edge)``."""
    edges: Dict[Tuple[str, str, int], Edge] = {}
    external: List[Tuple[str, str, Edge]] = []
    for src, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            stmt = " ".join(ln.strip() for ln in lines[node.lineno - 1:node.end_lineno])
            rel = str(path.relative_to(ROOT))
            for kind, name in _targets(node, src):
                e = Edge(src, name, rel, node.lineno, stmt)
                if kind == "pkg":
                    edges.setdefault((src, name, node.lineno), e)
                else:
                    external.append((src, name, e))
    return list(edges.values()), external


EDGES, EXTERNAL = _imports()


def _graph() -> Dict[str, List[Edge]]:
    g: Dict[str, List[Edge]] = {m: [] for m in MODULES}
    for e in EDGES:
        if e.dst != e.src:
            g[e.src].append(e)
    return g


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_ros(top: str) -> bool:
    return top in ROS_TOP or top.endswith(ROS_SUFFIXES)


def _shortest(g: Dict[str, List[Edge]], start: str, goal: Callable[[str], bool]) -> Optional[List[Edge]]:
    """The shortest chain of imports from ``start`` to a module where ``goal`` holds (BFS); ``[]`` when
    ``start`` is one, ``None`` when none is reachable."""
    prev: Dict[str, Optional[Edge]] = {start: None}
    queue = [start]
    while queue:
        m = queue.pop(0)
        if goal(m):
            chain = []
            while prev[m] is not None:
                chain.append(prev[m])
                m = prev[m].src
            return chain[::-1]
        for e in g[m]:
            if e.dst not in prev:
                prev[e.dst] = e
                queue.append(e.dst)
    return None


def _chain(g: Dict[str, List[Edge]], start: str, bad: Tuple[str, ...]) -> Optional[List[Edge]]:
    """The shortest chain of imports from ``start`` into one of the packages ``bad``."""
    return _shortest(g, start, lambda m: any(_inside(m, b) for b in bad))


def find_cycles(g: Dict[str, List[Edge]]) -> List[List[Edge]]:
    """One loop per strongly connected component with more than one module (Tarjan, then a path
    around the component from its first module)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    comps: List[List[str]] = []

    def visit(v: str) -> None:  # the package has ~100 modules: recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for e in g[v]:
            if e.dst not in index:
                visit(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in on:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    loops = []
    for comp in comps:  # the shortest loop through the component's first module
        members = set(comp)
        sub = {m: [e for e in g[m] if e.dst in members] for m in comp}
        start, best = comp[0], None
        for e in (e for m in comp for e in sub[m] if e.dst == start):
            hops = _shortest(sub, start, lambda m, src=e.src: m == src)
            if hops is not None and (best is None or len(hops) + 1 < len(best)):
                best = hops + [e]
        loops.append(best)
    return loops


def _report(chains: List[List[Edge]]) -> str:
    return "\n\n".join("\n".join(f"  {e}" for e in c) for c in chains)


def test_the_scan_sees_the_package():
    """The rules below mean something only if the scan finds the modules and their imports."""
    assert {"pose6d_ros.registry", "pose6d_ros.ros.estimator_node", "pose6d_ros.training.build",
            "pose6d_ros.runtime.estimator"} <= set(MODULES)
    assert any(e.src == "pose6d_ros.ros.estimator_node" and e.dst == "pose6d_ros.runtime.estimator" for e in EDGES)
    assert any(src.startswith("pose6d_ros.ros") and top == "rclpy" for src, top, _ in EXTERNAL)


def test_core_never_imports_ros():
    bad = [e for src, top, e in EXTERNAL if not _inside(src, "pose6d_ros.ros") and _is_ros(top)]
    bad += [e for e in EDGES if not _inside(e.src, "pose6d_ros.ros") and _inside(e.dst, "pose6d_ros.ros")]
    assert not bad, "the core imports ROS (only pose6d_ros/ros/ may):\n" + "\n".join(f"  {e}" for e in bad)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_serving_and_scoring_never_reach_training(package):
    g = _graph()
    chains = [c for m in sorted(MODULES) if _inside(m, package) and m not in TRAINER_MODULES
              for c in [_chain(g, m, FORBIDDEN[package])] if c]
    assert not chains, (f"{package} imports {' / '.join(FORBIDDEN[package])} "
                        f"(each chain: the import statements that lead there):\n{_report(chains)}")


def test_no_import_loops():
    loops = find_cycles(_graph())
    assert not loops, f"{len(loops)} import loop(s) (each: the import statements around it):\n{_report(loops)}"


def test_the_checks_catch_what_they_look_for():
    """The loop finder and the chain search on a hand-made graph: a -> b -> c -> a is one loop of three
    edges, d -> e none; a reaches c, d does not."""
    def E(s, d):
        return Edge(s, d, f"{s}.py", 1, f"import {d}")

    g = {"a": [E("a", "b")], "b": [E("b", "c")], "c": [E("c", "a")], "d": [E("d", "e")], "e": []}
    loops = find_cycles(g)
    assert len(loops) == 1 and sorted((e.src, e.dst) for e in loops[0]) == [("a", "b"), ("b", "c"), ("c", "a")]
    assert [(e.src, e.dst) for e in _chain(g, "a", ("c",))] == [("a", "b"), ("b", "c")]
    assert _chain(g, "d", ("c",)) is None
    # relative imports and `from package import submodule` resolve to the submodule
    assert ("pkg", "pose6d_ros.training.distributed") in _targets(
        ast.parse("from pose6d_ros.training import distributed").body[0], "pose6d_ros.training.runner")
    assert ("pkg", "pose6d_ros.geometry.pnp") in _targets(
        ast.parse("from .pnp import solve_pnp").body[0], "pose6d_ros.geometry.camera")
