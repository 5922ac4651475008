"""The perfect-model reference ensemble: simulator members branching from the stored truth.

For each initialisation time the full model state that produced the stored
trajectory is rebuilt bit-identically (latest restart, then the truth noise
stream; see `run.state_at_step`). Member i then continues from exactly that
state, including the AR(1) forcing accumulated so far (the past), but draws
its own future noise from `fold_in(fold_in(fold_in(key(seed), MEMBER_STREAM),
init_step), i)`, never from the truth stream. The spread of the members is
therefore the intrinsic uncertainty of the stored 12 h transitions, and the
ensemble is the perfect-model reference any learned forecaster is measured
against. Output: the forecast layout of `forecast_io` (leads 12 h x 1..N).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.config import SimulationConfig
from gencast_rmmd.data.forecast_io import MEMBER_DIM, forecast_dataset
from gencast_rmmd.data.simulator.cache import TrajectoryCache
from gencast_rmmd.data.simulator.diagnostics import (
    ATMOSPHERIC_VARIABLES, SURFACE_VARIABLES, WB2_LATITUDES_32, WB2_LONGITUDES_64, build_diagnostics)
from gencast_rmmd.data.simulator.model import MEMBER_STREAM, SimulatorState, build_model, stream_key
from gencast_rmmd.data.simulator.run import Log, log_to_stderr, state_at_step, stored_step
from gencast_rmmd.data.simulator.store import output_times, store_hash
from gencast_rmmd.errors import UserInputError

# Largest relative difference allowed between a member at +0 h and the stored truth.
BRANCH_TOLERANCE = 1e-4


def parse_init_times(config: SimulationConfig, init_times: Sequence[str | pd.Timestamp]) -> pd.DatetimeIndex:
    """Validate initialisation times against the simulated period and output grid (UserInputError if not).

    Each must parse as an ISO date-time, lie within the stored times
    (`start` .. `start + days - output_hours`) and fall on the `output_hours`
    grid; duplicates are refused. Returned sorted.
    """
    if not init_times:
        raise UserInputError("no --init given: name at least one initialisation time (ISO, e.g. 2000-03-01T00:00)")
    times = output_times(config)
    parsed = []
    for text in init_times:
        try:
            init = pd.Timestamp(text)
        except (ValueError, TypeError):
            raise UserInputError(f"--init {text!r} is not an ISO date-time (e.g. 2000-03-01T00:00)") from None
        if init.tzinfo is not None:
            init = init.tz_convert(None)
        if not times[0] <= init <= times[-1]:
            raise UserInputError(
                f"--init {text} is outside the simulated period {times[0]:%Y-%m-%dT%H:%M} .. "
                f"{times[-1]:%Y-%m-%dT%H:%M}; choose an initialisation time inside it")
        if (init - times[0]) % pd.Timedelta(hours=config.output_hours):
            raise UserInputError(f"--init {text} is not on the {config.output_hours}-hourly output grid "
                                 f"starting {times[0]:%Y-%m-%dT%H:%M}")
        parsed.append(init)
    index = pd.DatetimeIndex(parsed)
    if index.has_duplicates:
        raise UserInputError(f"--init {index[index.duplicated()][0]:%Y-%m-%dT%H:%M} is given twice")
    return index.sort_values()


@dataclasses.dataclass(frozen=True)
class ReferenceEnsemble:
    """The members in the forecast layout, plus each init's branching state as stored variables.

    `initial_fields[name]` is shaped `(time, [level,] latitude, longitude)`:
    the diagnostics of the exact state the members branch from, to compare
    with the stored truth at the initialisation times.
    """

    dataset: xr.Dataset
    initial_fields: dict[str, np.ndarray]


def _lat_lon(fields: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Stored (..., longitude, latitude) arrays to the forecast layout's (..., latitude, longitude)."""
    return {name: np.swapaxes(np.asarray(value), -1, -2) for name, value in jax.device_get(fields).items()}


