"""Forecasts made from the truth alone, in the WB2 forecast layout, to compare every model against.

- Persistence (M = 1): the state at initialisation, repeated at every lead.
- Climatology (M members): for valid time v = init + lead, members are states
  of the training period at the same time of day whose day of year is within
  ±`window_days` of v's, in years other than v's (a probabilistic
  climatology, as WB2's). When the training period has no such state (a store
  shorter than two years), members are drawn from every training state at the
  same time of day, or from the whole training period if none shares it.

Both stay lazy (dask) until `gencast_rmmd.data.forecast_io.write_forecast`
writes them chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.config import SplitRange
from gencast_rmmd.data.forecast_io import MEMBER_DIM, annotate_forecast
from gencast_rmmd.errors import UserInputError

LEAD_DIM = "prediction_timedelta"
DAYS_PER_YEAR = 365.2425


def forecast_variables(truth: xr.Dataset, names: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Time-varying gridded variables of `truth` to forecast: `names` (checked) or all of them.

    A variable qualifies when it has `time`, `latitude` and `longitude` dims
    (static fields such as the land-sea mask do not). Raises `UserInputError`
    for a requested name the store lacks or has without those dims.
    """
    gridded = [str(name) for name, variable in truth.data_vars.items()
               if {"time", "latitude", "longitude"} <= set(variable.dims)]
    if names is None:
        if not gridded:
            raise UserInputError("the truth store has no variable with time, latitude and longitude dims")
        return gridded
    absent = [name for name in names if name not in gridded]
    if absent:
        raise UserInputError(f"the truth store has no time-varying gridded variable(s) {', '.join(absent)}; "
                             f"it has: {', '.join(gridded)}")
    return list(names)


def lead_times(steps: int, step_hours: int) -> pd.TimedeltaIndex:
    """Leads step_hours·1 … step_hours·steps as a TimedeltaIndex."""
    if steps < 1 or step_hours < 1:
        raise UserInputError(f"--steps and --step-hours must be >= 1 (got {steps}, {step_hours})")
    return pd.to_timedelta(np.arange(1, steps + 1) * step_hours, unit="h")


def _init_positions(truth: xr.Dataset, init_times: pd.DatetimeIndex) -> np.ndarray:
    positions = pd.DatetimeIndex(truth["time"].values).get_indexer(init_times)
    if (positions < 0).any():
        raise UserInputError(f"the truth store has no state at init time {init_times[positions < 0][0]}; "
                             "choose inits inside the store's time axis")
    return positions


def persistence_forecast(truth: xr.Dataset, init_times: pd.DatetimeIndex, leads: pd.TimedeltaIndex,
                         variables: list[str]) -> xr.Dataset:
    """Persistence: X(init + lead) = Y(init) for every lead, one member (M = 1), lazily.

    `truth` is a normalised store (`gencast_rmmd.data.stores.open_dataset`).
    Output dims `(time, prediction_timedelta, number, [level,] latitude, longitude)`.
    """
    states = truth[variables].isel(time=_init_positions(truth, init_times))
    forecast = states.expand_dims({LEAD_DIM: leads.values, MEMBER_DIM: [0]}, axis=[1, 2])
    forecast = forecast.transpose("time", LEAD_DIM, MEMBER_DIM, ...)
    return annotate_forecast(forecast, {"title": "persistence baseline", "baseline": "persistence",
                                        "member_count": 1})


def training_times(store_times: pd.DatetimeIndex, init_times: pd.DatetimeIndex,
                   split: SplitRange | None = None) -> pd.DatetimeIndex:
    """The store's times in the training period: the `split` range, or everything before the first init.

    `split` is `config.data.splits.train` (a date range or a fraction of the
    time axis, resolved by `gencast_rmmd.data.windows.split_time_range`).
    """
    if split is None:
        selected = store_times[store_times < init_times.min()]
        described = f"before the first init {init_times.min()}"
    else:
        from gencast_rmmd.data.windows import split_time_range

        start, end = split_time_range(store_times, split)
        selected = store_times[(store_times >= start) & (store_times <= end)]
        described = f"in the training split {start} to {end}"
    if selected.empty:
        raise UserInputError(f"the truth store has no state {described}, so there is no climatology to draw "
                             "from; give later inits or a --config whose training split the store covers")
    return selected


