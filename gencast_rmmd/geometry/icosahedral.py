"""Icosahedral mesh on the unit sphere: finest refinement only, banded node order.

Conventions
- Vertices are unit vectors (x, y, z) with z towards the north pole and x towards
  latitude 0, longitude 0. The base icosahedron is rotated so that one vertex sits
  exactly on the north pole (and its antipode on the south pole).
- Refinement r splits every triangle into four (edge midpoints projected back onto
  the sphere): N = 10 * 4**r + 2 nodes, F = 20 * 4**r faces, 3N - 6 undirected edges.
  Only the finest level is kept (GenCast uses no multimesh).
- Faces are int triples ordered counter-clockwise seen from outside the sphere.
- By default nodes are renumbered with reverse Cuthill–McKee so the adjacency
  matrix is banded: neighbours have nearby indices, which is what the block-sparse
  k-hop attention in `attention_layout` exploits. Faces are re-indexed with the
  same permutation.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import ConvexHull

MAX_REFINEMENT = 8


def num_mesh_nodes(refinement: int) -> int:
    """Number of nodes of the icosahedral mesh at `refinement` (12, 42, 162, ...)."""
    return 10 * 4**refinement + 2


def _base_icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """The 12 unit vertices (one on each pole) and 20 outward-oriented faces."""
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    corners = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            corners += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    vertices = np.asarray(corners)
    vertices /= np.linalg.norm(vertices, axis=1, keepdims=True)
    # Rotate about the y axis so that the vertex (phi, 0, 1)/|.| lands on +z.
    top_index = int(np.argmax(phi * vertices[:, 0] + vertices[:, 2]))
    top = vertices[top_index]
    angle = np.arctan2(top[0], top[2])
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos_a, 0.0, -sin_a], [0.0, 1.0, 0.0], [sin_a, 0.0, cos_a]])
    vertices = vertices @ rotation.T
    # Make the poles exact, so grid points at latitude +-90 fall exactly on vertices.
    vertices[top_index] = (0.0, 0.0, 1.0)
    vertices[np.argmin(vertices[:, 2])] = (0.0, 0.0, -1.0)
    # Put the north-pole vertex first, then sort the rest by descending z (cosmetic).
    vertices = vertices[np.lexsort((np.arctan2(vertices[:, 1], vertices[:, 0]), -np.round(vertices[:, 2], 9)))]
    faces = ConvexHull(vertices).simplices
    return vertices, _orient_outward(vertices, faces)


def _orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Reorder each face's vertices so its normal points away from the origin."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    inward = np.einsum("fi,fi->f", np.cross(b - a, c - a), a + b + c) < 0
    faces = faces.copy()
    faces[inward] = faces[inward][:, ::-1]
    return faces.astype(np.int64)


def _subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split every face into four; new vertices are edge midpoints pushed onto the sphere."""
    corners = faces.T  # [3, F]: a, b, c
    # Edges opposite nothing in particular: ab, bc, ca for every face.
    edge_pairs = np.stack([corners, np.roll(corners, -1, axis=0)], axis=-1).reshape(-1, 2)
    edge_pairs = np.sort(edge_pairs, axis=1)
    unique_edges, edge_of = np.unique(edge_pairs, axis=0, return_inverse=True)
    midpoints = vertices[unique_edges[:, 0]] + vertices[unique_edges[:, 1]]
    midpoints /= np.linalg.norm(midpoints, axis=1, keepdims=True)
    midpoint_index = (len(vertices) + edge_of.reshape(3, -1))  # [3, F]: ab, bc, ca
    a, b, c = corners
    ab, bc, ca = midpoint_index
    new_faces = np.concatenate(
        [np.stack(f, axis=1) for f in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))]
    )
    return np.concatenate([vertices, midpoints]), new_faces


def faces_to_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (both directions) of a triangle mesh, sorted by (receiver, sender).

    Returns `(senders, receivers)` as int32 arrays of length 2 * (number of
    undirected edges), i.e. 2 * (3N - 6) for a closed triangulated sphere.
    """
    corners = np.asarray(faces).T
    pairs = np.stack([corners, np.roll(corners, -1, axis=0)], axis=-1).reshape(-1, 2)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    directed = np.concatenate([pairs, pairs[:, ::-1]])
    order = np.lexsort((directed[:, 0], directed[:, 1]))
    directed = directed[order]
    return directed[:, 0].astype(np.int32), directed[:, 1].astype(np.int32)


def adjacency_matrix(senders: np.ndarray, receivers: np.ndarray, num_nodes: int) -> sparse.csr_matrix:
    """Boolean CSR adjacency A with A[receiver, sender] = True (no self-loops added)."""
    data = np.ones(len(senders), dtype=bool)
    matrix = sparse.csr_matrix((data, (receivers, senders)), shape=(num_nodes, num_nodes))
    matrix.sum_duplicates()
    return matrix


def bandwidth(senders: np.ndarray, receivers: np.ndarray) -> int:
    """Bandwidth of an adjacency given as edges: max |sender - receiver| (0 if no edges)."""
    if len(senders) == 0:
        return 0
    return int(np.max(np.abs(np.asarray(senders, np.int64) - np.asarray(receivers, np.int64))))


def banded_permutation(faces: np.ndarray, num_nodes: int) -> np.ndarray:
    """Reverse Cuthill–McKee node order: `perm[new_index] = old_index`."""
    senders, receivers = faces_to_edges(faces)
    matrix = adjacency_matrix(senders, receivers, num_nodes)
    return np.asarray(csgraph.reverse_cuthill_mckee(matrix, symmetric_mode=True), dtype=np.int64)


def _check_refinement(refinement: int) -> int:
    if isinstance(refinement, bool) or not isinstance(refinement, (int, np.integer)):
        raise TypeError(f"refinement must be an integer, got {refinement!r}")
    if not 0 <= refinement <= MAX_REFINEMENT:
        raise ValueError(
            f"refinement must be between 0 and {MAX_REFINEMENT} (GenCast uses 6 at 0.25°), got {refinement}"
        )
    return int(refinement)


@functools.lru_cache(maxsize=16)
def _cached_mesh(refinement: int, banded: bool) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = _base_icosahedron()
    for _ in range(refinement):
        vertices, faces = _subdivide(vertices, faces)
    if banded:
        perm = banded_permutation(faces, len(vertices))
        new_index = np.empty_like(perm)
        new_index[perm] = np.arange(len(perm))
        vertices, faces = vertices[perm], new_index[faces]
    vertices = np.ascontiguousarray(vertices, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    vertices.setflags(write=False)
    faces.setflags(write=False)
    return vertices, faces


def icosahedral_mesh(refinement: int, banded: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Icosahedral mesh at `refinement`: (vertices [N, 3] float64 unit xyz, faces [F, 3] int32).

    N = 10 * 4**refinement + 2 (12, 42, 162, 642, 2562, 10242, 40962 for r = 0..6).
    With `banded=True` (default) nodes are in reverse Cuthill–McKee order; with
    `banded=False` they are in subdivision order (base vertices, then midpoints in
    order of creation), which is useful only to measure what the reordering buys.
    Results are cached and returned read-only.
    """
    return _cached_mesh(_check_refinement(refinement), bool(banded))
