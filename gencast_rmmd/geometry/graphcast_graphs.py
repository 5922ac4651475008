"""GenCast's own graphs (google-deepmind/graphcast 0.2, `denoiser.py`), rebuilt exactly.

An imported GenCast checkpoint only reproduces DeepMind's outputs on the graphs
it was trained with, which differ from `graphs.build_graphs` in four ways:
- the icosahedron is rotated so that a FACE is parallel to the equator at each
  pole (ours puts a vertex on each pole); vertices are float32, midpoints are
  created face by face in graphcast's order, and nodes are renumbered by reverse
  Cuthill-McKee on graphcast's adjacency matrix (`icosahedral_mesh.py`,
  `_permute_mesh_to_banded`);
- positions come from float32 latitude/longitude, as graphcast casts them;
- grid -> mesh: a mesh node with no grid point within the radius gets no edge
  (`radius_query_indices`; ours connects its nearest grid point);
- mesh -> grid: each grid point reads the face that trimesh's closest-point
  query returns (`in_mesh_triangle_indices`), which decides the triangle of grid
  points lying exactly on an edge differently from our largest-smallest-weight
  rule; the same library is used here so that such ties fall the same way.
Edge and node features follow `features` (the same definitions as graphcast's
`model_utils` with receiver-local relative positions); the result is a
`MeshGraphs`, so the denoiser and the attention layouts use it unchanged.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree, transform

from gencast_rmmd.geometry import connectivity, features, icosahedral
from gencast_rmmd.geometry.graphs import MeshGraphs, freeze

# graphcast `get_icosahedron`: 12 vertices (c1, c2 in +-1, +-phi) and 20 counter-clockwise faces.
_BASE_FACES = ((0, 1, 2), (0, 6, 1), (8, 0, 2), (8, 4, 0), (3, 8, 2), (3, 2, 7), (7, 2, 1), (0, 4, 6),
               (4, 11, 6), (6, 11, 5), (1, 5, 7), (4, 10, 11), (4, 8, 10), (10, 8, 3), (10, 3, 9),
               (11, 10, 9), (11, 9, 5), (5, 9, 7), (9, 3, 7), (1, 6, 5))


def _base_icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """graphcast's icosahedron: rotated about y by (pi - dihedral angle) / 2, so faces sit at the poles."""
    phi = (1 + np.sqrt(5)) / 2
    corners = []
    for c1 in (1.0, -1.0):
        for c2 in (phi, -phi):
            corners += [(c1, c2, 0.0), (0.0, c1, c2), (c2, 0.0, c1)]
    vertices = np.array(corners, dtype=np.float32)
    vertices /= np.linalg.norm([1.0, phi])  # in place: stays float32, as in graphcast
    dihedral = 2 * np.arcsin(phi / np.sqrt(3))
    rotation = transform.Rotation.from_euler(seq="y", angles=(np.pi - dihedral) / 2).as_matrix()
    vertices = np.dot(vertices, rotation)
    return vertices.astype(np.float32), np.array(_BASE_FACES, dtype=np.int32)


def _split(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every face in four, creating midpoints face by face (graphcast's `_ChildVerticesBuilder`)."""
    all_vertices = list(vertices)
    midpoint_of: dict[tuple[int, int], int] = {}

    def midpoint(a: int, b: int) -> int:
        key = (a, b) if a < b else (b, a)
        if key not in midpoint_of:
            position = vertices[list(key)].mean(0)
            position /= np.linalg.norm(position)
            midpoint_of[key] = len(all_vertices)
            all_vertices.append(position)
        return midpoint_of[key]

    new_faces = []
    for a, b, c in faces:
        ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
        new_faces += [[a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca]]
    return np.array(all_vertices), np.array(new_faces, dtype=np.int32)


def _face_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """graphcast `faces_to_edges`: a->b, b->c, c->a of every face (each undirected edge twice)."""
    return (np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]]),
            np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]]))


@functools.lru_cache(maxsize=8)
def graphcast_mesh(splits: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [N, 3] float32, faces [F, 3]) of graphcast's finest mesh, in its banded node order."""
    vertices, faces = _base_icosahedron()
    for _ in range(icosahedral._check_refinement(splits)):
        vertices, faces = _split(vertices, faces)
    senders, receivers = _face_edges(faces)
    adjacency = sparse.csr_matrix((len(vertices), len(vertices)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sparse.SparseEfficiencyWarning)
        adjacency[senders, receivers] = 1
    permutation = csgraph.reverse_cuthill_mckee(adjacency, symmetric_mode=True)
    new_index = np.empty_like(permutation)
    new_index[permutation] = np.arange(len(permutation))
    return freeze(np.asarray(vertices[permutation], np.float32)), freeze(new_index[faces].astype(np.int32))


def _float32_latlon_xyz(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Unit vectors of float32 lat/lon, computed as graphcast's `_grid_lat_lon_to_coordinates` does."""
    phi, theta = np.deg2rad(longitude), np.deg2rad(90 - latitude)
    return np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], axis=-1)