@dataclass(frozen=True)
class ClimatologyDraw:
    """Which training states make up each (init, lead) ensemble, and how they were found."""

    positions: np.ndarray       # (init, lead, member) indices into the store's time axis
    fallback_count: int         # (init, lead) pairs drawn from the whole training period
    with_replacement_count: int  # (init, lead) pairs with fewer candidates than members


def climatology_positions(store_times: pd.DatetimeIndex, train: pd.DatetimeIndex, init_times: pd.DatetimeIndex,
                          leads: pd.TimedeltaIndex, members: int, window_days: float = 15.0,
                          seed: int = 0) -> ClimatologyDraw:
    """Draw the climatological members for every valid time v = init + lead.

    Candidates are training times t with the same time of day as v, a circular
    day-of-year distance ≤ `window_days` from v, and year(t) ≠ year(v); if there
    are none, every training time with v's time of day; if none, every training
    time. `members` states are drawn without replacement (with replacement when
    there are fewer candidates) by `numpy.random.default_rng(seed)`, in order of
    init then lead.
    """
    if members < 1:
        raise UserInputError(f"--members must be >= 1 (got {members})")
    rng = np.random.default_rng(seed)
    train_positions = store_times.get_indexer(train)
    time_of_day = (train - train.normalize()).values
    day_of_year = (train.day_of_year.values - 1) + time_of_day / np.timedelta64(1, "D")
    positions = np.empty((len(init_times), len(leads), members), dtype=np.int64)
    fallback = replaced = 0
    for i, init in enumerate(init_times):
        for j, lead in enumerate(leads):
            valid = init + lead
            same_hour = time_of_day == (valid - valid.normalize()).to_timedelta64()
            distance = np.abs(day_of_year - ((valid.day_of_year - 1) + (valid - valid.normalize()) / pd.Timedelta(days=1)))
            distance = np.minimum(distance, DAYS_PER_YEAR - distance)
            candidates = np.nonzero(same_hour & (distance <= window_days) & (train.year.values != valid.year))[0]
            if candidates.size == 0:
                fallback += 1
                candidates = np.nonzero(same_hour)[0] if same_hour.any() else np.arange(len(train))
            replace = candidates.size < members
            replaced += int(replace)
            positions[i, j] = train_positions[rng.choice(candidates, size=members, replace=replace)]
    return ClimatologyDraw(positions, fallback, replaced)


def climatology_forecast(truth: xr.Dataset, init_times: pd.DatetimeIndex, leads: pd.TimedeltaIndex,
                         variables: list[str], members: int, split: SplitRange | None = None,
                         window_days: float = 15.0, seed: int = 0) -> xr.Dataset:
    """Probabilistic climatology with `members` members (see `climatology_positions`), lazily.

    `truth` is a normalised store; the training period comes from `split` or is
    everything before the first init (`training_times`). Attributes record the
    training period, the window, the seed and how often the fallbacks were used.
    """
    store_times = pd.DatetimeIndex(truth["time"].values)
    train = training_times(store_times, init_times, split)
    draw = climatology_positions(store_times, train, init_times, leads, members, window_days, seed)
    flat = truth[variables].isel(time=draw.positions.ravel())
    fields = {}
    for name in variables:
        variable = flat[name].chunk({"time": members})
        data = variable.data.reshape(*draw.positions.shape, *variable.shape[1:])
        fields[name] = ((("time", LEAD_DIM, MEMBER_DIM) + variable.dims[1:]), data, variable.attrs)
    coords = {"time": init_times.values, LEAD_DIM: leads.values, MEMBER_DIM: np.arange(members),
              **{dim: truth[dim] for dim in ("level", "latitude", "longitude") if dim in flat.dims}}
    forecast = xr.Dataset(fields, coords=coords)
    return annotate_forecast(forecast, {
        "title": "climatology baseline", "baseline": "climatology", "member_count": members,
        "training_period": f"{train[0]} to {train[-1]}", "window_days": window_days, "seed": seed,
        "pairs_from_whole_training_period": draw.fallback_count,
        "pairs_drawn_with_replacement": draw.with_replacement_count})
