"""Derived forcings (GenCast `data_utils`): year and day progress as sin/cos.

- year progress = frac(seconds since 1970-01-01 / seconds in an average year
  (365.24219 days)), the same at every grid point;
- day progress = frac(seconds since epoch / 86400 + longitude / 360), local
  solar time, so it varies with longitude.
Each is encoded as sin(2 pi p) and cos(2 pi p). Nothing is stored: forcings
are computed from the target time and the grid.
"""

from __future__ import annotations

import numpy as np

from gencast_rmmd.data.variables import FORCING_NAMES

SECONDS_PER_DAY = 86_400.0
AVERAGE_SECONDS_PER_YEAR = SECONDS_PER_DAY * 365.24219


def _seconds_since_epoch(times: np.ndarray) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[s]").astype(np.int64).astype(np.float64)


def year_progress(times: np.ndarray) -> np.ndarray:
    """Fraction of the (average) year elapsed at each time, in [0, 1). Shape: times.shape."""
    return np.mod(_seconds_since_epoch(times) / AVERAGE_SECONDS_PER_YEAR, 1.0)


def day_progress(times: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Local fraction of the day at each time and longitude (degrees east), in [0, 1).

    Shape: `times.shape + longitude.shape`.
    """
    greenwich = np.mod(_seconds_since_epoch(times) / SECONDS_PER_DAY, 1.0)
    return np.mod(greenwich[..., None] + np.asarray(longitude, dtype=np.float64) / 360.0, 1.0)


def forcing_channels(times: np.ndarray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Forcings on the grid, float32, shape `(len(times), lat, lon, 4)` in `FORCING_NAMES` order."""
    times = np.atleast_1d(np.asarray(times))
    n_lat, n_lon = len(latitude), len(longitude)
    year = 2.0 * np.pi * year_progress(times)                       # [T]
    day = 2.0 * np.pi * day_progress(times, longitude)              # [T, lon]
    shape = (len(times), n_lat, n_lon)
    channels = [
        np.broadcast_to(np.sin(year)[:, None, None], shape),
        np.broadcast_to(np.cos(year)[:, None, None], shape),
        np.broadcast_to(np.sin(day)[:, None, :], shape),
        np.broadcast_to(np.cos(day)[:, None, :], shape),
    ]
    assert len(channels) == len(FORCING_NAMES)
    return np.stack(channels, axis=-1).astype(np.float32)
