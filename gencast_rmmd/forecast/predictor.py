"""One 12 h step in physical units: normalise, sample with any `Sampler`, un-normalise.

This is the `Normalized` wrapper of the design: the sampler and the denoiser
work in GenCast's residual-normalised space and never see physical units;
`Predictor` maps physical inputs to a physical sample of the next state
(NaNs, e.g. SST over land, restored where the latest input had them).
Teacher and student differ only in their sampler and parameters.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax

from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.base import Conditioning, Denoiser, Sampler
from gencast_rmmd.diffusion import model_space
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.models.denoiser import DenoiserNetwork


@dataclass(frozen=True, eq=False)
class Predictor:
    """Network + sampler + normalisation: physical inputs -> physical next state."""

    network: DenoiserNetwork
    sampler: Sampler
    normalizer: Normalizer

    def denoiser(self, params) -> Denoiser:
        """D(x; sigma, cond) with `params` bound (EDM preconditioning around the network)."""
        return PreconditionedDenoiser(functools.partial(self.network.apply, params))

    def conditioning(self, inputs: jax.Array, forcings: jax.Array, static: jax.Array) -> Conditioning:
        """Normalised conditioning from physical inputs [B, lat, lon, F*C_in], forcings, static."""
        return model_space.conditioning(self.normalizer, inputs, forcings, static)

    def sample(self, params, inputs: jax.Array, forcings: jax.Array, static: jax.Array,
               key: jax.Array) -> jax.Array:
        """A sample of the next state [B, lat, lon, C_target] in physical units."""
        conditioning = self.conditioning(inputs, forcings, static)
        shape = (*inputs.shape[:-1], self.normalizer.target_scale.shape[0])
        residual = self.sampler(self.denoiser(params), conditioning, key, shape)
        last = self.normalizer.last_frame(inputs)
        return self.normalizer.restore_nan(self.normalizer.denormalize_targets(residual, last), last)

    def next_inputs(self, inputs: jax.Array, prediction: jax.Array) -> jax.Array:
        """Shift the input window by one step: drop the oldest frame, append the prediction's input channels."""
        return model_space.next_inputs(self.normalizer, inputs, prediction)
