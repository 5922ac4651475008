"""Synthetic stores laid out like WeatherBench2's ERA5 zarr stores, for tests.

`era5_like(...)` builds a Dataset in the internal convention with smooth,
physically scaled fields; `write_store(...)` writes it in one of the layouts
found in the wild:
- "64x32": dims (time, level, longitude, latitude), latitude ascending (WB2 5.625 deg);
- "0p25": dims (time, level, latitude, longitude), latitude descending (WB2 0.25 deg);
- "latlon": coordinate names lat/lon, level in Pa, longitude in [-180, 180).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

LATITUDE_64x32 = np.linspace(-87.1875, 87.1875, 32)
LONGITUDE_64x32 = np.arange(64) * 5.625

SURFACE = ("2m_temperature", "mean_sea_level_pressure", "10m_u_component_of_wind", "10m_v_component_of_wind")
ATMOSPHERIC = ("temperature", "geopotential", "u_component_of_wind", "v_component_of_wind")
_SCALE = {"2m_temperature": (280.0, 10.0), "mean_sea_level_pressure": (101000.0, 1000.0),
          "10m_u_component_of_wind": (0.0, 5.0), "10m_v_component_of_wind": (0.0, 5.0),
          "sea_surface_temperature": (290.0, 5.0), "total_precipitation_6hr": (0.001, 0.001),
          "temperature": (250.0, 15.0), "geopotential": (50000.0, 3000.0),
          "u_component_of_wind": (10.0, 10.0), "v_component_of_wind": (0.0, 8.0)}


def era5_like(times: pd.DatetimeIndex, levels=(500, 850), *, surface=SURFACE, atmospheric=ATMOSPHERIC,
              extra_surface=(), latitude=LATITUDE_64x32, longitude=LONGITUDE_64x32, seed=0) -> xr.Dataset:
    """A Dataset in the internal convention: (time, level, latitude, longitude), lat ascending."""
    rng = np.random.default_rng(seed)
    n_t, n_lat, n_lon = len(times), len(latitude), len(longitude)
    lat_rad, lon_rad = np.deg2rad(latitude)[:, None], np.deg2rad(longitude)[None, :]
    hours = ((times - times[0]) / pd.Timedelta(hours=1)).to_numpy()[:, None, None]

    def field(name, extra_shape=()):
        mean, spread = _SCALE[name]
        phase = rng.uniform(0, 2 * np.pi)
        pattern = np.cos(lat_rad) * np.cos(lon_rad * rng.integers(1, 4) + phase + hours * 2 * np.pi / 96.0)
        base = mean + spread * pattern
        noise = 0.1 * spread * rng.standard_normal((n_t, *extra_shape, n_lat, n_lon))
        if extra_shape:
            base = base[:, None] * (1.0 + 0.01 * np.arange(extra_shape[0]))[None, :, None, None]
        return (base + noise).astype(np.float32)

    data_vars = {name: (("time", "latitude", "longitude"), field(name)) for name in (*surface, *extra_surface)}
    for name in atmospheric:
        data_vars[name] = (("time", "level", "latitude", "longitude"), field(name, (len(levels),)))
    land = (np.cos(3 * lon_rad) * np.cos(lat_rad) > 0.3).astype(np.float32) * np.ones((n_lat, 1), np.float32)
    if "sea_surface_temperature" in data_vars:
        sst = data_vars["sea_surface_temperature"][1]
        data_vars["sea_surface_temperature"] = (("time", "latitude", "longitude"),
                                                np.where(land[None] > 0, np.nan, sst).astype(np.float32))
    data_vars["geopotential_at_surface"] = (("latitude", "longitude"),
                                            (2000.0 * land + rng.uniform(0, 10, (n_lat, n_lon))).astype(np.float32))
    data_vars["land_sea_mask"] = (("latitude", "longitude"), land)
    return xr.Dataset(data_vars, coords={"time": times, "level": np.asarray(levels, dtype=np.int64),
                                         "latitude": latitude, "longitude": longitude})


def write_store(dataset: xr.Dataset, path: Path, layout: str = "64x32", zarr_format: int = 2,
                consolidated: bool = True) -> Path:
    """Write `dataset` to a zarr store at `path` in one of the WB2-like layouts."""
    if layout == "64x32":
        stored = dataset.transpose(*[d for d in ("time", "level", "longitude", "latitude") if d in dataset.dims])
    elif layout == "0p25":
        stored = dataset.isel(latitude=slice(None, None, -1)).transpose(
            *[d for d in ("time", "level", "latitude", "longitude") if d in dataset.dims])
    elif layout == "latlon":
        longitude = ((dataset["longitude"].values + 180.0) % 360.0) - 180.0
        stored = (dataset.assign_coords(longitude=longitude, level=dataset["level"].values * 100)
                  .sortby("longitude").rename({"latitude": "lat", "longitude": "lon"}))
    else:
        raise ValueError(layout)
    stored = stored.chunk({"time": 1}) if "time" in stored.dims else stored
    stored.to_zarr(path, mode="w", zarr_format=zarr_format, consolidated=consolidated)
    return path


def six_hourly(start="2001-01-01", days=6) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=days * 4, freq="6h")
