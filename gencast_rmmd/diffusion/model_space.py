"""Physical batches -> GenCast's residual-normalised model space, written once.

Training (`teacher.task`), distillation (`distill.base.prepare`) and inference
(`forecast.predictor.Predictor`) all enter the model's space here:

    cond = ((X - mean)/std, forcings at the target time, (static - mean)/std)
    x0   = (Y - X_t) / diffs_std          residual targets (target-only channels: (Y - mean)/std)
    mask = isfinite(Y)                    (SST over land is NaN)

and leave it through `Normalizer.denormalize_targets` (`Predictor.sample`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.base import Conditioning


def conditioning(normalizer: Normalizer, inputs: jax.Array, forcings: jax.Array, static: jax.Array) -> Conditioning:
    """Normalised conditioning from physical inputs [B, lat, lon, F*C_in], forcings [B, lat, lon, C_f], static."""
    return Conditioning(normalizer.normalize_inputs(inputs), forcings, normalizer.normalize_static(static))


def first_step(batch: Batch, normalizer: Normalizer) -> tuple[jax.Array, Conditioning, jax.Array]:
    """(normalised targets x0 [B, lat, lon, C], conditioning, validity mask) of a batch's first target step."""
    targets = batch.targets[:, 0]
    last = normalizer.last_frame(batch.inputs)
    return (normalizer.normalize_targets(targets, last),
            conditioning(normalizer, batch.inputs, batch.forcings[:, 0], batch.static), jnp.isfinite(targets))
