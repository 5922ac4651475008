"""Print the import graph between the project's layers and the cycles in it.

A layer is a subpackage of `gencast_rmmd` (`gencast_rmmd.data`, ...), one of its
top-level modules (`gencast_rmmd.cli`, `gencast_rmmd.config`, ...), or the
`evaluation` and `pipelines` packages. The source is read with `ast`, nothing is
imported, so the graph is the code's as written: an edge A -> B says that some
module of A imports some module of B. Imports inside a function body are
deferred (they run only when the function is called); they are counted
separately because they still tie the layers together but cost nothing at
import time.

    python tools/import_graph.py            # edges (module-level / deferred) and cycles
    python tools/import_graph.py --modules  # also the module pairs behind every edge of a cycle

Cycles are the strongly connected components of the layer graph with more than
one layer (Tarjan's algorithm), listed once with module-level edges only and
once with deferred imports included.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gencast_rmmd", "evaluation", "pipelines")


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT (`pkg/__init__.py` -> `pkg`)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The layer a dotted module belongs to, or None for a module outside the project."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] != "gencast_rmmd" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def is_module(dotted: str) -> bool:
    """Whether a dotted name is a module or package of the project (a file or folder under ROOT)."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """(imported module, deferred) for every import in a parsed file; deferred = inside a function."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - child.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import name` imports the submodule pkg.name when there is one, else pkg.
                found.extend((f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base, inner)
                             for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def layer_edges() -> dict[tuple[str, str], dict[str, set[tuple[str, str]]]]:
    """(from layer, to layer) -> {"module": {(importer, imported)}, "deferred": {...}}."""
    edges: dict[tuple[str, str], dict[str, set[tuple[str, str]]]] = defaultdict(
        lambda: {"module": set(), "deferred": set()})
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            source = layer_of(module)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for imported, deferred in imported_modules(tree, module, path.name == "__init__.py"):
                target = layer_of(imported)
                if target is None or target == source:
                    continue
                edges[(source, target)]["deferred" if deferred else "module"].add((module, imported))
    return edges


def strongly_connected(nodes: set[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(nodes):
        if node not in index:
            connect(node)
    return sorted(components)


def short(layer: str) -> str:
    return layer.removeprefix("gencast_rmmd.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="list the module imports behind each cycle edge")
    args = parser.parse_args()
    edges = layer_edges()
    nodes = {layer for pair in edges for layer in pair}
    print("layer -> imported layers   (* = only deferred, inside functions)")
    for source in sorted(nodes):
        targets = sorted(t for (s, t) in edges if s == source)
        marked = [short(t) + ("*" if not edges[(source, t)]["module"] else "") for t in targets]
        print(f"  {short(source):22s} -> {', '.join(marked) if marked else '(none)'}")
    for title, include_deferred in (("module-level imports", False), ("including deferred imports", True)):
        graph: dict[str, set[str]] = defaultdict(set)
        for (source, target), kinds in edges.items():
            if kinds["module"] or include_deferred:
                graph[source].add(target)
        components = strongly_connected(nodes, graph)
        print(f"\ncycles, {title}: {len(components) or 'none'}")
        for component in components:
            print("  {" + ", ".join(short(layer) for layer in component) + "}")
            if not args.modules:
                continue
            for source in component:
                for target in component:
                    if target not in graph.get(source, ()):
                        continue
                    kinds = edges[(source, target)]
                    pairs = sorted(kinds["module"]) + (sorted(kinds["deferred"]) if include_deferred else [])
                    for importer, imported in pairs:
                        note = " (deferred)" if (importer, imported) in kinds["deferred"] else ""
                        print(f"      {importer} -> {imported}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
