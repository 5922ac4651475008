"""Writing the simulated dataset as an ERA5 / WeatherBench2 64x32 zarr store.

Layout as the WB2 `1959-2023_01_10-6h-64x32_equiangular_conservative.zarr`
store: dims `(time, level, longitude, latitude)` (surface variables
`(time, longitude, latitude)`, static ones `(longitude, latitude)`), latitude
ascending, `level` in hPa, one time step per chunk, float32, CF attributes from
the WB2 variable table. Zarr format 2 with consolidated metadata, so
`xarray.open_zarr(path, consolidated=True)` reads it (and so does any
WB2-style loader). The store is written chunk by chunk into a temporary
sibling and renamed into place at the end (`io_utils.atomic_path`).

Global attributes record the simulation config and a hash of everything that
decides the stored values (`gencast_rmmd_simulation_hash`), so `simulate` can
recognise a store it already made.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from gencast_rmmd.config import SimulationConfig
from gencast_rmmd.data.simulator.cache import short_hash, versioned_description
from gencast_rmmd.data.simulator.diagnostics import (
    ATMOSPHERIC_VARIABLES, STANDARD_LAPSE_RATE, SURFACE_VARIABLES, WB2_LATITUDES_32, WB2_LONGITUDES_64)
from gencast_rmmd.data.variables import cf_attributes

STORE_HASH_ATTR = "gencast_rmmd_simulation_hash"
STORE_CONFIG_ATTR = "gencast_rmmd_simulation"
# Fields that change how a store is produced or cached, never its values.
_NOT_IN_STORE_HASH = {"cache_dir", "chunk_days"}


def output_times(config: SimulationConfig) -> pd.DatetimeIndex:
    """The stored times: `days` of `output_hours`-hourly states from `start` (the end of the spin-up)."""
    count = round(config.days * 24 / config.output_hours)
    return pd.date_range(pd.Timestamp(config.start), periods=count, freq=pd.Timedelta(hours=config.output_hours))


def store_description(config: SimulationConfig) -> dict:
    """Everything that decides the stored values: the config (less cache/chunking) and code versions."""
    return versioned_description(config.model_dump(mode="json", exclude=_NOT_IN_STORE_HASH))


def store_hash(config: SimulationConfig) -> str:
    """The identity of the store `config` produces: `short_hash(store_description(config))`."""
    return short_hash(store_description(config))


def existing_store_hash(path: Path) -> str | None:
    """The simulation hash recorded in the zarr store at `path`, or None if it is not one of ours."""
    if not path.exists():
        return None
    try:
        attributes = zarr.open_group(str(path), mode="r").attrs.asdict()
    except (FileNotFoundError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    value = attributes.get(STORE_HASH_ATTR)
    return str(value) if value is not None else None


def variable_comments(config: SimulationConfig) -> dict[str, str]:
    """How each stored variable is derived from the model (the `comment` attribute)."""
    lowest_sigma = 1.0 - 0.5 / config.sigma_layers
    lapse = f"{STANDARD_LAPSE_RATE * 1000:g} K/km"
    pressure_levels = (f"Interpolated linearly in ln(p) from the {config.sigma_layers} sigma layers; below the "
                       f"lowest layer (sigma={lowest_sigma:.3f})")
    return {
        "temperature": f"{pressure_levels} extrapolated along a {lapse} lapse rate; above the top layer constant.",
        "geopotential": (f"Hydrostatic geopotential of the model layers, {pressure_levels[0].lower()}"
                         f"{pressure_levels[1:]} extrapolated hydrostatically with a {lapse} lapse rate; "
                         "above the top layer isothermally."),
        "u_component_of_wind": f"{pressure_levels} and above the top layer held constant.",
        "v_component_of_wind": f"{pressure_levels} and above the top layer held constant.",
        "2m_temperature": (f"Stand-in: lowest-layer (sigma={lowest_sigma:.3f}) temperature carried down to the "
                           f"surface pressure along a {lapse} lapse rate."),
        "10m_u_component_of_wind": f"Stand-in: wind of the lowest model layer (sigma={lowest_sigma:.3f}).",
        "10m_v_component_of_wind": f"Stand-in: wind of the lowest model layer (sigma={lowest_sigma:.3f}).",
        "mean_sea_level_pressure": ("Surface pressure reduced to sea level, p_s (1 + gamma z_s / T_s)^(g / (R gamma)); "
                                    "equal to the surface pressure on this flat planet."),
        "geopotential_at_surface": "Flat planet: zero everywhere.",
        "land_sea_mask": "Aquaplanet: zero everywhere (no land).",
    }


def global_attributes(config: SimulationConfig) -> dict[str, str]:
    """The store's global attributes: provenance, the config and its hash."""
    return {
        "title": "gencast_rmmd embedded dataset: Held-Suarez climate simulated with dinosaur",
        "source": (f"dinosaur {metadata.version('dinosaur')} dry primitive equations, T{config.truncation} "
                   f"spectral, {config.sigma_layers} equidistant sigma layers, Held & Suarez (1994) forcing, "
                   "flat aquaplanet, stochastic vorticity and heating forcing; truncated to T21 and evaluated "
                   "on the WeatherBench2 64x32 equiangular grid"),
        "Conventions": "CF-1.8",
        "time_origin_note": (f"the first stored time ({config.start}) is the end of a {config.spinup_days:g}-day "
                             "spin-up; there is no seasonal or diurnal cycle"),
        STORE_CONFIG_ATTR: json.dumps(store_description(config), sort_keys=True),
        STORE_HASH_ATTR: store_hash(config),
    }


