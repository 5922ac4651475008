"""Read any WB2-layout forecast and line the truth up with it.

A forecast is a NetCDF file or a zarr store with dims `time` (initialisation),
`prediction_timedelta` (lead), a member dim (`number`, `realization`,
`member`, `sample` or `ensemble`; absent for a deterministic forecast),
optionally `level`, and `latitude`/`longitude` in any order and direction.
`open_forecast` renames the member dim to `number`, normalises coordinates
with the data layer and chunks lazily; `align_truth` selects the truth at
valid time = init + lead on the forecast's grid and levels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.data.forecast_io import MEMBER_DIM, MEMBER_DIM_ALIASES
from gencast_rmmd.data.stores import normalize_coordinates, open_store
from gencast_rmmd.errors import UserInputError

LEAD_DIM = "prediction_timedelta"
# Other names for the lead dim seen in forecast archives (ECMWF `step`).
LEAD_DIM_ALIASES: tuple[str, ...] = (LEAD_DIM, "lead_time", "step")
FORECAST_DIMS: tuple[str, ...] = ("time", LEAD_DIM, MEMBER_DIM, "level", "latitude", "longitude")
# Grids whose coordinates differ by less than this (degrees) are the same grid.
GRID_TOLERANCE_DEGREES = 1e-3
TARGET_CHUNK_BYTES = 64 * 2**20  # forecast bytes per dask chunk (float64 work arrays are ~4x that)


def _is_zarr(path: str) -> bool:
    if "://" in path and not path.startswith("file://"):
        return True
    local = Path(path.removeprefix("file://")).expanduser()
    return local.is_dir() or path.rstrip("/").endswith(".zarr")


def _read(path: str) -> xr.Dataset:
    if _is_zarr(path):
        return open_store(path)
    local = Path(path).expanduser()
    if not local.is_file():
        raise UserInputError(f"no forecast at {local}: give a NetCDF file or a zarr store with --forecast")
    try:
        return xr.open_dataset(local, chunks={}, decode_timedelta=True)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read forecast {local} as NetCDF ({type(error).__name__}: {error})") from None


def detect_member_dim(dataset: xr.Dataset, member_dim: str | None = None) -> str | None:
    """The dataset's ensemble-member dim: `member_dim` if given, else the one alias present.

    Aliases are `MEMBER_DIM_ALIASES` (`number`, `realization`, `member`,
    `sample`, `ensemble`). Returns None for a forecast without a member dim
    (deterministic). Raises `UserInputError` if the given dim is absent or if
    several aliases are present.
    """
    if member_dim is not None:
        if member_dim not in dataset.dims:
            raise UserInputError(f"--member-dim {member_dim!r} is not a dim of the forecast "
                                 f"(dims: {', '.join(map(str, dataset.dims))})")
        return member_dim
    present = [name for name in MEMBER_DIM_ALIASES if name in dataset.dims]
    if len(present) > 1:
        raise UserInputError(f"the forecast has several possible member dims ({', '.join(present)}); "
                             "name the right one with --member-dim")
    return present[0] if present else None


def open_forecast(path: str, member_dim: str | None = None) -> xr.Dataset:
    """Open a forecast lazily in the internal layout `(time, prediction_timedelta, number, [level,] latitude, longitude)`.

    The member dim is found by `detect_member_dim` and renamed to `number`; a
    forecast without one gets `number` of size 1 (M = 1). Coordinates are
    normalised by the data layer (latitude ascending, longitude in [0, 360),
    level in hPa). Only variables with time, lead, latitude and longitude dims
    are kept.
    """
    dataset = _read(str(path))
    lead_name = next((name for name in LEAD_DIM_ALIASES if name in dataset.dims), None)
    if "time" not in dataset.dims or lead_name is None:
        raise UserInputError(f"{path} is not in the WB2 forecast layout: it needs dims `time` (initialisation) "
                             f"and `prediction_timedelta` (lead); it has {', '.join(map(str, dataset.dims))}")
    if lead_name != LEAD_DIM:
        dataset = dataset.rename({lead_name: LEAD_DIM})
    if not np.issubdtype(dataset[LEAD_DIM].dtype, np.timedelta64):
        raise UserInputError(f"{path}: `{LEAD_DIM}` must hold time differences (CF units such as 'hours'), "
                             f"got dtype {dataset[LEAD_DIM].dtype}")
    found = detect_member_dim(dataset, member_dim)
    if found is None:
        dataset = dataset.expand_dims({MEMBER_DIM: [0]})
    elif found != MEMBER_DIM:
        dataset = dataset.rename({found: MEMBER_DIM})
    dataset = normalize_coordinates(dataset)
    if "latitude" not in dataset.dims or "longitude" not in dataset.dims:
        raise UserInputError(f"{path}: no latitude/longitude dims (dims: {', '.join(map(str, dataset.dims))})")
    fields = [name for name, variable in dataset.data_vars.items()
              if {"time", LEAD_DIM, "latitude", "longitude"} <= set(variable.dims)]
    if not fields:
        raise UserInputError(f"{path}: no variable has dims (time, prediction_timedelta, latitude, longitude)")
    dataset = dataset[fields]
    # Scalar coordinates (the 2 m / 10 m heights of our files) say nothing the scores need.
    dataset = dataset.drop_vars([name for name in dataset.coords if dataset[name].ndim == 0])
    for name in fields:
        order = [dim for dim in FORECAST_DIMS if dim in dataset[name].dims]
        dataset[name] = dataset[name].transpose(*order, ...)
    return dataset


def _check_same_grid(forecast: xr.Dataset, truth: xr.Dataset) -> None:
    for axis in ("latitude", "longitude"):
        if axis not in truth.dims:
            raise UserInputError(f"the truth store has no {axis} dim")
        ours, theirs = forecast[axis].values, truth[axis].values
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, atol=GRID_TOLERANCE_DEGREES):
            raise UserInputError(
                f"forecast grid ({forecast.sizes['longitude']}x{forecast.sizes['latitude']}) differs from the "
                f"truth grid ({truth.sizes['longitude']}x{truth.sizes['latitude']}) in {axis}; "
                "score against a truth store on the forecast's grid")


def valid_time_positions(init_times: np.ndarray, leads: np.ndarray, truth_times: pd.DatetimeIndex) -> np.ndarray:
    """Positions in `truth_times` of every valid time init + lead, shaped (init, lead).

    Raises `UserInputError` naming the first missing valid time and the store's
    time range when the truth does not cover every valid time.
    """
    valid = (pd.DatetimeIndex(init_times).values[:, None] + pd.TimedeltaIndex(leads).values[None, :])
    positions = truth_times.get_indexer(valid.ravel()).reshape(valid.shape)
    if (positions < 0).any():
        missing = valid.ravel()[(positions < 0).ravel()]
        covers = f"covers {truth_times[0]} to {truth_times[-1]}" if len(truth_times) else "has no times at all"
        raise UserInputError(
            f"the truth has no state at {missing.size} valid time(s) of the forecast, first "
            f"{pd.Timestamp(missing[0])}; the truth {covers}: "
            "use a store that covers every init + lead, or fewer leads/inits")
    return positions


def align_truth(forecast: xr.Dataset, truth: xr.Dataset) -> tuple[xr.Dataset, list[str]]:
    """The truth at each (init, lead) of the forecast: dims `(time, prediction_timedelta, [level,] latitude, longitude)`.

    `truth` must be normalised (`gencast_rmmd.data.stores.open_dataset`). Only
    variables present in both are kept; the second return value lists the
    forecast variables the truth lacks. Levels are the forecast's (they must be
    in the truth). Raises `UserInputError` on a different grid, missing levels
    or missing valid times.
    """
    shared = [name for name in forecast.data_vars if name in truth.data_vars]
    missing = [str(name) for name in forecast.data_vars if name not in truth.data_vars]
    if not shared:
        raise UserInputError(f"no forecast variable is in the truth store (forecast: "
                             f"{', '.join(map(str, forecast.data_vars))}); check the truth URL")
    _check_same_grid(forecast, truth)
    truth = truth[shared]
    if "level" in forecast.dims:
        wanted = forecast["level"].values
        absent = sorted(set(wanted.tolist()) - set(truth["level"].values.tolist())) if "level" in truth.dims else wanted
        if len(absent):
            raise UserInputError(f"the truth store lacks level(s) {list(absent)} hPa that the forecast has")
        truth = truth.sel(level=wanted)
    positions = valid_time_positions(forecast["time"].values, forecast[LEAD_DIM].values,
                                     pd.DatetimeIndex(truth["time"].values))
    per_lead = [truth.isel(time=positions[:, lead]).assign_coords(time=forecast["time"].values)
                for lead in range(positions.shape[1])]
    aligned = xr.concat(per_lead, dim=pd.Index(forecast[LEAD_DIM].values, name=LEAD_DIM),
                        coords="minimal", compat="override", join="override")
    aligned = aligned.assign_coords(latitude=forecast["latitude"].values, longitude=forecast["longitude"].values)
    for name in shared:
        order = [dim for dim in FORECAST_DIMS if dim in aligned[name].dims]
        aligned[name] = aligned[name].transpose(*order)
    return aligned, missing


def chunk_for_scoring(forecast: xr.Dataset, truth: xr.Dataset,
                      target_bytes: int = TARGET_CHUNK_BYTES) -> tuple[xr.Dataset, xr.Dataset]:
    """Rechunk forecast and aligned truth identically: one init and a block of leads per chunk.

    Each forecast chunk holds all members, levels and grid points of one init
    and ⌊target_bytes / bytes-per-lead⌋ leads (at least one), so a forecast
    larger than memory is scored chunk by chunk.
    """
    per_lead = max(int(np.prod([forecast.sizes[dim] for dim in forecast.dims if dim not in ("time", LEAD_DIM)]))
                   * max(variable.dtype.itemsize for variable in forecast.data_vars.values()), 1)
    leads = int(np.clip(target_bytes // per_lead, 1, forecast.sizes[LEAD_DIM]))
    chunks = {"time": 1, LEAD_DIM: leads}
    full = {dim: -1 for dim in ("number", "level", "latitude", "longitude")}
    forecast = forecast.chunk({**chunks, **{dim: size for dim, size in full.items() if dim in forecast.dims}})
    truth = truth.chunk({**chunks, **{dim: size for dim, size in full.items() if dim in truth.dims}})
    return forecast, truth
