"""Validate a store against a data config and summarise it.

`check_dataset` raises `UserInputError` with one line naming the first problem
(a missing variable or level, wrong dims or coordinates, duplicate or
non-monotonic times, an all-NaN variable, a non-numeric dtype). Time gaps are
not errors: they are counted and reported, and windows that cross them are
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.config import DataConfig
from gencast_rmmd.errors import UserInputError

# A 12-hourly accumulation that can be derived from the 6-hourly one.
DERIVABLE: dict[str, str] = {"total_precipitation_12hr": "total_precipitation_6hr"}


@dataclass(frozen=True)
class TimeGaps:
    """Gaps in a time axis: how many, and the first one (last time before it, first after)."""

    count: int
    first: tuple[pd.Timestamp, pd.Timestamp] | None


@dataclass(frozen=True)
class SchemaReport:
    """What a valid store holds, for the `data check` summary."""

    location: str
    variables: dict[str, tuple[str, ...]]
    levels: tuple[int, ...]
    grid: tuple[int, int]
    time_start: pd.Timestamp
    time_end: pd.Timestamp
    time_count: int
    time_step: pd.Timedelta
    gaps: TimeGaps
    derived: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        n_lat, n_lon = self.grid
        gap_text = "no gaps"
        if self.gaps.count:
            before, after = self.gaps.first
            gap_text = f"{self.gaps.count} gap(s); first between {before} and {after}"
        lines = [
            f"store      {self.location}",
            f"grid       {n_lat} latitudes x {n_lon} longitudes",
            f"levels     {', '.join(str(level) for level in self.levels) or '(none)'} hPa",
            f"time       {self.time_start} .. {self.time_end}, {self.time_count} steps of "
            f"{_format_step(self.time_step)}, {gap_text}",
            "variables  " + ", ".join(f"{name}{'(' + ','.join(dims) + ')'}" for name, dims in self.variables.items()),
        ]
        for name, source in self.derived.items():
            lines.append(f"derived    {name} from {source}")
        return lines


def _format_step(step: pd.Timedelta) -> str:
    hours = step / pd.Timedelta(hours=1)
    return f"{hours:g} h"


def time_gaps(times: pd.DatetimeIndex, step: pd.Timedelta) -> TimeGaps:
    """Count places where consecutive times are further apart than `step`."""
    if len(times) < 2:
        return TimeGaps(0, None)
    deltas = np.diff(times.values)
    gap_positions = np.nonzero(deltas > step.to_timedelta64())[0]
    first = None
    if gap_positions.size:
        position = int(gap_positions[0])
        first = (times[position], times[position + 1])
    return TimeGaps(int(gap_positions.size), first)


def _expected_dims(config: DataConfig) -> dict[str, set[str]]:
    variables = config.variables
    expected = {name: {"time", "latitude", "longitude"} for name in (*variables.surface, *variables.target_only)}
    expected.update({name: {"time", "level", "latitude", "longitude"} for name in variables.atmospheric})
    expected.update({name: {"latitude", "longitude"} for name in variables.static})
    return expected


def _check_coordinates(dataset: xr.Dataset, config: DataConfig, location: str) -> None:
    needed = ["time", "latitude", "longitude"] + (["level"] if config.variables.atmospheric else [])
    for name in needed:
        if name not in dataset.dims or name not in dataset.coords:
            raise UserInputError(
                f"{location}: no '{name}' dimension with coordinates (dims found: "
                f"{', '.join(map(str, dataset.dims)) or 'none'}); the store must have time, latitude, "
                "longitude and, for pressure-level variables, level")
    if dataset.sizes["time"] == 0:
        raise UserInputError(f"{location}: the time axis is empty (no times stored); give a store with data")
    latitude = np.asarray(dataset["latitude"].values)
    if not np.issubdtype(latitude.dtype, np.number) or np.any(np.abs(latitude) > 90.0):
        raise UserInputError(f"{location}: latitude values must be numbers within [-90, 90]")
    if np.any(np.diff(latitude) <= 0):
        raise UserInputError(f"{location}: latitude is not strictly monotonic")
    longitude = np.asarray(dataset["longitude"].values)
    if np.any(np.diff(longitude) <= 0):
        raise UserInputError(f"{location}: longitude has duplicate values after wrapping to [0, 360)")
    times = dataset["time"].values
    if not np.issubdtype(times.dtype, np.datetime64):
        raise UserInputError(f"{location}: the time coordinate is not a datetime (dtype {times.dtype})")
    index = pd.DatetimeIndex(times)
    if index.has_duplicates:
        duplicate = index[index.duplicated()][0]
        raise UserInputError(f"{location}: duplicate time {duplicate}; each time must appear once")
    if not index.is_monotonic_increasing:
        position = int(np.nonzero(np.diff(index.values) < np.timedelta64(0))[0][0])
        raise UserInputError(
            f"{location}: times are not increasing ({index[position]} is followed by {index[position + 1]})")


def _check_variable(dataset: xr.Dataset, name: str, dims: set[str], location: str) -> None:
    variable = dataset[name]
    actual = set(map(str, variable.dims))
    static_with_time = dims == {"latitude", "longitude"} and actual == {"time", "latitude", "longitude"}
    if actual != dims and not static_with_time:
        raise UserInputError(
            f"{location}: variable {name} has dims ({', '.join(map(str, variable.dims))}), expected "
            f"({', '.join(sorted(dims))})")
    if not (np.issubdtype(variable.dtype, np.floating) or np.issubdtype(variable.dtype, np.integer)):
        raise UserInputError(f"{location}: variable {name} has non-numeric dtype {variable.dtype}")


def _check_not_all_nan(dataset: xr.Dataset, names: list[str], location: str) -> None:
    """Sample up to three times (first, middle, last): an all-NaN variable is NaN in each."""
    count = dataset.sizes["time"]
    sample = sorted({0, count // 2, count - 1})
    finite = {}
    for name in names:
        variable = dataset[name]
        if "time" in variable.dims:
            variable = variable.isel(time=sample)
        finite[name] = np.isfinite(variable).any()
    values = xr.Dataset(finite).compute()
    for name in names:
        if not bool(values[name]):
            raise UserInputError(f"{location}: variable {name} is entirely NaN (sampled times {sample})")


def check_dataset(dataset: xr.Dataset, config: DataConfig, location: str) -> SchemaReport:
    """Validate a normalised dataset (see `stores.normalize_coordinates`) against `config`.

    Raises `UserInputError` on the first problem; returns a `SchemaReport`.
    """
    _check_coordinates(dataset, config, location)
    expected = _expected_dims(config)
    derived = {}
    missing = []
    for name in expected:
        if name in dataset.data_vars:
            continue
        source = DERIVABLE.get(name)
        if source is not None and source in dataset.data_vars:
            derived[name] = source
        else:
            missing.append(name)
    if missing:
        raise UserInputError(
            f"{location}: missing variable(s) {', '.join(missing)}; the store has "
            f"{', '.join(sorted(map(str, dataset.data_vars)))} (remove them from data.variables or use another store)")
    if config.variables.atmospheric:
        stored_levels = {int(level) for level in np.asarray(dataset["level"].values)}
        missing_levels = [level for level in config.levels if level not in stored_levels]
        if missing_levels:
            raise UserInputError(
                f"{location}: missing pressure level(s) {', '.join(map(str, missing_levels))} hPa; the store has "
                f"{', '.join(map(str, sorted(stored_levels)))} (set data.levels to a subset)")
    present = [name for name in expected if name not in derived]
    for name in present:
        _check_variable(dataset, name, expected[name], location)
    for name, source in derived.items():
        _check_variable(dataset, source, expected[name], location)
    _check_not_all_nan(dataset, present + list(derived.values()), location)
    index = pd.DatetimeIndex(dataset["time"].values)
    step = pd.Timedelta(pd.Series(np.diff(index.values)).mode().iloc[0]) if len(index) > 1 else pd.Timedelta(0)
    levels = tuple(int(level) for level in dataset["level"].values) if "level" in dataset.coords else ()
    return SchemaReport(
        location=location,
        variables={name: tuple(map(str, dataset[derived.get(name, name)].dims)) for name in expected},
        levels=levels,
        grid=(dataset.sizes["latitude"], dataset.sizes["longitude"]),
        time_start=index[0],
        time_end=index[-1],
        time_count=len(index),
        time_step=step,
        gaps=time_gaps(index, step),
        derived=derived,
    )
