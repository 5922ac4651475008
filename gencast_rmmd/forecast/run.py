"""`gencast-rmmd forecast`: load a checkpoint, open the data, roll out, write NetCDF."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import pandas as pd

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.forecast.build import load_model
from gencast_rmmd.forecast.rollout import DEFAULT_BATCH_SIZE, RolloutTiming, rollout
from gencast_rmmd.forecast.writer import ForecastWriter
from gencast_rmmd.progress_record import ProgressRecord


def parse_inits(values: list[str]) -> pd.DatetimeIndex:
    """ISO strings -> DatetimeIndex (UserInputError naming a bad one)."""
    parsed = []
    for value in values:
        try:
            parsed.append(pd.Timestamp(value))
        except (ValueError, TypeError):
            raise UserInputError(f"--init {value!r} is not an ISO date-time, e.g. 2000-11-02T00:00") from None
    inits = pd.DatetimeIndex(parsed)
    if inits.has_duplicates:   # the file's time axis would hold the same init twice
        raise UserInputError(f"--init {inits[inits.duplicated()][0]} is given more than once; give each init once")
    return inits


def run_forecast(checkpoint: str | os.PathLike, init: list[str], steps: int, members: int, out: str | os.PathLike,
                 data: str | None = None, seed: int = 0, use_ema: bool = True,
                 log: Callable[[str], None] = print, batch_size: int = DEFAULT_BATCH_SIZE,
                 sampler_overrides: list[str] | tuple[str, ...] = ()) -> RolloutTiming:
    """Forecast from `checkpoint` (or a run directory's latest) and write `out`.

    `sampler_overrides` (`key=value`) change the checkpoint's sampler config for this
    forecast only, e.g. `noise_inflation=1.0` or `churn=0`; the file records the config used.
    """
    init_times = parse_inits(init)
    model = load_model(checkpoint, data, sampler_overrides, use_ema)   # the grid checked before compiling
    loaded, card, predictor, source, params = model.checkpoint, model.card, model.predictor, model.source, model.params
    attrs = {
        "source": "gencast-rmmd forecast",
        "checkpoint": str(Path(loaded.path).resolve()),
        "checkpoint_step": loaded.step,
        "params_sha256": loaded.meta.get("params_sha256", ""),
        "model_kind": card.kind,
        "sampler": card.sampler.name,
        "sampler_config": str(card.sampler.config),
        "nfe_per_step": int(predictor.sampler.nfe_per_step),
        "ensemble_seed": seed,
        "parameters": "ema" if use_ema else "raw",
        "initial_conditions": source.report.location,
    }
    leads = pd.to_timedelta(np.arange(1, steps + 1) * source.config.step_hours, unit="h")
    log(f"forecasting {len(init_times)} init(s), {steps} steps, {members} members with "
        f"{card.sampler.name} ({predictor.sampler.nfe_per_step} denoiser calls per step)")
    with ForecastWriter(out, init_times=init_times, leads=leads, members=members, layout=source.layout,
                        latitude=source.latitude, longitude=source.longitude, attrs=attrs) as writer:
        record = ProgressRecord("forecast", str(out), steps, detail=f"{len(init_times)} init(s) x {members} members")

        def progress(step: int) -> None:
            log(f"step {step}/{steps} done")
            record.update(step)

        return rollout(predictor, params, source, init_times, steps, members, jax.random.PRNGKey(seed), writer,
                       progress=progress, batch_size=batch_size)
