"""The package's import graph: no circles, and every arrow goes the way ARCHITECTURE.md says.

Read from the source (``ast``), not by importing, so an import inside a function counts as
much as one at the top: a lazy import that dodges a circle is still a circle. Imports under
``if TYPE_CHECKING:`` do not run and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "perwatt"

# The one-way flow (ARCHITECTURE.md): each top-level part may import only the parts listed.
# Leaves are single modules anyone may import; they import only each other.
LEAVES = frozenset({"errors", "hardware", "economics", "_files", "_signals"})
ALLOWED: dict[str, frozenset[str]] = {
    **{leaf: LEAVES for leaf in LEAVES},
    "meter": LEAVES,
    "bench": LEAVES | {"meter"},
    "train": LEAVES | {"meter"},
    "engine": LEAVES | {"meter", "bench"},
    "facility": LEAVES | {"meter", "bench", "engine", "train"},
    "report": LEAVES | {"meter", "bench", "engine", "train", "facility"},
    "cli": LEAVES | {"meter", "bench", "engine", "train", "facility", "report"},
    "__main__": frozenset({"cli"}),
}

# Circles known and scheduled for removal; a circle not listed here fails. Empty since
# engine/precision.py took the precision plan that generate.py and quant.py used to trade.
KNOWN_CIRCLES: frozenset[frozenset[str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str, path: Path) -> Iterator[str]:
    """The perwatt modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            targets = subs or [base]
        for t in targets:
            while t and t not in MODULES:  # `import perwatt.meter.nvml.x` → the module part
                t = t.rpartition(".")[0]
            # Importing one's own package (or the root's __version__) runs a parent __init__
            # that Python has already started: not an arrow of the flow.
            if t and t != module and not module.startswith(t + "."):
                yield t


GRAPH = {m: sorted(set(_imports(m, p))) for m, p in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "perwatt"


def _circles(graph: dict[str, list[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    """Guards the test itself: a parser that saw nothing would pass every check below."""
    assert "perwatt.meter.source" in GRAPH["perwatt.meter.meter"]
    assert "perwatt.train.solver" in GRAPH["perwatt.train.frontier"]
    assert "perwatt.cli.options" in GRAPH["perwatt.cli.train_loop"]


def test_no_import_circle() -> None:
    circles = set(_circles(GRAPH))
    unexpected = [sorted(c) for c in circles - KNOWN_CIRCLES]
    assert not unexpected, f"import circles: {unexpected}"


def test_known_circles_are_still_there() -> None:
    """A circle that was removed leaves KNOWN_CIRCLES, so it cannot come back unnoticed."""
    circles = set(_circles(GRAPH))
    gone = [sorted(c) for c in KNOWN_CIRCLES - circles]
    assert not gone, f"no longer circles, remove from KNOWN_CIRCLES: {gone}"


def test_circle_finder_finds_circles() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _circles(graph) == [frozenset({"a", "b", "c"})]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "perwatt"))
def test_imports_follow_the_flow(module: str) -> None:
    part = _part(module)
    assert part in ALLOWED, f"{module}: part {part!r} has no place in the flow (ALLOWED)"
    against = [t for t in GRAPH[module] if _part(t) not in ALLOWED[part] | {part, "perwatt"}]
    assert not against, f"{module} imports against the flow: {against}"