class ZarrStoreWriter:
    """Appends chunks of simulated fields along `time` to a zarr store at `path` (a fresh directory).

    The first `append` writes coordinates, static fields and attributes; later
    ones extend the time axis. Fields are float32 arrays shaped
    `(time, level, longitude, latitude)` or `(time, longitude, latitude)`.
    """

    def __init__(self, path: Path, config: SimulationConfig, static: dict[str, np.ndarray]):
        self.path = Path(path)
        self.config = config
        self.static = static
        self.comments = variable_comments(config)
        self.attributes = global_attributes(config)
        self.times_written = 0

    def _dataset(self, fields: dict[str, np.ndarray], times: pd.DatetimeIndex, with_static: bool) -> xr.Dataset:
        data_vars = {}
        for name, values in fields.items():
            dims = (("time", "level", "longitude", "latitude") if name in ATMOSPHERIC_VARIABLES
                    else ("time", "longitude", "latitude"))
            data_vars[name] = (dims, np.asarray(values, dtype=np.float32),
                               {**cf_attributes(name), "comment": self.comments[name]})
        if with_static:
            for name, values in self.static.items():
                data_vars[name] = (("longitude", "latitude"), np.asarray(values, dtype=np.float32),
                                   {**cf_attributes(name), "comment": self.comments[name]})
        coords = {
            "time": ("time", times.values, {"standard_name": "time", "long_name": "time"}),
            "level": ("level", np.asarray(self.config.levels, dtype=np.int64),
                      {"units": "hPa", "long_name": "pressure level", "positive": "down"}),
            "longitude": ("longitude", WB2_LONGITUDES_64.astype(np.float64),
                          {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}),
            "latitude": ("latitude", WB2_LATITUDES_32.astype(np.float64),
                         {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}),
        }
        return xr.Dataset(data_vars, coords=coords, attrs=self.attributes)  # appends rewrite group attrs

    def append(self, fields: dict[str, np.ndarray], times: pd.DatetimeIndex) -> None:
        """Write the next `len(times)` stored times."""
        first = self.times_written == 0
        dataset = self._dataset(fields, times, with_static=first)
        if first:
            encoding = {name: {"chunks": (1, *dataset[name].shape[1:]) if "time" in dataset[name].dims
                               else dataset[name].shape}
                        for name in dataset.data_vars}
            encoding["time"] = {"units": f"hours since {pd.Timestamp(self.config.start).isoformat()}",
                                "calendar": "proleptic_gregorian", "dtype": "int64"}
            dataset.to_zarr(self.path, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
        else:
            dataset.drop_vars(["level", "longitude", "latitude"]).to_zarr(
                self.path, append_dim="time", zarr_format=2, consolidated=True)
        self.times_written += len(times)


ALL_VARIABLES: tuple[str, ...] = (*SURFACE_VARIABLES, *ATMOSPHERIC_VARIABLES)
