"""The weighted denoising loss of GenCast (graphcast `gencast.py` + `losses.weighted_mse_per_level`).

For an example with clean targets x0, a noise level sigma ~ the training
distribution and spherical noise eps,

    L = lambda(sigma) * sum_c w_c * [ sum_{j,i} a_j m_jic (D(x0 + sigma eps; sigma)_jic - x0_jic)^2
                                      / sum_{j,i} a_j m_jic ]

- a_j: latitude cell-area weights (cell bounds [-pi/2, midpoints, +pi/2],
  a = sin(upper) - sin(lower); `gencast_rmmd.data.grid.latitude_cell_weights`);
- m: the validity mask (False where the target is NaN, e.g. SST over land); a
  channel's mean runs over its valid points only;
- w_c: channel weights (`channel_loss_weights`): per-variable weight times, for
  pressure-level variables, pressure / mean(pressure) / n_levels;
- lambda(sigma) = (sigma^2 + 1) / sigma^2, the EDM loss weight.

The batch loss is the mean of L over examples. Like graphcast, each variable's
loss is a (level-weighted) mean over its levels and the variables are then
summed with their weights, so a 13-level variable counts as much as a surface one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.diffusion.base import Conditioning, Denoiser
from gencast_rmmd.diffusion.config import NoiseConfig
from gencast_rmmd.diffusion.noise import NoiseFn
from gencast_rmmd.diffusion.preconditioning import loss_weight
from gencast_rmmd.diffusion.schedules import sample_training_noise_levels


def channel_loss_weights(layout: ChannelLayout, variable_weights: Mapping[str, float],
                         default_weight: float = 1.0) -> np.ndarray:
    """Loss weight of every target channel [C]: w_c = v(var) * (p_c / mean_var(p) / n_levels(var), or 1).

    v(var) is `variable_weights.get(var, default_weight)`. A pressure-level
    variable's channels get weights proportional to pressure p (hPa), normalised
    to mean 1 over that variable's levels, then divided by its number of levels
    (its loss is a level-weighted mean); a single-level variable's channel gets 1.
    Names in `variable_weights` that are not target variables are an error.
    """
    channels = layout.target_channels
    known = {channel.variable for channel in channels}
    unknown = sorted(set(variable_weights) - known)
    if unknown:
        raise ValueError(f"loss variable_weights name variables that are not targets: {', '.join(unknown)}; "
                         f"targets are: {', '.join(sorted(known))}")
    levels_of: dict[str, list[int]] = {}
    for channel in channels:
        if channel.level is not None:
            levels_of.setdefault(channel.variable, []).append(channel.level)
    weights = np.empty(len(channels), dtype=np.float64)
    for index, channel in enumerate(channels):
        weight = float(variable_weights.get(channel.variable, default_weight))
        if channel.level is not None:
            pressures = np.asarray(levels_of[channel.variable], dtype=np.float64)
            weight *= channel.level / pressures.mean() / len(pressures)
        weights[index] = weight
    return weights.astype(np.float32)


def area_mean(values: jax.Array, latitude_weights: np.ndarray, valid: jax.Array,
              times: jax.Array | None = None) -> jax.Array:
    """The weighted norm's spatial part [B, C]: sum_{j,i} a_j m_bjic v_bjic / sum_{j,i} a_j m_bjic (0 without valid points).

    values, valid (and `times`) [B, lat, lon, C], `latitude_weights` a [lat].
    With `times` u the mean is of v u, the pointwise product of an inner
    product, formed as (a m v) u. The one area-weighted masked mean of the
    denoising loss, the moment terms and the reward; the channel weights w_c
    are applied by the caller (`@ w`).
    """
    area = jnp.asarray(latitude_weights, values.dtype)[None, :, None, None] * valid
    total = jnp.sum(area, axis=(1, 2))
    weighted = area * values if times is None else area * values * times
    return jnp.sum(weighted, axis=(1, 2)) / jnp.where(total > 0, total, 1.0)


@dataclass(frozen=True, eq=False)
class WeightedNorm:
    """The one weighted norm of the model's space: the denoising loss, the moment terms and the reward use it.

    Per example b, with latitude cell-area weights a_j, validity mask m and channel weights w_c,

        <u, v>_W = sum_c w_c sum_{j,i} a_j m_bjic u_bjic v_bjic / sum_{j,i} a_j m_bjic

    (`inner`); `mean(v)` is the same weighted mean of one field (a CRPS map, a squared error). A channel
    without valid points in an example contributes 0. `scaled(k)` is the norm with weights w_c k_c (the
    reward's units, `distill.reward.reward_channel_scale`).
    """

    latitude_weights: np.ndarray     # a_j [lat], float32
    channel_weights: np.ndarray      # w_c [C], float32

    def channel_means(self, values: jax.Array, valid: jax.Array, times: jax.Array | None = None) -> jax.Array:
        """[B, C]: the area-weighted masked mean of `values` (times `times`) per channel (`area_mean`)."""
        return area_mean(values, self.latitude_weights, valid, times=times)

    def weigh(self, per_channel: jax.Array) -> jax.Array:
        """sum_c w_c x_c over the last axis."""
        return per_channel @ jnp.asarray(self.channel_weights, per_channel.dtype)

    def mean(self, values: jax.Array, valid: jax.Array) -> jax.Array:
        """Per example [B]: sum_c w_c (area-weighted masked mean of `values` in channel c)."""
        return self.weigh(self.channel_means(values, valid))

    def inner(self, a: jax.Array, b: jax.Array, valid: jax.Array) -> jax.Array:
        """<a, b>_W per example [B]."""
        return self.weigh(self.channel_means(a, valid, times=b))

    def total_weight(self, dtype) -> jax.Array:
        """sum_c w_c: divided by it, `mean` and `inner` are weighted averages over channels."""
        return jnp.sum(jnp.asarray(self.channel_weights, dtype))

    def scaled(self, scale: np.ndarray) -> "WeightedNorm":
        """The norm with channel weights w_c * scale_c."""
        return WeightedNorm(self.latitude_weights, (self.channel_weights * scale).astype(np.float32))


def weighted_denoising_error(denoised: jax.Array, clean_targets: jax.Array, noise_levels: jax.Array,
                             norm: WeightedNorm, valid: jax.Array) -> jax.Array:
    """Per-channel loss [C] before channel weights: mean_b lambda(sigma_b) * area-weighted masked MSE_bc.

    MSE_bc = sum_{j,i} a_j m_bjic (denoised - clean)^2 / sum_{j,i} a_j m_bjic, and 0
    for a channel with no valid point in an example. Both arrays must be finite
    everywhere (zero invalid points first): a NaN outside `valid` still turns
    the gradient into NaN.
    """
    squared = jnp.where(valid, jnp.square(denoised - clean_targets), 0.0)
    mse = norm.channel_means(squared, valid)
    return jnp.mean(loss_weight(noise_levels)[:, None] * mse, axis=0)


def denoising_loss(denoiser: Denoiser, clean_targets: jax.Array, conditioning: Conditioning, key: jax.Array,
                   noise_config: NoiseConfig, norm: WeightedNorm, mask: jax.Array | None = None, *,
                   noise: NoiseFn,
                   channel_names: Sequence[str] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GenCast training loss of one batch and its per-variable parts (jittable).

    Draws sigma_b from `noise_config` per example and eps = `noise(key, shape)`
    (spherical noise of the target grid), forms x = x0 + sigma eps and returns
    mean_b lambda(sigma_b) sum_c w_c MSE_bc (see the module docstring), the
    squared error measured in `norm` (its weights w [C] and a [lat]). Points where `mask`
    (broadcastable to the targets; True = valid) is False or the target is not
    finite are left out; they are zeroed before noising so no NaN reaches the
    network or the gradient. Diagnostics: each variable's weighted contribution
    (they sum to the loss), keyed by `channel_names` (one variable name per
    channel; default `channel_<i>`).
    """
    n_channels = clean_targets.shape[-1]
    if norm.channel_weights.shape != (n_channels,):
        raise ValueError(f"the norm's channel weights have shape {norm.channel_weights.shape}; the targets have "
                         f"{n_channels} channels")
    names = list(channel_names) if channel_names is not None else [f"channel_{i}" for i in range(n_channels)]
    if len(names) != n_channels:
        raise ValueError(f"channel_names lists {len(names)} names for {n_channels} channels")

    level_key, noise_key = jax.random.split(key)
    noise_levels = sample_training_noise_levels(level_key, clean_targets.shape[0], noise_config,
                                                dtype=clean_targets.dtype)
    valid = jnp.isfinite(clean_targets)
    if mask is not None:
        valid = valid & jnp.broadcast_to(jnp.asarray(mask, dtype=bool), clean_targets.shape)
    clean = jnp.where(valid, clean_targets, 0.0)
    noisy = clean + noise_levels[:, None, None, None] * noise(noise_key, clean.shape).astype(clean.dtype)
    denoised = denoiser(noisy, noise_levels, conditioning)

    per_channel = weighted_denoising_error(denoised, clean, noise_levels, norm, valid)
    contributions = per_channel * jnp.asarray(norm.channel_weights, per_channel.dtype)
    diagnostics: dict[str, jax.Array] = {}
    for name, contribution in zip(names, contributions):
        diagnostics[name] = diagnostics.get(name, 0.0) + contribution
    return jnp.sum(contributions), diagnostics
