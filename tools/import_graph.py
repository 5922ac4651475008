"""Print the import graph between the project's layers, its cycles and the imports the layer rule refuses.

The rule and the reading of the source live in `gencast_rmmd/layers.py`
(`tests/test_layers.py` enforces them); this script only prints.

    python tools/import_graph.py            # edges (module-level / deferred), cycles, refused imports
    python tools/import_graph.py --modules  # also the module pairs behind every edge of a cycle
"""

from __future__ import annotations

import argparse
import sys

from gencast_rmmd.layers import cycles, layer_edges, short, violations


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
        components = cycles(edges, include_deferred)
        print(f"\ncycles, {title}: {len(components) or 'none'}")
        for component in components:
            print("  {" + ", ".join(short(layer) for layer in component) + "}")
            if args.modules:
                for (source, target), kinds in sorted(edges.items()):
                    if source in component and target in component:
                        pairs = sorted(kinds["module"]) + (sorted(kinds["deferred"]) if include_deferred else [])
                        for importer, imported in pairs:
                            note = " (deferred)" if (importer, imported) in kinds["deferred"] else ""
                            print(f"      {importer} -> {imported}{note}")
    refused = violations(edges)
    print(f"\nimports the layer rule refuses (gencast_rmmd/layers.py): {len(refused) or 'none'}")
    for line in refused:
        print(f"  {line}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
