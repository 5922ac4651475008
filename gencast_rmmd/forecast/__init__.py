"""Forecasts from a checkpoint: rebuild the model, roll it out, write the forecast file.

- `build`: `load_model`, a checkpoint's model card (`training.card`) read, its store opened with the grid
  check, its `Predictor` rebuilt (samplers by name from `diffusion.registry.SAMPLER_BUILDERS`);
- `predictor`: `Predictor`, one 12 h step in physical units (normalise, sample with any `Sampler`,
  un-normalise, NaNs restored);
- `rollout`: `rollout`, the autoregressive ensemble rollout, one jitted step for every (member, init);
- `writer`: `ForecastWriter`, each step written as it is computed (NetCDF or zarr, docs/DESIGN.md §7);
- `run`: `run_forecast`, the driver behind `gencast-rmmd forecast`;
- `inspect`: `describe`, behind `gencast-rmmd inspect`; `speed`: `measure_step_times`, step timings for
  the scorecard's speed table.
"""
