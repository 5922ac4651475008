"""The three graphs of a GenCast-style denoiser, as plain numpy arrays.

`build_graphs(latitude, longitude, refinement)` returns a `MeshGraphs`:
- the processor mesh: finest icosahedral refinement only, banded (reverse
  Cuthill–McKee) node order, edges in both directions sorted by (receiver, sender);
- the encoder graph grid -> mesh (radius `radius_fraction` x longest mesh edge,
  chords on the unit sphere, see `connectivity`);
- the decoder graph mesh -> grid (3 vertices of the containing triangle per grid
  point; edges 3g..3g+2 belong to grid point g).
Grid indices are lat-major, g = i_lat * n_lon + i_lon, latitude ascending.
Encoder and decoder edge features are (chord, dx, dy, dz) / max chord of that
edge set, with the displacement in the receiver's local frame (see
`features`); the processor attends along mesh edges and has none. Node
features are (sin lat, cos lon, sin lon).

The k-hop attention neighbourhood is NOT computed here (it is expensive at
refinement 6); see `attention_layout`. Graphs are cached in memory per
(grid, refinement, radius_fraction); arrays are read-only.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from gencast_rmmd.geometry import connectivity, features, icosahedral


@dataclasses.dataclass(frozen=True, eq=False)
class MeshGraphs:
    """Mesh, grid->mesh and mesh->grid graphs (all indices int32, features float32).

    Shapes: G = n_grid = n_lat * n_lon, N = n_mesh, E = 2 * (3N - 6) directed mesh edges.
    """

    refinement: int
    n_grid: int
    n_mesh: int
    grid_node_features: np.ndarray  # [G, 3] (sin lat, cos lon, sin lon)
    mesh_node_features: np.ndarray  # [N, 3]
    mesh_latlon: np.ndarray  # [N, 2] degrees (lat, lon in [0, 360))
    mesh_senders: np.ndarray  # [E]
    mesh_receivers: np.ndarray  # [E]
    grid2mesh_senders: np.ndarray  # [E_g2m] grid index
    grid2mesh_receivers: np.ndarray  # [E_g2m] mesh index
    grid2mesh_edge_features: np.ndarray  # [E_g2m, 4]
    mesh2grid_senders: np.ndarray  # [3G] mesh index
    mesh2grid_receivers: np.ndarray  # [3G] grid index; edges 3g..3g+2 -> grid point g
    mesh2grid_edge_features: np.ndarray  # [3G, 4]
    # Extra fields.
    n_lat: int
    n_lon: int
    grid_latlon: np.ndarray  # [G, 2] degrees, lat-major
    mesh_vertices: np.ndarray  # [N, 3] unit xyz (float64)
    mesh_faces: np.ndarray  # [F, 3] int32, counter-clockwise from outside
    mesh2grid_weights: np.ndarray  # [G, 3] float64 barycentric weights of the 3 senders
    radius_fraction: float
    connect_isolated_mesh_nodes: bool
    grid2mesh_radius: float  # chord on the unit sphere: radius_fraction * max mesh edge chord
    max_mesh_edge_chord: float
    grid2mesh_edge_normaliser: float  # chord that the edge features of each set were divided by
    mesh2grid_edge_normaliser: float
    mesh_bandwidth: int  # max |sender - receiver| of the mesh edges

    @property
    def n_mesh_edges(self) -> int:
        return int(self.mesh_senders.shape[0])

    @property
    def n_grid2mesh_edges(self) -> int:
        return int(self.grid2mesh_senders.shape[0])

    def describe(self) -> str:
        """One line for logs: sizes of the three graphs."""
        return (
            f"mesh r={self.refinement}: {self.n_mesh} nodes, {self.n_mesh_edges} edges "
            f"(bandwidth {self.mesh_bandwidth}); grid {self.n_lat}x{self.n_lon}; "
            f"grid2mesh {self.n_grid2mesh_edges} edges (radius {self.grid2mesh_radius:.4f} chord); "
            f"mesh2grid {3 * self.n_grid} edges"
        )


def build_graphs(
    latitude: np.ndarray,
    longitude: np.ndarray,
    refinement: int,
    radius_fraction: float = 0.6,
    connect_isolated_mesh_nodes: bool = True,
) -> MeshGraphs:
    """Build the mesh and grid<->mesh graphs for a lat/lon grid (degrees, latitude ascending).

    `refinement` selects the icosahedral mesh (N = 10 * 4**r + 2). Grid points
    within `radius_fraction` x the longest mesh edge (chord on the unit sphere)
    of a mesh node send to it; each grid point reads the 3 vertices of its
    containing triangle. With `connect_isolated_mesh_nodes` (default) a mesh node
    with no grid point inside its radius (grid coarser than the mesh, e.g. 64x32
    at refinement 4) gets one edge from its nearest grid point instead of none.
    Raises `UserInputError` for a malformed grid and
    ValueError for a bad refinement or radius. Cached; arrays are read-only.
    """
    lat, lon = connectivity.validate_grid(latitude, longitude)
    if not np.isfinite(radius_fraction) or radius_fraction <= 0:
        raise ValueError(f"radius_fraction must be a positive number (GenCast uses 0.6), got {radius_fraction}")
    return _build_graphs_cached(
        lat.tobytes(),
        lon.tobytes(),
        icosahedral._check_refinement(refinement),
        float(radius_fraction),
        bool(connect_isolated_mesh_nodes),
    )


@functools.lru_cache(maxsize=8)
def _build_graphs_cached(
    lat_bytes: bytes, lon_bytes: bytes, refinement: int, radius_fraction: float, connect_isolated: bool
) -> MeshGraphs:
    lat = np.frombuffer(lat_bytes, dtype=np.float64)
    lon = np.frombuffer(lon_bytes, dtype=np.float64)
    vertices, faces = icosahedral.icosahedral_mesh(refinement)
    mesh_latlon = features.xyz_to_latlon(vertices)
    grid_latlon = connectivity.grid_latlon(lat, lon)
    grid_xyz = features.latlon_to_xyz(grid_latlon[:, 0], grid_latlon[:, 1])

    mesh_senders, mesh_receivers = icosahedral.faces_to_edges(faces)
    max_edge_chord = float(np.linalg.norm(vertices[mesh_senders] - vertices[mesh_receivers], axis=-1).max())

    radius = radius_fraction * max_edge_chord
    g2m_senders, g2m_receivers = connectivity.radius_edges(grid_xyz, vertices, radius, connect_isolated)
    g2m_features, g2m_norm = features.edge_features(grid_xyz, vertices, g2m_senders, g2m_receivers)

    m2g_senders, m2g_receivers, m2g_weights = connectivity.containing_triangle_edges(grid_xyz, vertices, faces)
    m2g_features, m2g_norm = features.edge_features(vertices, grid_xyz, m2g_senders, m2g_receivers)

    graphs = MeshGraphs(
        refinement=refinement,
        n_grid=len(grid_xyz),
        n_mesh=len(vertices),
        grid_node_features=features.node_structural_features(grid_latlon[:, 0], grid_latlon[:, 1]),
        mesh_node_features=features.node_structural_features(mesh_latlon[:, 0], mesh_latlon[:, 1]),
        mesh_latlon=mesh_latlon,
        mesh_senders=mesh_senders,
        mesh_receivers=mesh_receivers,
        grid2mesh_senders=g2m_senders,
        grid2mesh_receivers=g2m_receivers,
        grid2mesh_edge_features=g2m_features,
        mesh2grid_senders=m2g_senders,
        mesh2grid_receivers=m2g_receivers,
        mesh2grid_edge_features=m2g_features,
        n_lat=len(lat),
        n_lon=len(lon),
        grid_latlon=grid_latlon,
        mesh_vertices=vertices,
        mesh_faces=faces,
        mesh2grid_weights=m2g_weights,
        radius_fraction=radius_fraction,
        connect_isolated_mesh_nodes=connect_isolated,
        grid2mesh_radius=float(radius),
        max_mesh_edge_chord=float(max_edge_chord),
        grid2mesh_edge_normaliser=g2m_norm,
        mesh2grid_edge_normaliser=m2g_norm,
        mesh_bandwidth=icosahedral.bandwidth(mesh_senders, mesh_receivers),
    )
    return freeze(graphs)


def freeze(value):
    """Make an array, or every array field of a `MeshGraphs`, read-only (they are cached and shared); return it."""
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    elif isinstance(value, MeshGraphs):
        for field in dataclasses.fields(value):
            freeze(getattr(value, field.name))
    return value
