"""Autoregressive ensemble rollout, written to NetCDF step by step.

Member i of the forecast from init t uses the key
fold_in(fold_in(fold_in(key, i), hours(t)), step), so a member does not depend
on the ensemble size, on which other inits are forecast with it, or on batching.
All (member, init) pairs of a step run in one jitted call, `batch_size`
samples at a time (`jax.lax.map` over vmapped chunks): on CPU a few samples
per network call run ~2.5x faster per sample than hundreds at once (the
activations stay in cache), and memory stays bounded by the chunk, not the
ensemble. Shapes are the same at every step, so it compiles once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from gencast_rmmd.data.forcings import forcing_channels
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.forecast.predictor import Predictor
from gencast_rmmd.forecast.writer import ForecastWriter


@dataclass(frozen=True)
class RolloutTiming:
    """Wall-clock figures of a rollout (after compilation for `seconds_per_step`)."""

    compile_seconds: float
    seconds_per_step: float
    steps: int


def member_keys(key: jax.Array, members: int, init_times: pd.DatetimeIndex, step: int) -> jax.Array:
    """Keys [M, B]: fold_in(fold_in(fold_in(key, member), init hours), step)."""
    hours = ((init_times - pd.Timestamp("1970-01-01")) // pd.Timedelta(hours=1)).to_numpy().astype(np.int64)
    per_member = [jax.random.fold_in(key, member) for member in range(members)]
    return jnp.stack([jnp.stack([jax.random.fold_in(jax.random.fold_in(member_key, int(hour)), step)
                                 for hour in hours]) for member_key in per_member])


DEFAULT_BATCH_SIZE = 4
"""Samples per network call in a rollout step (measured best on 2 CPU cores for the demo model)."""


def make_step_function(predictor: Predictor, batch_size: int = DEFAULT_BATCH_SIZE) -> Callable:
    """jit of one predictor step over [M, B] (member, init) pairs, `batch_size` samples per network call.

    Each sample is an example of batch 1 with its own key, so a sample does not
    depend on the chunking (up to float rounding of differently shaped kernels).
    """

    def one(params, inputs, forcings, static, key):
        return predictor.sample(params, inputs[None], forcings[None], static, key)[0]

    def step(params, inputs, forcings, static, keys):
        members, inits = inputs.shape[:2]
        pairs = members * inits
        flat_forcings = jnp.broadcast_to(forcings, (members, *forcings.shape)).reshape(pairs, *forcings.shape[1:])
        flat = (inputs.reshape(pairs, *inputs.shape[2:]), flat_forcings, keys.reshape(pairs, *keys.shape[2:]))
        samples = jax.lax.map(lambda example: one(params, *example[:2], static, example[2]), flat,
                              batch_size=min(batch_size, pairs))
        return samples.reshape(members, inits, *samples.shape[1:])

    return jax.jit(step)


def initial_inputs(source: DataSource, init_times: pd.DatetimeIndex) -> np.ndarray:
    """Physical input frames [B, lat, lon, F*C_in] at each init (UserInputError if unavailable or missing)."""
    windows = source.windows_at(init_times, target_steps=1)
    layout = source.layout
    offsets = np.arange(-(layout.input_frames - 1), 1)
    positions = windows.init_positions[:, None] + offsets[None]
    frames = source.load_frames(positions.reshape(-1))
    frames = frames.reshape(len(init_times), layout.input_frames, *frames.shape[1:])[..., :layout.n_input_channels]
    check_inputs_present(frames, layout.input_channels, init_times, source.times.values[positions])
    return np.concatenate(list(np.moveaxis(frames, 1, 0)), axis=-1)


def check_inputs_present(frames: np.ndarray, channels, init_times: pd.DatetimeIndex, frame_times) -> None:
    """Refuse inputs with missing data: a channel entirely NaN in a frame, or NaN where another frame has values.

    NaN is legitimate only where it is the field's fixed mask (SST over land):
    the predictor fills it for the network and puts NaN back in its outputs
    wherever the latest input was NaN, so a missing input frame would come out
    as a forecast that is NaN for that variable at every lead. `frames` is
    `[B, F, lat, lon, C]`; `frame_times[b, f]` the time of each frame.
    """
    missing = np.isnan(frames)
    entirely = missing.all(axis=(2, 3))                                   # [B, F, C]
    partly = (missing & ~missing.all(axis=1, keepdims=True)).any(axis=(2, 3))   # NaN here, a value in another frame
    for problem, what in ((entirely, "is entirely NaN"), (partly, "has NaN where another input frame has values")):
        if problem.any():
            init, frame, channel = (int(i) for i in np.argwhere(problem)[0])
            raise UserInputError(
                f"init {init_times[init]}: {_describe(channels[channel])} {what} in the input frame at "
                f"{pd.Timestamp(frame_times[init, frame])} (missing data, a forecast from it would be wrong or NaN "
                "there at every lead); choose another --init or repair the store")


def _describe(channel) -> str:
    return channel.variable if channel.level is None else f"{channel.variable} at {channel.level} hPa"


def check_prediction_finite(prediction: np.ndarray, expected_nan: np.ndarray, channels,
                            init_times: pd.DatetimeIndex, lead: pd.Timedelta) -> None:
    """Refuse a step whose sample is NaN or infinite where its inputs had values (`prediction` [M, B, ..., C])."""
    bad = ~np.isfinite(prediction) & ~expected_nan
    if bad.any():
        member, init, *_, channel = (int(i) for i in np.argwhere(bad)[0])
        hours = lead / pd.Timedelta(hours=1)
        raise UserInputError(
            f"the forecast is not finite: {_describe(channels[channel])} at lead +{hours:g} h is NaN or infinite "
            f"at {int(bad[..., channel].sum())} points where its inputs had values (first: init {init_times[init]}, "
            f"member {member}); nothing was written. Check the checkpoint (`gencast-rmmd inspect`) and any "
            "--sampler overrides")


def rollout(predictor: Predictor, params, source: DataSource, init_times: pd.DatetimeIndex, steps: int,
            members: int, key: jax.Array, writer: ForecastWriter,
            progress: Callable[[int], None] | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> RolloutTiming:
    """Forecast `steps` 12 h steps of `members` members from each init, writing each step to `writer`."""
    init_times = pd.DatetimeIndex(init_times)
    inputs = jnp.asarray(initial_inputs(source, init_times))
    inputs = jnp.broadcast_to(inputs, (members, *inputs.shape))
    static = jnp.asarray(source.static_channels)
    step_function = make_step_function(predictor, batch_size)
    layout = source.layout
    compile_seconds, step_seconds = 0.0, []
    for step in range(1, steps + 1):
        valid = (init_times + step * source.step).values
        forcings = jnp.asarray(forcing_channels(valid, source.latitude, source.longitude))
        keys = member_keys(key, members, init_times, step)
        started = time.perf_counter()
        prediction = jax.block_until_ready(step_function(params, inputs, forcings, static, keys))
        elapsed = time.perf_counter() - started
        if step == 1:
            compile_seconds = elapsed
        else:
            step_seconds.append(elapsed)
        prediction = np.asarray(prediction)
        expected_nan = np.isnan(predictor.normalizer.restore_nan(
            np.zeros(prediction.shape, np.float32), predictor.normalizer.last_frame(np.asarray(inputs))))
        check_prediction_finite(prediction, expected_nan, layout.target_channels, init_times, step * source.step)
        fields = layout.split_targets(np.swapaxes(prediction, 0, 1))   # [B, M, ...]
        writer.write_step(step - 1, fields)
        inputs = predictor.next_inputs(inputs, prediction)
        if progress is not None:
            progress(step)
    per_step = float(np.median(step_seconds)) if step_seconds else compile_seconds
    return RolloutTiming(compile_seconds, per_step, steps)
