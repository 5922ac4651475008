"""Properties of the icosahedral mesh, grid<->mesh graphs, edge features and k-hop attention layouts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import csgraph

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.geometry import (
    attention_layout,
    bandwidth,
    build_graphs,
    connectivity,
    features,
    icosahedral_mesh,
    khop_band_layout,
    khop_block_layout,
    khop_mask,
)
from gencast_rmmd.geometry.icosahedral import adjacency_matrix, faces_to_edges

WB2_64X32 = (np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625)
WITH_POLES_3DEG = (np.linspace(-90.0, 90.0, 61), np.arange(120) * 3.0)


def _rotation_about_pole(angle_deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("refinement, n_nodes", [(0, 12), (1, 42), (2, 162), (3, 642), (4, 2562), (5, 10242)])
def test_mesh_counts_and_unit_vertices(refinement, n_nodes):
    vertices, faces = icosahedral_mesh(refinement)
    senders, receivers = faces_to_edges(faces)
    assert vertices.shape == (n_nodes, 3)
    assert faces.shape == (20 * 4**refinement, 3)
    assert len(senders) == 2 * (3 * n_nodes - 6)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 1.0, atol=1e-12)
    assert np.unique(np.round(vertices, 9), axis=0).shape[0] == n_nodes  # no duplicate vertices


@pytest.mark.parametrize("refinement", [0, 2, 3])
def test_faces_are_outward_triangles_of_mutual_neighbours(refinement):
    vertices, faces = icosahedral_mesh(refinement)
    senders, receivers = faces_to_edges(faces)
    edges = set(zip(senders.tolist(), receivers.tolist()))
    for a, b, c in faces.tolist():
        assert {(a, b), (b, a), (b, c), (c, b), (c, a), (a, c)} <= edges
    # Closed surface: every undirected edge borders exactly two faces.
    pairs = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(pairs, axis=0, return_counts=True)
    assert np.all(counts == 2)
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    assert np.all(np.einsum("fi,fi->f", np.cross(b - a, c - a), a) > 0)


@pytest.mark.parametrize("refinement", [3, 4, 5])
def test_reordering_makes_adjacency_banded(refinement):
    natural_vertices, natural_faces = icosahedral_mesh(refinement, banded=False)
    vertices, faces = icosahedral_mesh(refinement)
    before = bandwidth(*faces_to_edges(natural_faces))
    after = bandwidth(*faces_to_edges(faces))
    assert after * 10 < before
    assert after <= 4 * np.sqrt(len(vertices))  # O(sqrt N): rings of a sphere
    # Same mesh, only renumbered.
    key = lambda v: v[np.lexsort(np.round(v, 9).T)]  # noqa: E731
    np.testing.assert_allclose(key(vertices), key(natural_vertices), atol=1e-12)


def test_poles_are_mesh_vertices():
    vertices, _ = icosahedral_mesh(2)
    assert np.any(np.all(vertices == (0.0, 0.0, 1.0), axis=1))
    assert np.any(np.all(vertices == (0.0, 0.0, -1.0), axis=1))


@pytest.mark.parametrize("grid", [WB2_64X32, WITH_POLES_3DEG], ids=["64x32", "3deg_with_poles"])
@pytest.mark.parametrize("refinement", [1, 3])
def test_every_grid_point_reads_its_containing_triangle(grid, refinement):
    graphs = build_graphs(*grid, refinement)
    n_grid = len(grid[0]) * len(grid[1])
    assert graphs.mesh2grid_senders.shape == (3 * n_grid,)
    np.testing.assert_array_equal(graphs.mesh2grid_receivers, np.repeat(np.arange(n_grid), 3))
    assert np.bincount(graphs.mesh2grid_receivers, minlength=n_grid).min() == 3
    # Independent containment check: p = M @ coefficients with M's columns the 3 vertices.
    corners = graphs.mesh_vertices[graphs.mesh2grid_senders.reshape(-1, 3)]  # [G, 3, 3]
    points = features.latlon_to_xyz(graphs.grid_latlon[:, 0], graphs.grid_latlon[:, 1])
    coefficients = np.linalg.solve(np.transpose(corners, (0, 2, 1)), points[..., None])[..., 0]
    weights = coefficients / coefficients.sum(axis=1, keepdims=True)
    assert weights.min() >= -1e-9
    np.testing.assert_allclose(weights, graphs.mesh2grid_weights, atol=1e-9)


def test_containment_on_vertices_edges_and_poles():
    vertices, faces = icosahedral_mesh(2)
    senders, receivers = faces_to_edges(faces)
    midpoints = vertices[senders] + vertices[receivers]
    midpoints /= np.linalg.norm(midpoints, axis=1, keepdims=True)
    near_pole = features.latlon_to_xyz(np.array([89.9999999, -89.9999999, 90.0]), np.array([123.0, 7.0, 0.0]))
    points = np.concatenate([vertices, midpoints, near_pole])
    face_index, weights = connectivity.containing_triangles(points, vertices, faces)
    assert weights.min() >= -1e-9
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    # A point on a vertex is read with weight 1 from that vertex.
    on_vertex = weights[: len(vertices)]
    np.testing.assert_allclose(on_vertex.max(axis=1), 1.0, atol=1e-9)
    picked = faces[face_index[: len(vertices)], np.argmax(on_vertex, axis=1)]
    np.testing.assert_array_equal(picked, np.arange(len(vertices)))


@pytest.mark.parametrize("refinement", [2, 3, 4])
def test_every_mesh_node_receives_encoder_edges_on_64x32(refinement):
    graphs = build_graphs(*WB2_64X32, refinement)
    assert np.bincount(graphs.grid2mesh_receivers, minlength=graphs.n_mesh).min() >= 1


@pytest.mark.parametrize("refinement", [2, 4])
def test_encoder_edges_are_exactly_the_radius_ball_plus_nearest_fallback(refinement):
    graphs = build_graphs(*WB2_64X32, refinement)
    grid_xyz = features.latlon_to_xyz(graphs.grid_latlon[:, 0], graphs.grid_latlon[:, 1])
    chord = np.linalg.norm(graphs.mesh_vertices[:, None] - grid_xyz[None], axis=-1)  # [N, G] brute force
    in_ball = chord <= graphs.grid2mesh_radius
    expected = set(zip(*np.nonzero(in_ball.T)))  # (grid, mesh)
    for node in np.flatnonzero(~in_ball.any(axis=1)):  # isolated: nearest grid point only
        expected.add((int(np.argmin(chord[node])), int(node)))
    got = set(zip(graphs.grid2mesh_senders.tolist(), graphs.grid2mesh_receivers.tolist()))
    assert got == expected
    np.testing.assert_allclose(graphs.grid2mesh_radius, 0.6 * graphs.max_mesh_edge_chord)


def test_isolated_node_fallback_is_needed_and_optional_at_refinement_4():
    graphs = build_graphs(*WB2_64X32, 4, connect_isolated_mesh_nodes=False)
    assert np.bincount(graphs.grid2mesh_receivers, minlength=graphs.n_mesh).min() == 0


@pytest.mark.parametrize("edge_set", ["grid2mesh", "mesh2grid"])
def test_edge_features_are_normalised_chords_in_receiver_frame(edge_set):
    graphs = build_graphs(*WB2_64X32, 2)
    grid_xyz = features.latlon_to_xyz(graphs.grid_latlon[:, 0], graphs.grid_latlon[:, 1])
    mesh_xyz = graphs.mesh_vertices
    sender_xyz, receiver_xyz = {"grid2mesh": (grid_xyz, mesh_xyz), "mesh2grid": (mesh_xyz, grid_xyz)}[edge_set]
    senders, receivers = getattr(graphs, f"{edge_set}_senders"), getattr(graphs, f"{edge_set}_receivers")
    feats = getattr(graphs, f"{edge_set}_edge_features").astype(np.float64)
    normaliser = getattr(graphs, f"{edge_set}_edge_normaliser")
    chord = np.linalg.norm(sender_xyz[senders] - receiver_xyz[receivers], axis=1)
    np.testing.assert_allclose(feats[:, 0] * normaliser, chord, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(feats[:, 1:], axis=1), feats[:, 0], atol=1e-6)
    assert feats[:, 0].max() == pytest.approx(1.0)
    # Great-circle relation: chord = 2 sin(arc / 2).
    arc = np.arccos(np.clip(np.einsum("ei,ei->e", sender_xyz[senders], receiver_xyz[receivers]), -1, 1))
    np.testing.assert_allclose(features.chord_to_arc(chord), arc, atol=1e-6)


def test_local_frame_axes_and_invariance_under_rotation_about_the_pole():
    vertices, faces = icosahedral_mesh(2)
    senders, receivers = faces_to_edges(faces)
    local = features.relative_positions_in_receiver_frame(vertices, vertices, senders, receivers)
    rotated = vertices @ _rotation_about_pole(37.0).T
    rotated_local = features.relative_positions_in_receiver_frame(rotated, rotated, senders, receivers)
    # Exactly at a pole longitude is undefined (taken as 0): the frame there turns with the mesh.
    off_pole = np.abs(vertices[receivers, 2]) < 1.0
    assert 0 < np.sum(~off_pole) <= 10
    np.testing.assert_allclose(rotated_local[off_pole], local[off_pole], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(rotated_local, axis=1), np.linalg.norm(local, axis=1), atol=1e-12)
    # North-south reflection flips only the northward component.
    mirrored = vertices * (1.0, 1.0, -1.0)
    np.testing.assert_allclose(
        features.relative_positions_in_receiver_frame(mirrored, mirrored, senders, receivers),
        local * (1.0, 1.0, -1.0), atol=1e-12,
    )
    # Frame axes at a receiver: x up, y east, z north.
    receiver = features.latlon_to_xyz(np.array([40.0]), np.array([200.0]))
    neighbours = features.latlon_to_xyz(np.array([40.0, 41.0, 40.0]), np.array([201.0, 200.0, 200.0]))
    offsets = features.relative_positions_in_receiver_frame(neighbours, receiver, np.arange(3), np.zeros(3, int))
    assert offsets[0, 1] > 0 and abs(offsets[0, 2]) < 1e-2  # east
    assert offsets[1, 2] > 0 and abs(offsets[1, 1]) < 1e-12  # north
    np.testing.assert_allclose(offsets[2], 0.0, atol=1e-15)
    np.testing.assert_allclose(features.rotations_to_reference(receiver)[0] @ receiver[0], (1, 0, 0), atol=1e-15)


def test_node_features_and_mesh_latlon():
    graphs = build_graphs(*WB2_64X32, 2)
    lat, lon = np.deg2rad(graphs.grid_latlon).T
    expected = np.stack([np.sin(lat), np.cos(lon), np.sin(lon)], axis=1)
    np.testing.assert_allclose(graphs.grid_node_features, expected, atol=1e-6)
    # Lat-major flattening: g = i_lat * n_lon + i_lon.
    assert tuple(graphs.grid_latlon[1 * 64 + 5]) == (WB2_64X32[0][1], WB2_64X32[1][5])
    np.testing.assert_allclose(
        features.latlon_to_xyz(graphs.mesh_latlon[:, 0], graphs.mesh_latlon[:, 1]), graphs.mesh_vertices, atol=1e-12
    )
    assert graphs.mesh_node_features.dtype == np.float32 and graphs.grid2mesh_edge_features.dtype == np.float32
    assert graphs.mesh_senders.dtype == np.int32 and graphs.grid2mesh_senders.dtype == np.int32


def test_bad_grid_is_rejected_with_a_clear_error():
    with pytest.raises(UserInputError, match="ascending"):
        build_graphs(WB2_64X32[0][::-1], WB2_64X32[1], 2)
    with pytest.raises(UserInputError, match="repeat"):
        build_graphs(WB2_64X32[0], np.array([0.0, 90.0, 360.0]), 2)
    with pytest.raises(ValueError, match="refinement"):
        build_graphs(*WB2_64X32, 11)


@pytest.mark.parametrize("refinement", [1, 3])
def test_khop_mask_properties(refinement):
    graphs = build_graphs(*WB2_64X32, refinement)
    adjacency = adjacency_matrix(graphs.mesh_senders, graphs.mesh_receivers, graphs.n_mesh).toarray()
    hops = csgraph.shortest_path(adjacency, unweighted=True)
    previous = None
    for k in (0, 1, 2, 4):
        mask = khop_mask(graphs, k)
        np.testing.assert_array_equal(mask, hops <= k)  # ((A + I)^k)_ij != 0 <=> at most k hops
        assert np.array_equal(mask, mask.T) and mask.diagonal().all()
        if previous is not None:
            assert not np.any(previous & ~mask)
            assert mask.sum() > previous.sum() or mask.all()
        previous = mask
    np.testing.assert_array_equal(khop_mask(graphs, 1), adjacency | np.eye(graphs.n_mesh, dtype=bool))


@pytest.mark.parametrize("block_size", [16, 50, 64, 1000])
def test_band_layout_reproduces_dense_mask(block_size):
    graphs = build_graphs(*WB2_64X32, 3)
    bands = khop_band_layout(graphs, 4, block_size)
    dense = khop_mask(graphs, 4)
    np.testing.assert_array_equal(bands.to_dense(), dense)
    starts = [window[0] for window in bands.windows]
    assert starts == list(range(0, graphs.n_mesh, block_size)) and bands.windows[-1][1] == graphs.n_mesh
    for (start, stop, key_start, key_stop), mask in zip(bands.windows, bands.masks):
        assert mask.shape == (stop - start, key_stop - key_start)
        assert mask[:, 0].any() and mask[:, -1].any()          # each window is the tightest span
    if block_size < graphs.n_mesh:
        assert dense.mean() < bands.fill < 1.0                  # the banded order pays off
    with pytest.raises(ValueError, match="block_size"):
        khop_band_layout(graphs, 4, 0)


@pytest.mark.parametrize("block_size", [16, 50, 64])
def test_block_layout_reproduces_dense_mask(block_size):
    graphs = build_graphs(*WB2_64X32, 3)
    layout = khop_block_layout(graphs, 4, block_size)
    dense = khop_mask(graphs, 4)
    np.testing.assert_array_equal(layout.to_dense(), dense)
    assert layout.n_allowed_pairs == dense.sum()
    n_blocks = -(-graphs.n_mesh // block_size)
    assert layout.block_masks.shape == (n_blocks, layout.max_key_blocks, block_size, block_size)
    valid = layout.key_block_valid
    assert not layout.block_masks[~valid].any()
    assert np.all(layout.key_blocks[~valid] == layout.pad_block)
    for q in range(n_blocks):
        keys = layout.key_blocks[q, : layout.n_key_blocks[q]]
        assert np.all(np.diff(keys) > 0) and q in keys
        assert layout.block_masks[q, : layout.n_key_blocks[q]].any(axis=(1, 2)).all()  # no empty listed block
    # Padded nodes attend only to themselves; every padded-matrix row has a key.
    b = block_size
    padded = np.zeros((n_blocks * b,) * 2, dtype=bool)
    for q in range(n_blocks):
        for s in range(layout.n_key_blocks[q]):
            kb = layout.key_blocks[q, s]
            padded[q * b:(q + 1) * b, kb * b:(kb + 1) * b] = layout.block_masks[q, s]
    n = graphs.n_mesh
    np.testing.assert_array_equal(padded[n:], np.eye(len(padded), dtype=bool)[n:])
    assert not padded[:n, n:].any()


def test_block_layout_disk_cache_round_trip(tmp_path):
    graphs = build_graphs(*WB2_64X32, 2)
    first = khop_block_layout(graphs, 3, 32, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    attention_layout._memory_cache.clear()
    second = khop_block_layout(graphs, 3, 32, cache_dir=tmp_path)
    assert second is not first
    for name in ("key_blocks", "key_block_valid", "n_key_blocks", "block_masks"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))


def test_dense_mask_refuses_large_meshes():
    vertices, faces = icosahedral_mesh(2)
    adjacency = adjacency_matrix(*faces_to_edges(faces), len(vertices))
    with pytest.raises(ValueError, match="khop_block_layout"):
        khop_mask(adjacency, 2, max_nodes=100)
