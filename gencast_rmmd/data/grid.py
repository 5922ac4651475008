"""Grid geometry shared by the model's loss, the distillation diagnostics and the evaluation (latitude
cell-area weights, the one-sided zonal power spectrum), and the check that a store lies on the grid a model
was trained on."""

from __future__ import annotations

import numpy as np

from gencast_rmmd.errors import UserInputError


def latitude_bounds(ascending: np.ndarray) -> np.ndarray:
    """Band bounds [n + 1] (degrees) of ascending latitude centres: [-90°, midpoints, +90°] (the bands tile the
    sphere; on a grid with poles the polar bands are half-height)."""
    ascending = np.asarray(ascending, dtype=np.float64)
    return np.concatenate([[-90.0], (ascending[1:] + ascending[:-1]) / 2.0, [90.0]])


def latitude_cell_weights(latitude: np.ndarray) -> np.ndarray:
    """Cell-area weights of a latitude grid (degrees, any order), normalised to mean 1.

    With the grid sorted ascending, cell bounds are [-90°, midpoints, +90°] and
    w_j = sin(φ_{j+½}) − sin(φ_{j−½}); the result is w / mean(w), returned in the
    order of `latitude`. On an equiangular grid whose outer cells end at the
    poles this is cos(φ_j)/mean(cos φ), because sin(φ+Δ/2) − sin(φ−Δ/2) = 2·cos φ·sin(Δ/2).
    (WeatherBench2 `metrics.py`; GenCast eq. A.6.)
    """
    latitude = np.asarray(latitude, dtype=np.float64)
    order = np.argsort(latitude)
    bounds = np.deg2rad(latitude_bounds(latitude[order]))
    weights_sorted = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights = np.empty_like(weights_sorted)
    weights[order] = weights_sorted
    return weights / weights.mean()


def zonal_power(values: np.ndarray) -> np.ndarray:
    """One-sided power per zonal wavenumber of `values` along its last (longitude) axis: [..., N // 2 + 1].

    P_k = c_k |F_k|² / N² with c_k = 2 for 0 < k < N/2 (k and −k) and 1 for k = 0 and the Nyquist k = N/2,
    so Σ_k P_k = mean over longitude of values² (Parseval; units: those of values, squared).
    """
    count = values.shape[-1]
    power = np.abs(np.fft.rfft(np.asarray(values, dtype=np.float64), axis=-1)) ** 2 / count**2
    power[..., 1:(count + 1) // 2] *= 2.0
    return power


def _grid_name(latitude: np.ndarray, longitude: np.ndarray) -> str:
    """`64x32` (longitude x latitude points, WeatherBench2's naming)."""
    return f"{len(longitude)}x{len(latitude)}"


def check_same_grid(found: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray],
                    store: str, model: str) -> None:
    """Refuse a store whose (latitude, longitude) axes (degrees) are not the ones `model` was trained on.

    The network's graphs and the diffusion noise are built for one grid, so
    another one is bad input: `UserInputError` naming both grids. Sizes are
    compared first (axes of other lengths cannot be compared point by point),
    then the coordinates (`np.allclose`, so coordinates stored in float32
    pass). `store` names the store, `model` what was trained on the expected
    grid ("the checkpoint", "the teacher").
    """
    found_axes = tuple(np.asarray(axis, dtype=np.float64) for axis in found)
    expected_axes = tuple(np.asarray(axis, dtype=np.float64) for axis in expected)
    found_name, expected_name = _grid_name(*found_axes), _grid_name(*expected_axes)
    if any(a.shape != b.shape for a, b in zip(found_axes, expected_axes)):
        raise UserInputError(f"{store} has a {found_name} grid (longitude x latitude); {model} was trained on "
                             f"{expected_name}; give a store on the {expected_name} grid")
    for axis, found_axis, expected_axis in zip(("latitude", "longitude"), found_axes, expected_axes):
        if not np.allclose(found_axis, expected_axis):
            raise UserInputError(
                f"{store} has a {found_name} grid with {axis} {found_axis[0]:g}..{found_axis[-1]:g}; {model} was "
                f"trained on {expected_name} with {axis} {expected_axis[0]:g}..{expected_axis[-1]:g}; give a "
                f"store on the model's grid")
