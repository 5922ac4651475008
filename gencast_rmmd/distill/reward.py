"""The reward of RMMD: R = -(fair CRPS) of M >= 2 student samples per condition, differentiable in JAX.

Per grid point and channel, with samples x_1..x_M and the truth y (Ferro 2014;
Zamo & Naveau 2018; WeatherBench2 `CRPS`; GenCast eq. A.9):

    CRPS_fair = (1/M) sum_i |x_i - y|  -  1/(2 M (M-1)) sum_i sum_j |x_i - x_j|,

unbiased for the CRPS of the distribution the samples come from (the plain
ensemble CRPS, xskillscore's, divides the spread by 2 M^2 and is biased).
It is the direct O(M^2) double sum, exact for the small M used in training;
its gradient with respect to x_i is (1/M) sign(x_i - y) - 1/(M(M-1)) sum_j sign(x_i - x_j).

Which space. The model works on residual-normalised targets
x = (Y - X_last) / diffs_std (`Normalizer`). CRPS is shift-equivariant and
positively homogeneous (CRPS(a X + b, a Y + b) = a CRPS(X, Y), a > 0), so the
physical-unit CRPS of channel c is diffs_std_c times its CRPS in the model's
space, and adding X_last changes nothing. Summing physical CRPS across
variables is meaningless (K, m^2 s^-2, Pa), so the default
(`reward_units: climatology`) multiplies channel c by k_c = diffs_std_c / std_c:
each channel's CRPS is then its physical CRPS in units of its climatological
standard deviation, the usual normalisation of scorecards, and relative gains
per variable are exactly the evaluation's. `residual` (k_c = 1) scores in the
model's space, where channels are scaled by their 12 h variability.

Weights: latitude cell area a_j (`latitude_cell_weights`, mean 1) and the
teacher loss's channel weights w_c (level weight proportional to pressure,
per-variable weights from the teacher config); points whose target is NaN
(SST over land) are masked out of the area mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.loss import WeightedNorm


def fair_crps(samples: jax.Array, target: jax.Array) -> jax.Array:
    """Pointwise fair CRPS: (1/M) sum_i |x_i - y| - 1/(2M(M-1)) sum_{i,j} |x_i - x_j|; samples [M, ...], M >= 2.

    Returns an array shaped like `target`, in the units of the inputs.
    """
    members = samples.shape[0]
    if members < 2:
        raise ValueError(f"the fair CRPS needs at least 2 samples, got {members}")
    skill = jnp.mean(jnp.abs(samples - target[None]), axis=0)
    pair_sum = jnp.sum(jnp.abs(samples[:, None] - samples[None, :]), axis=(0, 1))
    return skill - pair_sum / (2.0 * members * (members - 1))


def weighted_fair_crps(samples: jax.Array, target: jax.Array, valid: jax.Array, norm: WeightedNorm) -> jax.Array:
    """Per-condition weighted fair CRPS [B]: sum_c w_c sum_{j,i} a_j m_bjic CRPS_bjic / sum_{j,i} a_j m_bjic.

    samples [M, B, lat, lon, C], target and valid (True = finite truth)
    [B, lat, lon, C]; `norm` holds a [lat] and w [C] (with the reward-unit
    scale k_c: `WeightedNorm.scaled`). A channel without valid points
    contributes 0. NaN targets are zeroed before the CRPS so no NaN reaches
    the gradient.
    """
    target = jnp.where(valid, target, 0.0)
    samples = jnp.where(valid[None], samples, 0.0)
    crps = jnp.where(valid, fair_crps(samples, target), 0.0)
    return norm.mean(crps, valid)


def member_fair_crps(samples: jax.Array, target: jax.Array, valid: jax.Array, norm: WeightedNorm) -> jax.Array:
    """Each member's share of the weighted fair CRPS [M, B]; its mean over members is `weighted_fair_crps`.

    The fair CRPS is a mean over members i of c_i = |x_i - y| - 1/(2(M-1)) sum_j |x_i - x_j|
    (the skill of x_i less half its mean distance to the others), so -c_i is a
    per-sample reward whose group mean is R (GNDMR's CRPS reward, `distill/gndm.py`).
    Same weights, mask and shapes as `weighted_fair_crps`; M >= 2.
    """
    members = samples.shape[0]
    if members < 2:
        raise ValueError(f"the fair CRPS needs at least 2 samples, got {members}")
    target = jnp.where(valid, target, 0.0)
    samples = jnp.where(valid[None], samples, 0.0)
    spread = jnp.sum(jnp.abs(samples[:, None] - samples[None, :]), axis=1) / (2.0 * (members - 1))
    shares = jnp.where(valid[None], jnp.abs(samples - target[None]) - spread, 0.0)
    flat_valid = jnp.broadcast_to(valid[None], shares.shape).reshape(-1, *shares.shape[2:])
    return norm.mean(shares.reshape(-1, *shares.shape[2:]), flat_valid).reshape(members, -1)


def reward_channel_scale(normalizer: Normalizer, units: str) -> np.ndarray:
    """k_c [C] turning a residual-space CRPS into the reward's units (see the module docstring).

    `climatology`: k_c = target_scale_c / std_c, with std_c the climatological
    std of the channel (its input std; target-only channels are already
    normalised by std, k_c = 1). `residual`: k_c = 1.
    """
    scale = np.asarray(normalizer.target_scale, np.float64)
    if units == "residual":
        return np.ones_like(scale, dtype=np.float32)
    if units != "climatology":
        raise ValueError(f"unknown reward units {units!r}")
    index = np.asarray(normalizer.target_input_index)
    climatological = np.where(index >= 0, np.asarray(normalizer.input_std, np.float64)[np.maximum(index, 0)], scale)
    return (scale / climatological).astype(np.float32)
