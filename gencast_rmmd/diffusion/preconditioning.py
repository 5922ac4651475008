"""EDM preconditioning with sigma_data = 1 (Karras et al. 2022, Table 1; GenCast §A).

The raw network F sees inputs of unit variance and predicts a unit-variance
target; the coefficients turn it into the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; sigma, cond)

with c_in = (sigma^2 + 1)^-1/2, c_skip = 1 / (sigma^2 + 1), c_out = sigma (sigma^2 + 1)^-1/2.
The EDM loss weight lambda(sigma) = (sigma^2 + 1) / sigma^2 = c_out^-2 makes the
effective training target of F have unit weight at every noise level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from gencast_rmmd.diffusion.base import Conditioning, per_example

# F(scaled_noisy_targets [B, lat, lon, C], noise_level [B], conditioning) -> [B, lat, lon, C]
RawNetwork = Callable[[jax.Array, jax.Array, Conditioning], jax.Array]


def c_in(noise_level: jax.Array) -> jax.Array:
    """Input scaling c_in(sigma) = (sigma^2 + 1)^(-1/2): makes c_in x unit-variance when x = x0 + sigma eps."""
    return jax.lax.rsqrt(jnp.square(noise_level) + 1.0)


def c_skip(noise_level: jax.Array) -> jax.Array:
    """Skip weight c_skip(sigma) = 1 / (sigma^2 + 1): the share of the noisy input kept in D (-> 1 as sigma -> 0)."""
    return 1.0 / (jnp.square(noise_level) + 1.0)


def c_out(noise_level: jax.Array) -> jax.Array:
    """Output scaling c_out(sigma) = sigma (sigma^2 + 1)^(-1/2): the network's share in D (-> 0 as sigma -> 0)."""
    return noise_level * jax.lax.rsqrt(jnp.square(noise_level) + 1.0)


def loss_weight(noise_level: jax.Array) -> jax.Array:
    """EDM loss weight lambda(sigma) = (sigma^2 + 1) / sigma^2 = c_out(sigma)^-2."""
    return (jnp.square(noise_level) + 1.0) / jnp.square(noise_level)


@dataclass(frozen=True)
class PreconditionedDenoiser:
    """A `Denoiser` built from a raw network F: D(x; sigma) = c_skip x + c_out F(c_in x; sigma, cond).

    `network` is F with its parameters bound, e.g.
    `functools.partial(denoiser_network.apply, params)`. Noise levels are [B]
    EDM sigmas (a scalar is broadcast to the batch); F receives them unchanged
    (it encodes log sigma itself).
    """

    network: RawNetwork

    def __call__(self, noisy_targets: jax.Array, noise_level: jax.Array,
                 conditioning: Conditioning) -> jax.Array:
        noise_level = jnp.broadcast_to(jnp.asarray(noise_level, noisy_targets.dtype), noisy_targets.shape[:1])
        sigma = per_example(noise_level, noisy_targets)
        raw = self.network(c_in(sigma) * noisy_targets, noise_level, conditioning)
        return c_skip(sigma) * noisy_targets + c_out(sigma) * raw.astype(noisy_targets.dtype)
