"""Coordinates on the unit sphere and GraphCast-style node and edge features.

Conventions
- Latitude/longitude in degrees; unit-sphere xyz with
  x = cos(lat) cos(lon), y = cos(lat) sin(lon), z = sin(lat).
- Node structural features: (sin lat, cos lon, sin lon), float32.
- Edge features, float32 [E, 4] = (distance, dx, dy, dz) / max_distance, where
  * distance is the CHORD length |p_sender - p_receiver| on the unit sphere
    (chord = 2 sin(arc / 2), arc = great-circle angle in radians);
  * (dx, dy, dz) is the displacement p_sender - p_receiver expressed in the
    receiver's local frame: the rotation that carries the receiver to latitude 0,
    longitude 0, i.e. Ry(lat_r) @ Rz(-lon_r), is applied to both endpoints. In that
    frame the receiver sits at (1, 0, 0); x is the local "up" (radial), y points
    east and z points north. |(dx, dy, dz)| == distance;
  * max_distance is the largest chord of that edge set (GraphCast normalisation),
    so every feature lies in [-1, 1] and column 0 in (0, 1].
  The frame depends only on the receiver's position and the polar axis, so the
  features are unchanged by any rotation of the whole graph about the polar axis
  (a longitude shift), except at a receiver exactly on a pole, where longitude
  is undefined and taken as 0; a north-south reflection flips the sign of dz.
"""

from __future__ import annotations

import numpy as np


def latlon_to_xyz(latitude_deg: np.ndarray, longitude_deg: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] (float64) for latitude/longitude in degrees (same shape)."""
    lat = np.deg2rad(np.asarray(latitude_deg, dtype=np.float64))
    lon = np.deg2rad(np.asarray(longitude_deg, dtype=np.float64))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def xyz_to_latlon(xyz: np.ndarray) -> np.ndarray:
    """[..., 2] (latitude in [-90, 90], longitude in [0, 360)) in degrees for unit vectors [..., 3]."""
    xyz = np.asarray(xyz, dtype=np.float64)
    lat = np.rad2deg(np.arcsin(np.clip(xyz[..., 2], -1.0, 1.0)))
    lon = np.mod(np.rad2deg(np.arctan2(xyz[..., 1], xyz[..., 0])), 360.0)
    lon = np.where(lon >= 360.0, 0.0, lon)  # mod can round -tiny up to exactly 360
    return np.stack([lat, lon], axis=-1)


def node_structural_features(latitude_deg: np.ndarray, longitude_deg: np.ndarray) -> np.ndarray:
    """[n, 3] float32 (sin lat, cos lon, sin lon) for 1-D latitude/longitude arrays in degrees."""
    lat = np.deg2rad(np.asarray(latitude_deg, dtype=np.float64))
    lon = np.deg2rad(np.asarray(longitude_deg, dtype=np.float64))
    return np.stack([np.sin(lat), np.cos(lon), np.sin(lon)], axis=-1).astype(np.float32)


def rotations_to_reference(xyz: np.ndarray) -> np.ndarray:
    """[n, 3, 3] rotations R with R @ p = (1, 0, 0) for each unit vector p in [n, 3].

    R = Ry(lat) @ Rz(-lon): first turn about the polar axis to longitude 0, then
    tilt about the y axis down to the equator. At a pole longitude is taken as
    atan2(0, 0) = 0, which still gives a valid rotation.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    lon = np.arctan2(xyz[:, 1], xyz[:, 0])
    lat = np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0))
    cos_lon, sin_lon = np.cos(lon), np.sin(lon)
    cos_lat, sin_lat = np.cos(lat), np.sin(lat)
    zeros, ones = np.zeros_like(lon), np.ones_like(lon)
    rz = np.stack(
        [np.stack([cos_lon, sin_lon, zeros], -1), np.stack([-sin_lon, cos_lon, zeros], -1),
         np.stack([zeros, zeros, ones], -1)],
        axis=-2,
    )
    ry = np.stack(
        [np.stack([cos_lat, zeros, sin_lat], -1), np.stack([zeros, ones, zeros], -1),
         np.stack([-sin_lat, zeros, cos_lat], -1)],
        axis=-2,
    )
    return ry @ rz


def chord_to_arc(chord: np.ndarray) -> np.ndarray:
    """Great-circle angle (radians) between unit vectors separated by `chord`."""
    return 2.0 * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0))


def relative_positions_in_receiver_frame(
    sender_xyz: np.ndarray, receiver_xyz: np.ndarray, senders: np.ndarray, receivers: np.ndarray
) -> np.ndarray:
    """[E, 3] float64 displacement p_sender - p_receiver in each receiver's local frame.

    `sender_xyz`/`receiver_xyz` are the node positions of the sending and receiving
    node sets (they may be the same array); `senders`/`receivers` index them.
    Rotations are computed once per receiving node, not per edge.
    """
    rotations = rotations_to_reference(receiver_xyz)
    displacement = sender_xyz[senders] - receiver_xyz[receivers]
    return np.einsum("eij,ej->ei", rotations[receivers], displacement)


def edge_features(
    sender_xyz: np.ndarray, receiver_xyz: np.ndarray, senders: np.ndarray, receivers: np.ndarray
) -> tuple[np.ndarray, float]:
    """GraphCast-normalised edge features and the normaliser.

    Returns `(features [E, 4] float32, max_chord)` with features
    (chord, dx, dy, dz) / max_chord as described in the module docstring.
    """
    local = relative_positions_in_receiver_frame(sender_xyz, receiver_xyz, senders, receivers)
    chord = np.linalg.norm(sender_xyz[senders] - receiver_xyz[receivers], axis=-1)
    max_chord = float(chord.max()) if len(chord) else 1.0
    if max_chord <= 0.0:
        max_chord = 1.0  # only coincident endpoints: leave features at zero
    features = np.concatenate([chord[:, None], local], axis=-1) / max_chord
    return features.astype(np.float32), max_chord
