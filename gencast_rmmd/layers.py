"""The layer rule: which part of the project may import which, read from the source with `ast`.

A layer is a subpackage of `gencast_rmmd` (`gencast_rmmd.data`, ...), one of its
top-level modules (`gencast_rmmd.cli`, `gencast_rmmd.config`, ...), or the
`evaluation` and `pipelines` packages. Nothing is imported: an edge A -> B says
that some module of A imports some module of B as the code is written. Imports
inside a function body are *deferred* (they run only when it is called); they
still tie the layers together, so the rule applies to them as well.

The rule, bottom to top (a layer imports only from layers strictly below it):

    errors, layers
    io_utils
    config, progress_record         the config machinery and the data schema; the progress file
    data, geometry
    diffusion
    models
    training                        the loop, checkpoints, the model card's shared entries
    teacher, distill                peers: neither imports the other
    forecast                        rebuilds any model a card describes
    commands
    pipelines                       drives the product through its commands
    cli                             the entry point, mounts everything

`evaluation` reads forecast files and truth stores: it sees only errors,
io_utils, config and the data layer, never the model stack; the commands that
mount it (`cli`) and the pipelines sit above it.

    python tools/import_graph.py    # the graph, its cycles and any import the rule refuses
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gencast_rmmd", "evaluation", "pipelines")

_ORDER: tuple[tuple[str, ...], ...] = (
    ("errors", "layers"),
    ("io_utils",),
    ("config", "progress_record"),
    ("data", "geometry"),
    ("diffusion",),
    ("models",),
    ("training",),
    ("teacher", "distill"),
    ("forecast",),
    ("commands",),
    ("pipelines",),
    ("cli",),
)
_RANK = {name: rank for rank, names in enumerate(_ORDER) for name in names}
_EVALUATION_SEES = frozenset({"errors", "io_utils", "config", "data"})
# evaluation sits between commands and pipelines: what may import it
_IMPORTS_EVALUATION = frozenset({"pipelines", "cli"})

Edges = dict[tuple[str, str], dict[str, set[tuple[str, str]]]]


def short(layer: str) -> str:
    """`gencast_rmmd.data` -> `data` (the name the rule uses)."""
    return layer.removeprefix("gencast_rmmd.")


def allowed(source: str, target: str) -> bool:
    """Whether layer `source` may import layer `target` (short names)."""
    if source == "evaluation":
        return target in _EVALUATION_SEES
    if target == "evaluation":
        return source in _IMPORTS_EVALUATION
    if source not in _RANK or target not in _RANK:
        return False        # a layer the rule does not know: place it in _ORDER first
    return _RANK[target] < _RANK[source]


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


def _is_module(dotted: str) -> bool:
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
                found.extend((f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base, inner)
                             for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def layer_edges() -> Edges:
    """(from layer, to layer) -> {"module": {(importer, imported)}, "deferred": {...}}, over the whole source."""
    edges: Edges = defaultdict(lambda: {"module": set(), "deferred": set()})
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


def violations(edges: Edges) -> list[str]:
    """One line per module import the rule refuses: `importer -> imported (layer -> layer)`."""
    lines = []
    for (source, target), kinds in sorted(edges.items()):
        if allowed(short(source), short(target)):
            continue
        for importer, imported in sorted(kinds["module"] | kinds["deferred"]):
            lines.append(f"{importer} -> {imported} ({short(source)} -> {short(target)})")
    return lines


def strongly_connected(nodes: set[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node (the cycles), each sorted."""
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


def cycles(edges: Edges, include_deferred: bool = True) -> list[list[str]]:
    """The layer cycles of `edges` (module-level imports only, or deferred ones too)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for (source, target), kinds in edges.items():
        if kinds["module"] or include_deferred:
            graph[source].add(target)
    return strongly_connected({layer for pair in edges for layer in pair}, graph)
