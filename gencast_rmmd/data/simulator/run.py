"""Running the simulation: spin-up (cached), the stored trajectory in chunks, restarts.

Time bookkeeping: model step 0 is the start of the spin-up; stored time k
(`config.start + k * output_hours`) is the state at model step
`spinup_steps + k * steps_per_output`. The truth trajectory draws its noise
from the `TRUTH_STREAM` key, so the state at any step is a function of the
config alone, and can be recomputed bit-identically from any earlier restart.

`simulate_store` integrates `chunk_days` at a time, converts each chunk to
pressure levels in one batched call while the next chunk is already being
integrated (JAX dispatches asynchronously), appends it to the zarr store and
keeps a restart at the start of every chunk. Memory stays bounded by one chunk.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from gencast_rmmd.config import SimulationConfig
from gencast_rmmd.data.simulator.cache import TrajectoryCache
from gencast_rmmd.data.simulator.diagnostics import build_diagnostics
from gencast_rmmd.data.simulator.model import TRUTH_STREAM, HeldSuarezModel, SimulatorState, build_model, stream_key
from gencast_rmmd.data.simulator.store import ZarrStoreWriter, existing_store_hash, output_times, store_hash
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import atomic_path

Log = Callable[[str], None]


def log_to_stderr(message: str) -> None:
    """Progress lines go to stderr, so stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


def spinup_steps(model: HeldSuarezModel, config: SimulationConfig) -> int:
    """Model steps in the spin-up (the step of the first stored state)."""
    return round(config.spinup_days * model.steps_per_day)


def stored_step(model: HeldSuarezModel, config: SimulationConfig, index: int) -> int:
    """Model step of stored time number `index` (0 = `config.start`)."""
    return spinup_steps(model, config) + index * model.steps_per_output


def state_at_step(model: HeldSuarezModel, config: SimulationConfig, cache: TrajectoryCache, step: int,
                  log: Log = log_to_stderr, known: SimulatorState | None = None) -> tuple[SimulatorState, bool]:
    """The truth state at model step `step`, from the latest restart (or `known` truth state) before it.

    Integrates forward from the latest of: a restart at or before `step`,
    `known` (a truth state already in hand, if at or before `step`), or the
    initial state, in whole output intervals with the truth noise stream, so
    the result is bit-identical to the state the stored trajectory passed
    through. Saves a restart at the end of the spin-up on the way. Returns the
    state and whether the spin-up was skipped (it started at or after its end).
    """
    if step % model.steps_per_output:
        raise ValueError(f"step {step} is not a whole number of output intervals")
    spinup_end = spinup_steps(model, config)
    restart_step = cache.latest_at_or_before(step)
    if known is not None and int(known.step) <= step and (restart_step is None or int(known.step) >= restart_step):
        state = known
    elif restart_step is not None:
        state = cache.load(restart_step)
    else:
        state = model.initial_state(config.seed)
    start = int(state.step)
    skipped_spinup = start >= spinup_end
    key = stream_key(config.seed, TRUTH_STREAM)
    intervals = (step - start) // model.steps_per_output
    report_every = max(1, round(25 * 24 / config.output_hours))  # every 25 simulated days
    began = time.perf_counter()
    for interval in range(intervals):
        state = model.advance(state, key)
        reached = start + (interval + 1) * model.steps_per_output  # = state.step, without waiting for it
        if reached == spinup_end and not skipped_spinup:
            cache.save(state)
        if (interval + 1) % report_every == 0 or interval + 1 == intervals:
            jax.block_until_ready(state)  # report real progress, not dispatch
            days_done = (reached - start) / model.steps_per_day
            phase = "spin-up" if reached <= spinup_end else "re-integration"
            log(f"simulate: {phase} {days_done:.0f}/{intervals * config.output_hours / 24:.0f} days "
                f"({time.perf_counter() - began:.1f} s)")
    return state, skipped_spinup


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """What `simulate_store` did: where the store is, whether it was reused, whether it ran the spin-up.

    `spinup_computed` is False when the spun-up state came from the cache (or
    nothing was integrated because the store was reused).
    """

    path: Path
    reused_store: bool
    spinup_computed: bool
    times: pd.DatetimeIndex
    seconds: float


def simulate_store(config: SimulationConfig, out: Path, cache: TrajectoryCache,
                   log: Log = log_to_stderr) -> SimulationResult:
    """Write the stored trajectory of `config` to the zarr store `out`, or reuse `out` if it already holds it.

    A store at `out` carrying this config's `store_hash` is kept as it is. A
    store written by `simulate` with another config is replaced, atomically,
    once the new one is complete. Anything else at `out` is refused
    (UserInputError) rather than overwritten.
    """
    began = time.perf_counter()
    out = Path(out)
    times = output_times(config)
    wanted_hash = store_hash(config)
    found_hash = existing_store_hash(out)
    if found_hash == wanted_hash:
        log(f"simulate: {out} already holds this simulation (hash {wanted_hash}); reusing it")
        return SimulationResult(out, True, False, times, time.perf_counter() - began)
    if found_hash is not None:
        log(f"simulate: {out} holds a different simulation (hash {found_hash}); it will be replaced")
    elif out.exists():
        raise UserInputError(f"{out} exists and is not a store written by `gencast-rmmd data simulate`; "
                             "remove it or choose another --out")
    model = build_model(config)
    diagnostics = build_diagnostics(model, config.levels)
    state, spinup_cached = state_at_step(model, config, cache, stored_step(model, config, 0), log)
    log(f"simulate: spin-up {'loaded from cache' if spinup_cached else 'done'} "
        f"({config.spinup_days:g} days, cache {cache.directory})")
    key = stream_key(config.seed, TRUTH_STREAM)
    chunk_length = round(config.chunk_days * 24 / config.output_hours)
    chunk_starts = list(range(0, len(times), chunk_length))

    def dispatch(first: SimulatorState, count: int) -> list[SimulatorState]:
        states = [first]
        for _ in range(count - 1):
            states.append(model.advance(states[-1], key))
        return states

    with atomic_path(out) as temporary:
        writer = ZarrStoreWriter(temporary, config, diagnostics.static)
        pending = dispatch(state, min(chunk_length, len(times)))
        for number, begin in enumerate(chunk_starts):
            chunk_began = time.perf_counter()
            states = pending
            cache.save(states[0])
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s.dynamics for s in states])
            fields = diagnostics.fields(stacked)
            end = begin + len(states)
            if end < len(times):  # integrate the next chunk while this one is converted and written
                pending = dispatch(model.advance(states[-1], key), min(chunk_length, len(times) - end))
            writer.append({name: np.asarray(value) for name, value in jax.device_get(fields).items()},
                          times[begin:end])
            log(f"simulate: chunk {number + 1}/{len(chunk_starts)} written: {times[begin]:%Y-%m-%d %H:%M} .. "
                f"{times[end - 1]:%Y-%m-%d %H:%M} ({time.perf_counter() - chunk_began:.1f} s)")
    seconds = time.perf_counter() - began
    log(f"simulate: wrote {out} ({len(times)} times, {seconds:.1f} s)")
    return SimulationResult(out, False, not spinup_cached, times, seconds)
