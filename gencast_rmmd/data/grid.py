"""Grid geometry shared by the model's loss and the evaluation: latitude cell-area weights."""

from __future__ import annotations

import numpy as np


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
    ascending = latitude[order]
    midpoints = (ascending[1:] + ascending[:-1]) / 2.0
    bounds = np.deg2rad(np.concatenate([[-90.0], midpoints, [90.0]]))
    weights_sorted = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights = np.empty_like(weights_sorted)
    weights[order] = weights_sorted
    return weights / weights.mean()