def reference_ensemble(config: SimulationConfig, cache: TrajectoryCache, init_times: Sequence[str | pd.Timestamp],
                       members: int, steps: int, lead_hours: int = 12,
                       log: Log = log_to_stderr) -> ReferenceEnsemble:
    """Run `members` simulator members for `steps` leads of `lead_hours` from each initialisation time.

    Inputs are validated first (UserInputError for an init outside the
    simulated period or off the output grid, members or steps < 1, a lead
    that is not a whole number of output intervals). Fields are in SI units
    on the WB2 64x32 grid and `config.levels`.
    """
    if members < 1 or steps < 1:
        raise UserInputError(f"--members and --steps must be at least 1 (got {members} and {steps})")
    if lead_hours % config.output_hours:
        raise UserInputError(f"the lead time step ({lead_hours} h) must be a multiple of the simulation's "
                             f"output interval ({config.output_hours} h)")
    inits = parse_init_times(config, init_times)
    model = build_model(config)
    diagnostics = build_diagnostics(model, config.levels)
    intervals_per_lead = lead_hours // config.output_hours
    names = (*SURFACE_VARIABLES, *ATMOSPHERIC_VARIABLES)
    collected: dict[str, list] = {name: [] for name in names}
    initial: dict[str, list] = {name: [] for name in names}
    truth: SimulatorState | None = None
    began = time.perf_counter()
    for number, init in enumerate(inits):
        index = int((init - output_times(config)[0]) / pd.Timedelta(hours=config.output_hours))
        init_step = stored_step(model, config, index)
        truth, _ = state_at_step(model, config, cache, init_step, log, known=truth)
        single = jax.tree.map(lambda leaf: leaf[None], truth.dynamics)
        for name, value in _lat_lon(diagnostics.fields(single)).items():
            initial[name].append(value[0])
        # Members run one after another through the same compiled `advance` as the truth
        # (on CPU this is faster than vmapping them, and needs no second compilation).
        states = [truth] * members
        keys = [jax.random.fold_in(stream_key(config.seed, MEMBER_STREAM, init_step), i) for i in range(members)]
        per_lead: dict[str, list] = {name: [] for name in names}
        for _ in range(steps):
            for _ in range(intervals_per_lead):
                states = [model.advance(state, key) for state, key in zip(states, keys)]
            batch = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[state.dynamics for state in states])
            for name, value in _lat_lon(diagnostics.fields(batch)).items():
                per_lead[name].append(value)
        for name in names:
            collected[name].append(np.stack(per_lead[name]))
        log(f"simulate: reference ensemble {number + 1}/{len(inits)} ({init:%Y-%m-%dT%H:%M}, {members} members x "
            f"{steps} leads, {time.perf_counter() - began:.1f} s)")
    fields = {name: np.stack(collected[name]) for name in names}
    dataset = forecast_dataset(
        fields, init_times=inits, leads=pd.to_timedelta([lead_hours * (k + 1) for k in range(steps)], unit="h"),
        latitude=WB2_LATITUDES_32, longitude=WB2_LONGITUDES_64, levels=np.asarray(config.levels),
        attrs={"title": "gencast_rmmd perfect-model reference ensemble (Held-Suarez simulator members)",
               "source": "members branch from the exact model state of the stored trajectory at each "
                         "initialisation time and draw independent stochastic forcing",
               "gencast_rmmd_simulation_hash": store_hash(config),
               "member_seed_rule": "fold_in(fold_in(fold_in(key(seed), 1), init_step), member)"})
    return ReferenceEnsemble(dataset, {name: np.stack(values) for name, values in initial.items()})


def branch_mismatch(reference: ReferenceEnsemble, truth: xr.Dataset) -> float:
    """Largest relative difference between the branching states and the stored truth at the init times.

    `truth` is the store in the internal convention (`stores.open_dataset`:
    `(time, level, latitude, longitude)`). Differences are scaled by each
    variable's range over the compared fields; 0 means bit-identical.
    """
    init_times = reference.dataset["time"].values
    worst = 0.0
    for name, values in reference.initial_fields.items():
        stored = np.asarray(truth[name].sel(time=init_times).values, dtype=np.float64)
        scale = max(float(np.ptp(stored)), 1e-12)
        worst = max(worst, float(np.max(np.abs(stored - values)) / scale))
    return worst


def spread_to_change_ratio(forecast: xr.Dataset, truth: xr.Dataset, variable: str, level: int | None = None,
                           lead: pd.Timedelta = pd.Timedelta(hours=12)) -> float:
    """RMS difference between two members at `lead` over the RMS change of the truth over `lead`.

    Both RMS values are area-weighted (cos latitude) and pooled over
    initialisation times (and, for the numerator, over all member pairs).
    Needs at least two members. `truth` in the internal convention. A ratio
    of 0.1 means two equally likely outcomes differ by 10% of a typical
    `lead` change.
    """
    members = forecast.sizes[MEMBER_DIM]
    if members < 2:
        raise UserInputError("the spread needs at least two members")
    selection = {"prediction_timedelta": lead} | ({"level": level} if level is not None else {})
    field = forecast[variable].sel(selection).values  # (time, member, latitude, longitude)
    weights = np.cos(np.deg2rad(forecast["latitude"].values))[:, None]
    weights = weights / weights.mean()
    pair_squares = [np.mean((field[:, i] - field[:, j]) ** 2 * weights) for i, j in
                    itertools.combinations(range(members), 2)]
    inits = pd.DatetimeIndex(forecast["time"].values)
    level_selection = {"level": level} if level is not None else {}
    before = truth[variable].sel(time=inits, **level_selection).values
    after = truth[variable].sel(time=inits + lead, **level_selection).values
    change_square = np.mean((after - before) ** 2 * weights)
    return float(np.sqrt(np.mean(pair_squares) / change_square))
