"""Noise levels: the training distribution and the sampler's grid (EDM eq. 5; GenCast §A).

Both use the rho-spaced inverse CDF

    sigma(u) = (sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,  u in [0, 1],

which for rho = 7 puts most levels near sigma_min. Training draws u ~ U[0, 1]
per example (GenCast: sigma in [0.02, 88]); sampling takes u = 1, ..., 0 on an
even grid (20 levels from 80 to 0.03) and appends sigma = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.diffusion.config import NoiseConfig, SamplerConfig


def rho_quantile(u, min_noise_level: float, max_noise_level: float, rho: float):
    """sigma(u) = (s_min^(1/rho) + u (s_max^(1/rho) - s_min^(1/rho)))^rho for u in [0, 1] (numpy or jax).

    This is the quantile function of the training noise distribution: a
    Beta(rho, 1)-shaped law on sigma^(1/rho), so u = 0.5 gives its median.
    """
    low, high = min_noise_level ** (1.0 / rho), max_noise_level ** (1.0 / rho)
    return (low + u * (high - low)) ** rho


def sample_training_noise_levels(key: jax.Array, batch_size: int, config: NoiseConfig,
                                 dtype=jnp.float32) -> jax.Array:
    """Per-example training noise levels [B]: sigma = rho_quantile(u), u ~ U[0, 1] i.i.d."""
    u = jax.random.uniform(key, (batch_size,), dtype=dtype)
    return rho_quantile(u, config.min_noise_level, config.max_noise_level, config.rho).astype(dtype)


def sampling_noise_levels(config: SamplerConfig) -> np.ndarray:
    """The sampler's descending grid [N + 1]: sigma_i = rho_quantile(1 - i / (N - 1)), i < N, then 0.

    sigma_0 = max_noise_level, sigma_{N-1} = min_noise_level; the final 0 is the
    clean-sample level the last step jumps to. N = 1 gives [max_noise_level, 0].
    """
    count = config.num_noise_levels
    u = np.linspace(1.0, 0.0, count) if count > 1 else np.ones(1)
    levels = rho_quantile(u, config.min_noise_level, config.max_noise_level, config.rho)
    return np.append(levels, 0.0)


def churn_rates(noise_levels: np.ndarray, config: SamplerConfig) -> np.ndarray:
    """Per-level churn gamma_i [N] for the levels before the final 0 (EDM Algorithm 2).

    gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax, else 0.
    The cap sqrt(2) - 1 keeps sigma_hat = sigma (1 + gamma) from more than
    doubling the variance of the state, however few levels are used.
    """
    levels = np.asarray(noise_levels[:-1], dtype=np.float64)
    rate = min(config.churn / len(levels), np.sqrt(2.0) - 1.0)
    upper = np.inf if config.churn_max_noise_level is None else config.churn_max_noise_level
    active = (levels >= config.churn_min_noise_level) & (levels <= upper)
    return np.where(active, rate, 0.0)
