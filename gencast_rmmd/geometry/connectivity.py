"""Grid <-> mesh connectivity on the unit sphere.

Conventions
- The model grid is given by 1-D `latitude` (ascending, degrees, within [-90, 90])
  and `longitude` (degrees, distinct modulo 360) arrays; fields are [lat, lon] and
  flattened lat-major: grid index g = i_lat * n_lon + i_lon.
- Grid -> mesh (encoder): a grid point sends to every mesh node within
  `radius_fraction * longest mesh edge`, both measured as CHORD lengths on the
  unit sphere (chord = 2 sin(arc / 2)). The ball query uses a cKDTree on xyz.
  On grids much coarser than the mesh a mesh node can have no grid point in its
  ball (e.g. 64x32 at refinement 4); such nodes additionally receive one edge from
  their nearest grid point so no mesh node starts without encoder input.
- Mesh -> grid (decoder): every grid point reads exactly the 3 vertices of the
  mesh triangle that contains it. "Contains" means p = a*A + b*B + c*C with
  a, b, c >= 0 (p lies in the cone of the spherical triangle), which is the
  same as the central projection of p falling inside the flat triangle ABC;
  barycentric weights are (a, b, c) / (a + b + c). Points on an edge or a vertex
  are assigned to one of the touching triangles (the one whose smallest weight is
  largest), so poles and points on edges are handled like any other point.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from gencast_rmmd.errors import UserInputError

_CANDIDATE_FACES = 8
_CONTAINMENT_TOLERANCE = 1e-9
_GRID_CHUNK = 1 << 16


def validate_grid(latitude: np.ndarray, longitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and return the grid axes as float64 1-D arrays (longitude wrapped to [0, 360)).

    Raises `UserInputError` naming the problem when latitude is not 1-D, not
    strictly ascending or outside [-90, 90], or when longitudes repeat modulo 360.
    """
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or lat.size == 0 or lon.size == 0:
        raise UserInputError(
            f"grid latitude and longitude must be non-empty 1-D arrays, got shapes {lat.shape} and {lon.shape}"
        )
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise UserInputError("grid latitude/longitude contain NaN or infinite values")
    if np.any(np.abs(lat) > 90.0):
        raise UserInputError(
            f"grid latitude must lie in [-90, 90] degrees, got range [{lat.min()}, {lat.max()}]"
        )
    if lat.size > 1 and np.any(np.diff(lat) <= 0):
        raise UserInputError(
            "grid latitude must be strictly ascending (the model grid convention); "
            "normalise the store on open (flip a descending latitude axis)"
        )
    lon = np.mod(lon, 360.0)
    if np.unique(np.round(lon, 9)).size != lon.size:
        raise UserInputError("grid longitudes repeat modulo 360 degrees; drop the duplicated column")
    return lat, lon


def grid_latlon(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """[n_lat * n_lon, 2] (lat, lon) in degrees, lat-major (g = i_lat * n_lon + i_lon)."""
    lat2d, lon2d = np.meshgrid(latitude, longitude, indexing="ij")
    return np.stack([lat2d.ravel(), lon2d.ravel()], axis=-1)


def radius_edges(
    grid_xyz: np.ndarray, mesh_xyz: np.ndarray, radius: float, connect_isolated_mesh_nodes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Grid -> mesh edges for all pairs within `radius` (chord, unit sphere; inclusive).

    Returns `(grid_senders, mesh_receivers)` int32, sorted by (receiver, sender).
    With `connect_isolated_mesh_nodes`, a mesh node with no grid point in its ball gets
    one edge from its nearest grid point instead.
    """
    tree = cKDTree(grid_xyz)
    neighbours = tree.query_ball_point(mesh_xyz, r=radius, return_sorted=True)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    if connect_isolated_mesh_nodes and np.any(counts == 0):
        lonely = np.flatnonzero(counts == 0)
        _, nearest = tree.query(mesh_xyz[lonely], k=1)
        for node, grid_index in zip(lonely, np.atleast_1d(nearest)):
            neighbours[node] = [int(grid_index)]
        counts[lonely] = 1
    senders = np.fromiter((g for n in neighbours for g in n), dtype=np.int64, count=int(counts.sum()))
    receivers = np.repeat(np.arange(len(mesh_xyz)), counts)
    return senders.astype(np.int32), receivers.astype(np.int32)


def containing_triangles(
    points_xyz: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mesh face containing each unit vector, with barycentric weights.

    Returns `(face_index [P] int64, weights [P, 3] float64)`; weights are in the
    order of `faces[face_index]`, sum to one, and are all >= -1e-9. Raises
    RuntimeError if some point is not contained in any face (a broken mesh).
    """
    corners = vertices[faces]  # [F, 3 (corner), 3 (xyz)]
    # Columns of M are the corners; inverse maps p to its cone coefficients.
    inverse = np.linalg.inv(np.transpose(corners, (0, 2, 1)))
    centroids = corners.mean(axis=1)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    tree = cKDTree(centroids)
    n_candidates = min(_CANDIDATE_FACES, len(faces))
    face_index = np.empty(len(points_xyz), dtype=np.int64)
    weights = np.empty((len(points_xyz), 3), dtype=np.float64)
    for start in range(0, len(points_xyz), _GRID_CHUNK):
        points = points_xyz[start:start + _GRID_CHUNK]
        _, candidates = tree.query(points, k=n_candidates)
        coefficients = np.einsum("pkij,pj->pki", inverse[candidates], points)
        best = np.argmax(coefficients.min(axis=-1), axis=1)
        rows = np.arange(len(points))
        chosen = coefficients[rows, best]
        face_index[start:start + len(points)] = candidates[rows, best]
        weights[start:start + len(points)] = chosen / chosen.sum(axis=-1, keepdims=True)
    missing = np.flatnonzero(weights.min(axis=-1) < -_CONTAINMENT_TOLERANCE)
    if missing.size:
        # Fall back to testing every face for the (rare) points the nearest candidates missed.
        for point in missing:
            coefficients = inverse @ points_xyz[point]
            best = int(np.argmax(coefficients.min(axis=-1)))
            face_index[point] = best
            weights[point] = coefficients[best] / coefficients[best].sum()
        if np.any(weights[missing].min(axis=-1) < -_CONTAINMENT_TOLERANCE):
            raise RuntimeError("some grid points lie in no mesh triangle: the mesh does not cover the sphere")
    return face_index, weights


def containing_triangle_edges(
    grid_xyz: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mesh -> grid edges: the 3 vertices of each grid point's containing triangle.

    Returns `(mesh_senders [3G] int32, grid_receivers [3G] int32, weights [G, 3])`;
    edges 3g, 3g+1, 3g+2 belong to grid point g, in the order of the weights.
    """
    face_index, weights = containing_triangles(grid_xyz, vertices, faces)
    senders = np.asarray(faces)[face_index].reshape(-1)
    receivers = np.repeat(np.arange(len(grid_xyz)), 3)
    return senders.astype(np.int32), receivers.astype(np.int32), weights
