"""Physical batches -> GenCast's residual-normalised model space, written once.

Training (`teacher.task`), distillation (`ModelSpace.prepare`) and inference
(`forecast.predictor.Predictor`) all enter the model's space here:

    cond = ((X - mean)/std, forcings at the target time, (static - mean)/std)
    x0   = (Y - X_t) / diffs_std          residual targets (target-only channels: (Y - mean)/std)
    mask = isfinite(Y)                    (SST over land is NaN)

and leave it through `Normalizer.denormalize_targets` (`Predictor.sample`).

`ModelSpace` is one model card's space as an object: its normaliser, channel
layout, grid, diffusion noise and the weighted norm of its loss
(`loss.WeightedNorm`), with `prepare` (a batch's first target step, invalid
points zeroed). The teacher's training task and every distiller take it
(`ModelCard.model_space()` builds it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.diffusion.config import LossConfig
from gencast_rmmd.diffusion.loss import WeightedNorm, channel_loss_weights
from gencast_rmmd.diffusion.noise import SphericalNoise


def conditioning(normalizer: Normalizer, inputs: jax.Array, forcings: jax.Array, static: jax.Array) -> Conditioning:
    """Normalised conditioning from physical inputs [B, lat, lon, F*C_in], forcings [B, lat, lon, C_f], static."""
    return Conditioning(normalizer.normalize_inputs(inputs), forcings, normalizer.normalize_static(static))


def next_inputs(normalizer: Normalizer, inputs: jax.Array, prediction: jax.Array) -> jax.Array:
    """Shift a physical input window [..., F * C_in] by one step: drop the oldest frame, append the input
    channels of the physical `prediction` [..., C_target] (a rollout's next inputs)."""
    n_in = normalizer.input_mean.shape[0]
    return jnp.concatenate([inputs[..., n_in:], prediction[..., :n_in]], axis=-1)


def first_step(batch: Batch, normalizer: Normalizer) -> tuple[jax.Array, Conditioning, jax.Array]:
    """(normalised targets x0 [B, lat, lon, C], conditioning, validity mask) of a batch's first target step."""
    targets = batch.targets[:, 0]
    last = normalizer.last_frame(batch.inputs)
    return (normalizer.normalize_targets(targets, last),
            conditioning(normalizer, batch.inputs, batch.forcings[:, 0], batch.static), jnp.isfinite(targets))


class Prepared(NamedTuple):
    """Model-space view of one target step (a batch's first: `ModelSpace.prepare`)."""

    clean: jax.Array            # x_0 [B, lat, lon, C], zero where invalid
    conditioning: Conditioning
    valid: jax.Array            # [B, lat, lon, C] bool


def prepare_step(normalizer: Normalizer, targets: jax.Array, inputs: jax.Array,
                 conditioning: Conditioning) -> Prepared:
    """Physical `targets` [B, lat, lon, C] residual-normalised to the last frame of the physical `inputs`,
    invalid points (NaN in the data or after normalising) zeroed and masked, with their `conditioning`."""
    clean = normalizer.normalize_targets(targets, normalizer.last_frame(inputs))
    valid = jnp.isfinite(targets) & jnp.isfinite(clean)
    return Prepared(jnp.where(valid, clean, 0.0), conditioning, valid)


@dataclass(frozen=True, eq=False)
class ModelSpace:
    """One model's space: normaliser, channel layout, grid, diffusion noise, and the weighted norm of its loss."""

    normalizer: Normalizer
    layout: ChannelLayout
    latitude: np.ndarray
    longitude: np.ndarray
    noise: SphericalNoise
    loss: LossConfig            # the teacher loss's per-variable weights (w_c of the norm)

    @functools.cached_property
    def norm(self) -> WeightedNorm:
        """The loss's norm: latitude cell areas a_j and channel weights w_c (`channel_loss_weights`)."""
        return WeightedNorm(latitude_cell_weights(self.latitude).astype(np.float32),
                            channel_loss_weights(self.layout, self.loss.variable_weights, self.loss.default_weight))

    @property
    def channel_names(self) -> list[str]:
        """The variable of every target channel (the loss's per-variable diagnostics)."""
        return [channel.variable for channel in self.layout.target_channels]

    def prepare(self, batch: Batch) -> Prepared:
        """(x_0 with invalid points zeroed, conditioning, mask) of a batch's first target step."""
        return prepare_step(self.normalizer, batch.targets[:, 0], batch.inputs,
                            conditioning(self.normalizer, batch.inputs, batch.forcings[:, 0], batch.static))
