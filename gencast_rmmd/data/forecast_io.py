"""The forecast file format (WeatherBench2 forecast layout, CF-1.8), shared by every forecast writer.

Dims: `time` (initialisation, standard_name forecast_reference_time),
`prediction_timedelta` (lead, forecast_period), `number` (ensemble member,
realization), `level` (hPa, air_pressure, pressure-level variables only),
`latitude` (ascending), `longitude`. A 2-D `valid_time = time +
prediction_timedelta` coordinate is attached, and fields named after a height
(`2m_temperature`, `10m_u_component_of_wind`) reference a scalar `height_2m` /
`height_10m` coordinate. Fields are float32 with NaN as `_FillValue` (SST over
land), one chunk per (init, lead, member); coordinates carry no fill value and
use the classic CF types (int32 hours, float64 degrees), so both CF checkers
accept the file as written.

Model forecasts (`gencast_rmmd.forecast.writer`), the simulator's perfect-model
reference ensemble and the truth-only baselines all pass through
`annotate_forecast` and `ForecastFileWriter`: one layout, one set of
attributes, one encoding. A path ending in `.zarr` gets a zarr store (format 2
with consolidated metadata: what WeatherBench2's `xr.open_zarr` readers and
zarr-python 2 open), any other path NetCDF-4; both are written beside the
destination and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.data.variables import cf_attributes
from gencast_rmmd.io_utils import atomic_path

MEMBER_DIM = "number"
MEMBER_DIM_ALIASES: tuple[str, ...] = ("number", "realization", "member", "sample", "ensemble")
LEAD_DIM = "prediction_timedelta"
FORECAST_DIMS: tuple[str, ...] = ("time", LEAD_DIM, MEMBER_DIM, "level", "latitude", "longitude")
CONVENTIONS = "CF-1.8"
DEFAULT_TITLE = "gencast-rmmd ensemble forecast"
# The dims each chunk holds one of; the others (level, latitude, longitude) are whole in a chunk.
_ONE_PER_CHUNK = ("time", LEAD_DIM, MEMBER_DIM)

_HOURS_SINCE_EPOCH = "hours since 1970-01-01"
_TIME_ENCODING = {"units": _HOURS_SINCE_EPOCH, "calendar": "proleptic_gregorian", "dtype": "int32"}

COORDINATE_ATTRIBUTES: dict[str, dict[str, str]] = {
    "time": {"standard_name": "forecast_reference_time", "long_name": "initialisation time"},
    LEAD_DIM: {"standard_name": "forecast_period", "long_name": "lead time"},
    MEMBER_DIM: {"standard_name": "realization", "units": "1", "long_name": "ensemble member"},
    "level": {"standard_name": "air_pressure", "units": "hPa", "positive": "down", "axis": "Z",
              "long_name": "pressure level"},
    "latitude": {"standard_name": "latitude", "units": "degrees_north", "axis": "Y", "long_name": "latitude"},
    "longitude": {"standard_name": "longitude", "units": "degrees_east", "axis": "X", "long_name": "longitude"},
    "valid_time": {"standard_name": "time", "long_name": "valid time"},
}
COORDINATE_ENCODING: dict[str, dict[str, object]] = {
    "time": _TIME_ENCODING,
    "valid_time": _TIME_ENCODING,
    LEAD_DIM: {"units": "hours", "dtype": "int32"},
    MEMBER_DIM: {"dtype": "int32"},
    "latitude": {"dtype": "float64"},
    "longitude": {"dtype": "float64"},
}
# WB2 names a near-surface field after its height above ground: `2m_temperature`, `10m_u_component_of_wind`.
_HEIGHT_PREFIX = re.compile(r"^(\d+)m_")


def height_of(name: str) -> int | None:
    """Height above ground in metres that a WB2 variable name states (`2m_temperature` -> 2), else None."""
    match = _HEIGHT_PREFIX.match(name)
    return int(match.group(1)) if match else None


def height_coordinate_name(height: int) -> str:
    """The scalar coordinate a field at `height` metres references (`height_2m`)."""
    return f"height_{height}m"


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
    data_vars = {}
    member_count = None
    for name, values in fields.items():
        values = np.asarray(values)
        dims = ["time", LEAD_DIM, MEMBER_DIM, "latitude", "longitude"]
        if values.ndim == 6:
            dims.insert(3, "level")
        elif values.ndim != 5:
            raise ValueError(f"{name}: expected 5 or 6 dims, got shape {values.shape}")
        member_count = values.shape[2]
        data_vars[name] = (dims, values)
    coords = {"time": pd.DatetimeIndex(init_times).values, LEAD_DIM: pd.TimedeltaIndex(leads).values,
              MEMBER_DIM: np.arange(member_count) if members is None else np.asarray(members),
              "latitude": np.asarray(latitude), "longitude": np.asarray(longitude)}
    if levels is not None:
        coords["level"] = np.asarray(levels)
    return annotate_forecast(xr.Dataset(data_vars, coords=coords), attrs)


def forecast_template(init_times: pd.DatetimeIndex, leads: pd.TimedeltaIndex, members: int,
                      latitude: np.ndarray, longitude: np.ndarray, surface: Sequence[str],
                      atmospheric: Sequence[str] = (), levels: Sequence[int] | None = None,
                      attrs: Mapping[str, object] | None = None) -> xr.Dataset:
    """An annotated forecast Dataset whose fields are lazy NaN placeholders, for a writer to fill step by step."""
    import dask.array

    sizes = {"time": len(init_times), LEAD_DIM: len(leads), MEMBER_DIM: members,
             "level": len(levels or ()), "latitude": len(latitude), "longitude": len(longitude)}

    def placeholder(dims: tuple[str, ...]) -> tuple[tuple[str, ...], object]:
        shape = tuple(sizes[dim] for dim in dims)
        return dims, dask.array.full(shape, np.nan, dtype=np.float32, chunks=field_chunks(dims, shape))

    grid = ("time", LEAD_DIM, MEMBER_DIM)
    data_vars = {name: placeholder((*grid, "latitude", "longitude")) for name in surface}
    data_vars.update({name: placeholder((*grid, "level", "latitude", "longitude")) for name in atmospheric})
    coords = {"time": pd.DatetimeIndex(init_times).values, LEAD_DIM: pd.TimedeltaIndex(leads).values,
              MEMBER_DIM: np.arange(members), "latitude": np.asarray(latitude), "longitude": np.asarray(longitude)}
    if atmospheric:
        coords["level"] = np.asarray(levels)
    return annotate_forecast(xr.Dataset(data_vars, coords=coords), attrs)


def field_chunks(dims: Sequence[str], shape: Sequence[int]) -> tuple[int, ...]:
    """Chunk sizes of a field: one (init, lead, member) per chunk, with all its levels and grid points."""
    return tuple(1 if dim in _ONE_PER_CHUNK else size for dim, size in zip(dims, shape))


def annotate_forecast(dataset: xr.Dataset, attrs: Mapping[str, object] | None = None) -> xr.Dataset:
    """Put any forecast Dataset into the file format: dim order, coordinate types, CF attributes, encodings.

    Works on lazy (dask) datasets and is idempotent. Coordinates get the CF
    attributes of `COORDINATE_ATTRIBUTES` (whatever the source store had is
    replaced, fill values included); fields get units and standard names from
    the WB2 variable table, a `coordinates` attribute naming `valid_time` and
    their height coordinate, and float32 / NaN-fill encoding. `attrs` are
    added as global attributes after `attribute_value` coercion (NetCDF
    holds strings and numbers only).
    """
    fields = list(dataset.data_vars)
    dataset = dataset.drop_vars([name for name in dataset.coords if name not in dataset.dims])
    dataset = dataset.assign_coords({name: _coordinate_values(name, dataset[name].values) for name in dataset.dims
                                     if name in COORDINATE_ATTRIBUTES})
    dataset = dataset.assign_coords(valid_time=dataset["time"] + dataset[LEAD_DIM])
    heights = sorted({height for name in fields if (height := height_of(str(name))) is not None})
    dataset = dataset.assign_coords({height_coordinate_name(height): ((), float(height), {
        "standard_name": "height", "units": "m", "positive": "up", "axis": "Z",
        "long_name": "height above the surface"}) for height in heights})
    for name in dataset.coords:
        variable = dataset[name].variable
        if name in COORDINATE_ATTRIBUTES:
            variable.attrs = dict(COORDINATE_ATTRIBUTES[str(name)])
        variable.encoding = {**_coordinate_encoding(str(name), variable), "_FillValue": None}
    for name in fields:
        variable = dataset[name].transpose(*[dim for dim in FORECAST_DIMS if dim in dataset[name].dims], ...)
        dataset[name] = variable
        dataset[name].attrs = _field_attributes(str(name), dataset[name].attrs)
        dataset[name].encoding = {"dtype": "float32", "_FillValue": np.float32(np.nan),
                                  "chunks": field_chunks(variable.dims, variable.shape)}
    global_attrs = {key: value for key, value in dataset.attrs.items() if key not in ("Conventions", "coordinates")}
    global_attrs.update(attrs or {})
    global_attrs.setdefault("title", DEFAULT_TITLE)
    dataset.attrs = {"Conventions": CONVENTIONS,
                     **{str(key): attribute_value(value) for key, value in global_attrs.items()}}
    return dataset


def _coordinate_values(name: str, values: np.ndarray) -> np.ndarray:
    """Coordinate values in the format's types: ns datetimes and timedeltas, int members, float64 degrees."""
    if name == "time":
        return pd.DatetimeIndex(values).values.astype("datetime64[ns]")
    if name == LEAD_DIM:
        return pd.TimedeltaIndex(values).values.astype("timedelta64[ns]")
    if name == MEMBER_DIM:
        return np.asarray(values).astype(np.int64)
    if name == "level":
        values = np.asarray(values, dtype=np.float64)
        return values.astype(np.int64) if np.all(values == np.round(values)) else values
    return np.asarray(values, dtype=np.float64)


