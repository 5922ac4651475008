"""GenCast-style geometry (numpy/scipy only, no JAX): icosahedral mesh, grid<->mesh graphs, k-hop attention layouts.

Conventions (details in each module's docstring):
- latitude ascending, fields [lat, lon], grid index g = i_lat * n_lon + i_lon;
- unit-sphere xyz, distances are chords (2 sin(arc / 2));
- mesh = finest icosahedral refinement only, nodes in banded (reverse Cuthill–McKee) order;
- grid->mesh and mesh->grid edge features (chord, dx, dy, dz) / max chord of the edge
  set, displacement in the receiver's local frame (receiver rotated to lat 0, lon 0:
  x up, y east, z north); the mesh itself carries none (the processor attends along it);
- node features (sin lat, cos lon, sin lon);
- attention: query i may attend key j iff ((A + I)^k)[i, j] != 0, computed lazily
  (dense mask, banded key windows, or block-sparse gathers).
"""

from gencast_rmmd.geometry.attention_layout import (
    DEFAULT_CACHE_DIR,
    BandLayout,
    BlockLayout,
    khop_band_layout,
    khop_block_layout,
    khop_csr,
    khop_mask,
)
from gencast_rmmd.geometry.graphs import MeshGraphs, build_graphs
from gencast_rmmd.geometry.icosahedral import bandwidth, icosahedral_mesh, num_mesh_nodes

__all__ = [
    "DEFAULT_CACHE_DIR",
    "BandLayout",
    "BlockLayout",
    "MeshGraphs",
    "bandwidth",
    "build_graphs",
    "icosahedral_mesh",
    "khop_band_layout",
    "khop_block_layout",
    "khop_csr",
    "khop_mask",
    "num_mesh_nodes",
]
