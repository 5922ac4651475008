"""The roles every model, sampler and distiller plugs into.

A `Denoiser` maps noisy targets at a noise level to an estimate of the clean
targets, given the conditioning. A `Sampler` turns a denoiser into samples; it
never knows how the network is built. Teacher (DPM-Solver++ 2S) and student
(K-step moment-matching) samplers share this slot.

All arrays are in the model's normalised space: targets are GenCast residuals
(`gencast_rmmd.data.normalization`), sigma_data = 1, noise levels are EDM
sigmas (variance exploding: x_sigma = x_0 + sigma * eps).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp


class Conditioning(NamedTuple):
    """Everything a denoiser conditions on for one 12 h step (normalised)."""

    inputs: jax.Array     # [B, lat, lon, F * C_in]  normalised input frames
    forcings: jax.Array   # [B, lat, lon, C_forcing]  at the target time
    static: jax.Array     # [lat, lon, C_static]  normalised static fields


class Denoiser(Protocol):
    """D(x; sigma, cond): the denoised estimate of clean (normalised residual) targets."""

    def __call__(self, noisy_targets: jax.Array, noise_level: jax.Array,
                 conditioning: Conditioning) -> jax.Array:
        """noisy_targets [B, lat, lon, C]; noise_level [B] (EDM sigma); returns [B, lat, lon, C]."""


class Sampler(Protocol):
    """Draws one sample of the (normalised residual) targets per example."""

    @property
    def nfe_per_step(self) -> int:
        """Denoiser calls made per sample (one 12 h step)."""

    def __call__(self, denoiser: Denoiser, conditioning: Conditioning, key: jax.Array,
                 target_shape: tuple[int, ...]) -> jax.Array:
        """Returns a sample of shape `target_shape` ([B, lat, lon, C])."""


def per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """Per-example values [B] (or a scalar) broadcast against [B, lat, lon, C]; floats in `like`'s dtype."""
    values = jnp.asarray(values)
    if jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(like.dtype)
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))
