"""Write forecast NetCDF step by step, in the WeatherBench2 forecast layout (CF-1.8).

Long rollouts never hold the whole forecast in memory: each 12 h step is
written as soon as it is computed. The file appears at its path only when
complete (written beside it, then renamed). Dims: `time` (initialisation),
`prediction_timedelta`, `number`, `level`, `latitude`, `longitude`, with a
`valid_time(time, prediction_timedelta)` coordinate; encodings match what
xarray writes, so `xarray.open_dataset` decodes times and leads.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping

import netCDF4
import numpy as np
import pandas as pd

from gencast_rmmd.data.forecast_io import MEMBER_DIM
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.variables import cf_attributes
from gencast_rmmd.io_utils import atomic_path

_EPOCH = pd.Timestamp("1970-01-01")
_HOURS = "hours since 1970-01-01 00:00:00"


class ForecastWriter:
    """Context manager: `with ForecastWriter(...) as writer: writer.write_step(lead_index, fields)`."""

    def __init__(self, path: str | os.PathLike, *, init_times: pd.DatetimeIndex, leads: pd.TimedeltaIndex,
                 members: int, layout: ChannelLayout, latitude: np.ndarray, longitude: np.ndarray,
                 attrs: Mapping[str, object] | None = None):
        self.path = Path(path)
        self.init_times, self.leads = pd.DatetimeIndex(init_times), pd.TimedeltaIndex(leads)
        self.members, self.layout = members, layout
        self.latitude, self.longitude = np.asarray(latitude), np.asarray(longitude)
        self.attrs = dict(attrs or {})
        self._stack = contextlib.ExitStack()
        self._file: netCDF4.Dataset | None = None

    def __enter__(self) -> "ForecastWriter":
        temporary = self._stack.enter_context(atomic_path(self.path))
        self._file = netCDF4.Dataset(temporary, "w", format="NETCDF4")
        self._stack.callback(self._close)
        self._define()
        return self

    def __exit__(self, *exc_info) -> bool:
        return self._stack.__exit__(*exc_info)

    def _close(self) -> None:
        if self._file is not None and self._file.isopen():
            self._file.close()

    def _coordinate(self, name, dims, values, datatype, attrs):
        variable = self._file.createVariable(name, datatype, dims)
        variable.setncatts(attrs)
        variable[:] = values

    def _define(self) -> None:
        nc, layout = self._file, self.layout
        sizes = {"time": len(self.init_times), "prediction_timedelta": len(self.leads), MEMBER_DIM: self.members,
                 "latitude": len(self.latitude), "longitude": len(self.longitude)}
        if layout.atmospheric:
            sizes["level"] = len(layout.levels)
        for dim, size in sizes.items():
            nc.createDimension(dim, size)
        init_hours = ((self.init_times - _EPOCH) / pd.Timedelta(hours=1)).to_numpy().astype(np.int64)
        lead_hours = (self.leads / pd.Timedelta(hours=1)).to_numpy().astype(np.int64)
        self._coordinate("time", ("time",), init_hours, "i8",
                         {"units": _HOURS, "calendar": "proleptic_gregorian", "long_name": "initialisation time"})
        self._coordinate("prediction_timedelta", ("prediction_timedelta",), lead_hours, "i8",
                         {"units": "hours", "dtype": "timedelta64[ns]", "long_name": "lead time"})
        self._coordinate("valid_time", ("time", "prediction_timedelta"), init_hours[:, None] + lead_hours[None, :],
                         "i8", {"units": _HOURS, "calendar": "proleptic_gregorian", "standard_name": "time",
                                "long_name": "valid time"})
        self._coordinate(MEMBER_DIM, (MEMBER_DIM,), np.arange(self.members), "i4",
                         {"long_name": "ensemble member", "standard_name": "realization"})
        self._coordinate("latitude", ("latitude",), self.latitude, "f8",
                         {"units": "degrees_north", "standard_name": "latitude"})
        self._coordinate("longitude", ("longitude",), self.longitude, "f8",
                         {"units": "degrees_east", "standard_name": "longitude"})
        if layout.atmospheric:
            self._coordinate("level", ("level",), np.asarray(layout.levels, np.int64), "i8",
                             {"units": "hPa", "long_name": "pressure level", "positive": "down"})
        grid = ("latitude", "longitude")
        lead_dims = ("time", "prediction_timedelta", MEMBER_DIM)
        for name in (*layout.surface, *layout.target_only):
            self._field(name, (*lead_dims, *grid))
        for name in layout.atmospheric:
            self._field(name, (*lead_dims, "level", *grid))
        nc.setncatts({"Conventions": "CF-1.8", **{key: _attribute(value) for key, value in self.attrs.items()}})

    def _field(self, name: str, dims: tuple[str, ...]) -> None:
        chunks = [1 if dim in ("time", "prediction_timedelta", MEMBER_DIM) else len(self._file.dimensions[dim])
                  for dim in dims]
        variable = self._file.createVariable(name, "f4", dims, zlib=True, complevel=1, chunksizes=chunks,
                                             fill_value=np.float32(np.nan))
        variable.setncatts({**cf_attributes(name), "coordinates": "valid_time"})

    def write_step(self, lead_index: int, fields: Mapping[str, np.ndarray], init_slice: slice = slice(None)) -> None:
        """Write one lead for the inits in `init_slice`.

        `fields[name]` is `[n_init, member, lat, lon]` or `[n_init, member, level, lat, lon]`.
        """
        for name, values in fields.items():
            self._file[name][init_slice, lead_index] = np.asarray(values, dtype=np.float32)
        self._file.sync()


def _attribute(value: object) -> object:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    return str(value)