def _coordinate_encoding(name: str, variable: xr.Variable) -> dict[str, object]:
    if name in COORDINATE_ENCODING:
        return dict(COORDINATE_ENCODING[name])
    if np.issubdtype(variable.dtype, np.integer):   # integral pressure levels: CF-1.8 has no 64-bit ints
        return {"dtype": "int32"}
    return {"dtype": "float64"}


def _field_attributes(name: str, existing: Mapping[str, object]) -> dict[str, object]:
    """A field's CF attributes: the WB2 table's (else its own units and names) and its `coordinates`."""
    kept = {key: value for key, value in existing.items() if key in ("units", "standard_name", "long_name")}
    attributes = {**kept, **cf_attributes(name)}
    height = height_of(name)
    attributes["coordinates"] = "valid_time" + (f" {height_coordinate_name(height)}" if height is not None else "")
    return attributes


def attribute_value(value: object) -> object:
    """A global attribute as NetCDF and zarr can hold it: strings and numbers (bool -> 0/1, the rest as text)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Whether a forecast written to `path` is a zarr store (the name ends in `.zarr`) rather than NetCDF."""
    return str(path).rstrip("/").lower().endswith(".zarr")


class ForecastFileWriter:
    """Write a forecast in pieces into a NetCDF file or zarr store laid out as `template`.

    `with ForecastFileWriter(path, template) as writer: writer.write_step(lead, fields, inits)`.
    `template` is an annotated forecast Dataset (its fields may be lazy
    placeholders: only their names, dims, shapes and encodings are used).
    Nothing appears at `path` until the context exits without error; an
    existing file or store there is replaced only then.
    """

    def __init__(self, path: str | os.PathLike, template: xr.Dataset):
        self.path = Path(path)
        self.template = template.assign_attrs(history=template.attrs.get("history") or (
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} written by gencast-rmmd"))
        self._stack = contextlib.ExitStack()
        self._sink: _NetcdfSink | _ZarrSink | None = None

    def __enter__(self) -> "ForecastFileWriter":
        with contextlib.ExitStack() as stack:   # unwinds (removes the temporary) if the sink cannot be made
            temporary = stack.enter_context(atomic_path(self.path))
            self._sink = (_ZarrSink if is_zarr_path(self.path) else _NetcdfSink)(temporary, self.template)
            stack.callback(self._sink.close)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> bool:
        return bool(self._stack.__exit__(*exc_info))

    def write_step(self, lead_index: int, fields: Mapping[str, np.ndarray], init_slice: slice = slice(None)) -> None:
        """Write one lead of the inits in `init_slice`: `fields[name]` is `[init, member, [level,] lat, lon]`."""
        for name, values in fields.items():
            self._sink.write(name, (init_slice, lead_index), np.asarray(values, dtype=np.float32))


def write_forecast(dataset: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a whole forecast Dataset (numpy or lazy dask) to `path`, NetCDF or `.zarr`, atomically.

    Computed and written one (init, lead) at a time, so a lazy forecast larger
    than memory (a climatology of many members) streams through.
    """
    import dask

    dataset = annotate_forecast(dataset)
    fields = list(dataset.data_vars)
    with ForecastFileWriter(path, dataset) as writer:
        for init in range(dataset.sizes["time"]):
            for lead in range(dataset.sizes[LEAD_DIM]):
                piece = [dataset[name].isel({"time": slice(init, init + 1), LEAD_DIM: lead}).data for name in fields]
                writer.write_step(lead, dict(zip(fields, dask.compute(*piece))), slice(init, init + 1))


class _NetcdfSink:
    """NetCDF-4 (HDF5): variables defined from xarray's CF encoding of the template, fields filled by netCDF4."""

    def __init__(self, path: Path, template: xr.Dataset):
        import netCDF4

        from xarray import conventions

        variables, attributes = conventions.encode_dataset_coordinates(template)
        variables, attributes = conventions.cf_encoder(variables, attributes)
        self._file = netCDF4.Dataset(path, "w", format="NETCDF4")
        for dim, size in template.sizes.items():
            self._file.createDimension(str(dim), size)
        for name, variable in variables.items():
            attrs = dict(variable.attrs)
            fill = attrs.pop("_FillValue", None)
            is_field = name in template.data_vars
            chunks = variable.encoding.get("chunks") if is_field else None
            created = self._file.createVariable(name, variable.dtype, variable.dims, fill_value=fill,
                                                zlib=is_field, complevel=1, chunksizes=chunks)
            created.setncatts(attrs)
            if not is_field:
                created[...] = variable.values
        self._file.setncatts(attributes)

    def write(self, name: str, index: tuple, values: np.ndarray) -> None:
        self._file[name][index] = values

    def close(self) -> None:
        if self._file.isopen():
            self._file.close()


class _ZarrSink:
    """Zarr format 2, consolidated: metadata and coordinates by xarray, fields by zarr region writes."""

    def __init__(self, path: Path, template: xr.Dataset):
        import zarr

        encoding = {name: {key: value for key, value in template[name].encoding.items()
                           if key in ("dtype", "_FillValue", "units", "calendar", "chunks")}
                    for name in template.variables}
        placeholders = template.copy()
        for name in template.data_vars:
            placeholders[name] = placeholders[name].copy(data=_lazy_nan(template[name]))
        placeholders.to_zarr(path, mode="w", compute=False, zarr_format=2, consolidated=True, encoding=encoding)
        self._group = zarr.open_group(path, mode="r+", zarr_format=2)

    def write(self, name: str, index: tuple, values: np.ndarray) -> None:
        self._group[name][index] = values

    def close(self) -> None:
        pass


def _lazy_nan(variable: xr.DataArray):
    """A dask array of NaN shaped and chunked like the field: `to_zarr(compute=False)` then writes no chunk."""
    import dask.array

    return dask.array.full(variable.shape, np.nan, dtype=np.float32, chunks=field_chunks(variable.dims,
                                                                                           variable.shape))
