"""The teacher's training task: GenCast's weighted denoising loss on residual-normalised targets.

For a batch with physical inputs X (two frames), forcings and targets Y:
    x0 = (Y - X_t) / diffs_std          (residual-normalised targets; target-only: (Y - mean)/std)
    cond = ((X - mean)/std, forcings, (static - mean)/std)
    loss = E_sigma,eps [ lambda(sigma) sum_c w_c |D(x0 + sigma eps; sigma, cond) - x0|^2_area ]
with sigma from the rho-schedule, eps spherical white noise, D the EDM-preconditioned
graph denoiser. NaN targets (SST over land) are masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.diffusion.loss import channel_loss_weights, denoising_loss
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.models.denoiser import DenoiserNetwork
from gencast_rmmd.teacher.config import TeacherConfig
from gencast_rmmd.training import TrainableState, UpdateRule


def first_step(batch: Batch, normalizer: Normalizer) -> tuple[jax.Array, Conditioning, jax.Array]:
    """(normalised targets x0 [B, lat, lon, C], conditioning, validity mask) of a batch's first target step."""
    targets = batch.targets[:, 0]
    last = normalizer.last_frame(batch.inputs)
    conditioning = Conditioning(normalizer.normalize_inputs(batch.inputs), batch.forcings[:, 0],
                                normalizer.normalize_static(batch.static))
    return normalizer.normalize_targets(targets, last), conditioning, jnp.isfinite(targets)


@dataclass(frozen=True, eq=False)
class TeacherTask:
    """A `TrainTask` with one parameter group, `denoiser`."""

    config: TeacherConfig
    network: DenoiserNetwork
    normalizer: Normalizer
    layout: ChannelLayout
    latitude: np.ndarray
    longitude: np.ndarray
    payload: dict

    @property
    def noise(self) -> SphericalNoise:
        return SphericalNoise.for_grid(self.latitude, self.longitude)

    def loss(self, params, frozen, key, batch: Batch):
        del frozen
        clean, conditioning, valid = first_step(batch, self.normalizer)
        denoiser = PreconditionedDenoiser(lambda x, sigma, cond: self.network.apply(params["denoiser"], x, sigma, cond))
        weights = channel_loss_weights(self.layout, self.config.loss.variable_weights, self.config.loss.default_weight)
        names = [channel.variable for channel in self.layout.target_channels]
        return denoising_loss(denoiser, clean, conditioning, key, self.config.noise, weights,
                              latitude_cell_weights(self.latitude), valid, noise=self.noise, channel_names=names)

    def init(self, key, example_batch: Batch) -> TrainableState:
        clean, conditioning, _ = first_step(example_batch, self.normalizer)
        sigma = jnp.ones((clean.shape[0],), clean.dtype)
        return TrainableState(params={"denoiser": self.network.init(key, clean, sigma, conditioning)})

    def update_rules(self):
        return [UpdateRule("denoiser", ("denoiser",), self.loss)]

    def validation_loss(self, params, frozen, key, batch: Batch):
        return self.loss(params, frozen, key, batch)

    def config_payload(self) -> dict:
        return self.payload
