"""The forecast file layout (WeatherBench2 forecast layout, CF-1.8) shared by every writer.

Dims: `time` (initialisation), `prediction_timedelta` (lead), `number`
(ensemble member), `level` (hPa, pressure-level variables only), `latitude`
(ascending), `longitude`. A 2-D `valid_time = time + prediction_timedelta`
coordinate is attached. Model forecasts, the simulator's perfect-model
reference ensemble and the truth-only baselines all go through `forecast_dataset`
and `write_forecast`, so the evaluation reads one layout.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.data.variables import cf_attributes
from gencast_rmmd.io_utils import write_netcdf_atomic

MEMBER_DIM = "number"
MEMBER_DIM_ALIASES: tuple[str, ...] = ("number", "realization", "member", "sample", "ensemble")


def forecast_dataset(
    fields: Mapping[str, np.ndarray],
    *,
    init_times: np.ndarray | pd.DatetimeIndex,
    leads: np.ndarray | pd.TimedeltaIndex,
    latitude: np.ndarray,
    longitude: np.ndarray,
    levels: np.ndarray | None = None,
    members: np.ndarray | None = None,
    attrs: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """Build a forecast Dataset from plain arrays.

    Each array in `fields` is shaped `(time, prediction_timedelta, number,
    [level,] latitude, longitude)`; the level axis is present iff the array
    has 6 dims. `members` defaults to 0..M-1. Units and standard names come
    from the WB2 variable table.
    """
    init_times = pd.DatetimeIndex(init_times)
    leads = pd.TimedeltaIndex(leads)
    data_vars = {}
    member_count = None
    for name, values in fields.items():
        values = np.asarray(values)
        dims = ["time", "prediction_timedelta", MEMBER_DIM, "latitude", "longitude"]
        if values.ndim == 6:
            dims.insert(3, "level")
        elif values.ndim != 5:
            raise ValueError(f"{name}: expected 5 or 6 dims, got shape {values.shape}")
        member_count = values.shape[2]
        data_vars[name] = (dims, values, cf_attributes(name))
    coords = {
        "time": ("time", init_times.values, {"long_name": "initialisation time"}),
        "prediction_timedelta": ("prediction_timedelta", leads.values, {"long_name": "lead time"}),
        MEMBER_DIM: (MEMBER_DIM, np.arange(member_count) if members is None else np.asarray(members),
                     {"long_name": "ensemble member", "standard_name": "realization"}),
        "latitude": ("latitude", np.asarray(latitude, dtype=np.float64),
                     {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", np.asarray(longitude, dtype=np.float64),
                      {"units": "degrees_east", "standard_name": "longitude"}),
    }
    if levels is not None:
        coords["level"] = ("level", np.asarray(levels), {"units": "hPa", "long_name": "pressure level",
                                                           "positive": "down"})
    dataset = xr.Dataset(data_vars, coords=coords)
    return annotate_forecast(dataset, attrs)


def annotate_forecast(dataset: xr.Dataset, attrs: Mapping[str, object] | None = None) -> xr.Dataset:
    """Attach `valid_time`, CF-1.8 conventions and per-variable CF attributes."""
    dataset = dataset.assign_coords(valid_time=dataset["time"] + dataset["prediction_timedelta"])
    dataset["valid_time"].attrs.update({"long_name": "valid time", "standard_name": "time"})
    for name in dataset.data_vars:
        for key, value in cf_attributes(str(name)).items():
            dataset[name].attrs.setdefault(key, value)
    dataset.attrs.update({"Conventions": "CF-1.8"})
    dataset.attrs.update({key: _attribute_value(value) for key, value in (attrs or {}).items()})
    return dataset


def _attribute_value(value: object) -> object:
    """NetCDF attributes hold strings and numbers only."""
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, bool):
        return int(value)
    return str(value)


def write_forecast(dataset: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a forecast Dataset to NetCDF-4 atomically, float32 and compressed, one chunk per field."""
    encoding = {}
    for name, variable in dataset.data_vars.items():
        chunks = tuple(1 if dim in ("time", "prediction_timedelta", MEMBER_DIM) else size
                       for dim, size in variable.sizes.items())
        encoding[name] = {"dtype": "float32", "zlib": True, "complevel": 1, "chunksizes": chunks}
    write_netcdf_atomic(dataset, path, encoding=encoding)
