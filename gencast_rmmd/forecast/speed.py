"""Forecast speed per 12 h step, measured the same way for every model (teacher and students).

Each model forecasts the same inits (the first of the test split), members,
batch and grid with the same rollout code (`rollout.make_step_function`). Each
is compiled first; then `repeats` single steps are timed for every model,
models interleaved so that drift of the machine hits all alike, and the median
is reported. Used by `benchmarks/bench_speedup.py` and the pipeline's `speed`
stage (which turns it into the scorecard's speed table).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from gencast_rmmd.data.forcings import forcing_channels
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.forecast.build import load_model
from gencast_rmmd.forecast.rollout import initial_inputs, make_step_function, member_keys


class CompiledStep:
    """One model's compiled 12 h step and its inputs (EMA parameters, the test split's first inits).

    `sampler_overrides` (`key=value`, as `gencast-rmmd forecast --sampler`) change the
    checkpoint's sampler, e.g. the teacher with fewer noise levels.
    """

    def __init__(self, checkpoint: str | Path, data: str | None, members: int, inits: int,
                 sampler_overrides: list[str] | tuple[str, ...] = ()):
        model = load_model(checkpoint, data, sampler_overrides)        # EMA parameters; the grid checked
        predictor, params, source = model.predictor, model.params, model.source
        self.nfe_per_step = int(predictor.sampler.nfe_per_step)
        init_times = source.windows("test").init_times[:inits]
        if len(init_times) < inits:
            raise UserInputError(f"the test split of {source.report.location} has fewer than {inits} inits")
        inputs = jnp.asarray(initial_inputs(source, init_times))
        self._arguments = (
            params, jnp.broadcast_to(inputs, (members, *inputs.shape)),
            jnp.asarray(forcing_channels((init_times + source.step).values, source.latitude, source.longitude)),
            jnp.asarray(source.static_channels), member_keys(jax.random.PRNGKey(0), members, init_times, 1))
        self._step = make_step_function(predictor)
        self.compile_seconds = self.time_step()

    def time_step(self) -> float:
        """Wall seconds of one step (the first call includes compilation)."""
        started = time.perf_counter()
        jax.block_until_ready(self._step(*self._arguments))
        return time.perf_counter() - started


@dataclass(frozen=True)
class StepTiming:
    """Median wall seconds per 12 h step of one model, its denoiser calls per step and the raw samples."""

    seconds_per_step: float
    nfe_per_step: int
    compile_seconds: float
    samples: tuple[float, ...]


def measure_step_times(checkpoints: dict[str, str | Path], data: str | None = None, members: int = 4,
                       inits: int = 2, repeats: int = 7,
                       sampler_overrides: dict[str, list[str]] | None = None) -> dict[str, StepTiming]:
    """Median step time of every named checkpoint (or run directory), timed interleaved after compilation.

    `sampler_overrides[label]` (`key=value` overrides) change that model's sampler.
    """
    overrides = sampler_overrides or {}
    compiled = {label: CompiledStep(path, data, members, inits, overrides.get(label, ()))
                for label, path in checkpoints.items()}
    samples: dict[str, list[float]] = {label: [] for label in compiled}
    for _ in range(repeats):
        for label, step in compiled.items():
            samples[label].append(step.time_step())
    return {label: StepTiming(statistics.median(samples[label]), step.nfe_per_step, step.compile_seconds,
                              tuple(samples[label]))
            for label, step in compiled.items()}


def scorecard_timing(timings: dict[str, StepTiming]) -> dict[str, dict[str, float]]:
    """The `timing.json` that `gencast-rmmd scorecard --timing` reads: per label, seconds and calls per step."""
    return {label: {"wall_seconds_per_step": timing.seconds_per_step,
                    "denoiser_calls_per_step": timing.nfe_per_step}
            for label, timing in timings.items()}