def _radius_edges(grid_xyz: np.ndarray, mesh_xyz: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid -> mesh pairs within `radius` (chord), in grid order; isolated mesh nodes get none."""
    neighbours = cKDTree(mesh_xyz).query_ball_point(x=grid_xyz, r=radius)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    senders = np.repeat(np.arange(len(grid_xyz)), counts)
    receivers = np.fromiter((m for n in neighbours for m in n), dtype=np.int64, count=int(counts.sum()))
    return senders.astype(np.int32), receivers.astype(np.int32)


def _closest_faces(grid_xyz: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The face trimesh finds closest to each grid point (graphcast's mesh -> grid rule)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    _, _, face_index = trimesh.proximity.closest_point(mesh, grid_xyz)
    return np.asarray(face_index, dtype=np.int64)


def build_graphcast_graphs(latitude: np.ndarray, longitude: np.ndarray, refinement: int,
                           radius_fraction: float = 0.6) -> MeshGraphs:
    """graphcast 0.2's grid->mesh, mesh and mesh->grid graphs for a lat/lon grid (latitude ascending)."""
    lat, lon = connectivity.validate_grid(latitude, longitude)
    return _cached(lat.tobytes(), lon.tobytes(), icosahedral._check_refinement(refinement), float(radius_fraction))


@functools.lru_cache(maxsize=8)
def _cached(lat_bytes: bytes, lon_bytes: bytes, refinement: int, radius_fraction: float) -> MeshGraphs:
    lat = np.frombuffer(lat_bytes, dtype=np.float64).astype(np.float32)
    lon = np.frombuffer(lon_bytes, dtype=np.float64).astype(np.float32)
    vertices, faces = graphcast_mesh(refinement)
    lon2d, lat2d = np.meshgrid(lon, lat)
    grid_xyz = _float32_latlon_xyz(lat2d, lon2d).reshape(-1, 3)
    grid_latlon = np.stack([lat2d.ravel(), lon2d.ravel()], axis=-1).astype(np.float64)
    mesh_latlon = features.xyz_to_latlon(vertices.astype(np.float64)).astype(np.float32).astype(np.float64)
    mesh_xyz = features.latlon_to_xyz(mesh_latlon[:, 0], mesh_latlon[:, 1])
    grid_feature_xyz = features.latlon_to_xyz(grid_latlon[:, 0], grid_latlon[:, 1])

    mesh_senders, mesh_receivers = icosahedral.faces_to_edges(faces)
    chords = np.linalg.norm(vertices[mesh_senders] - vertices[mesh_receivers], axis=-1)
    max_edge_chord = float(chords.max())
    radius = max_edge_chord * radius_fraction
    g2m_senders, g2m_receivers = _radius_edges(grid_xyz, vertices, radius)
    g2m_features, g2m_norm = features.edge_features(grid_feature_xyz, mesh_xyz, g2m_senders, g2m_receivers)
    face_index = _closest_faces(grid_xyz, vertices, faces)
    m2g_senders = faces[face_index].reshape(-1).astype(np.int32)
    m2g_receivers = np.repeat(np.arange(len(grid_xyz), dtype=np.int32), 3)
    m2g_features, m2g_norm = features.edge_features(mesh_xyz, grid_feature_xyz, m2g_senders, m2g_receivers)
    corners = vertices[faces[face_index]].astype(np.float64)               # [G, 3 corners, xyz]
    cone = np.linalg.solve(np.transpose(corners, (0, 2, 1)), grid_feature_xyz[..., None])[..., 0]
    return freeze(MeshGraphs(
        refinement=refinement, n_grid=len(grid_xyz), n_mesh=len(vertices),
        grid_node_features=features.node_structural_features(grid_latlon[:, 0], grid_latlon[:, 1]),
        mesh_node_features=features.node_structural_features(mesh_latlon[:, 0], mesh_latlon[:, 1]),
        mesh_latlon=mesh_latlon, mesh_senders=mesh_senders, mesh_receivers=mesh_receivers,
        grid2mesh_senders=g2m_senders, grid2mesh_receivers=g2m_receivers, grid2mesh_edge_features=g2m_features,
        mesh2grid_senders=m2g_senders, mesh2grid_receivers=m2g_receivers,
        mesh2grid_edge_features=m2g_features, n_lat=len(lat), n_lon=len(lon), grid_latlon=grid_latlon,
        mesh_vertices=vertices.astype(np.float64), mesh_faces=faces, mesh2grid_weights=cone / cone.sum(-1, keepdims=True),
        radius_fraction=radius_fraction, connect_isolated_mesh_nodes=False, grid2mesh_radius=radius,
        max_mesh_edge_chord=max_edge_chord, grid2mesh_edge_normaliser=g2m_norm, mesh2grid_edge_normaliser=m2g_norm,
        mesh_bandwidth=icosahedral.bandwidth(mesh_senders, mesh_receivers)))
