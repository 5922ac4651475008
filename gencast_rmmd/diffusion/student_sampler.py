"""The K-step student sampler of moment matching (docs/DESIGN.md §5; Salimans et al. 2024; RMMD).

Noise levels are the teacher's EDM sigmas s (x_s = x_0 + s eps). The grid is

    s_i = (s_max^(1/rho) + i/(K-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,  i = 0..K-1,  then s_K = 0,

and rho -> inf (`rho: .inf`) gives s_i = s_max (s_min/s_max)^(i/(K-1)), uniform in log s,
i.e. in log-SNR. One step from s_t to s_s < s_t with the student's estimate
x0_hat = Phi_theta(x_t; s_t) (the paper's variance-preserving step rewritten
with alpha = 1/sqrt(1+s^2), sigma_VP = s alpha, x_VP = alpha x):

    eps_hat = (x_t - x0_hat) / s_t
    gamma   = eta s_s sqrt(1 - s_s^2 / s_t^2)
    x_s     = x0_hat + sqrt(s_s^2 - gamma^2) eps_hat + gamma z,     z ~ spherical white noise.

eta = 0 is deterministic (DDIM); eta = 1 is the DDPM posterior q(x_s | x_t, x_0 = x0_hat):
mean x0_hat + (s_s^2/s_t^2)(x_t - x0_hat), variance s_s^2 (s_t^2 - s_s^2)/s_t^2.
The last step (to s_K = 0) returns x0_hat, so a sample costs K denoiser calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.diffusion.base import Conditioning, Denoiser, per_example
from gencast_rmmd.diffusion.config import StudentSamplerConfig
from gencast_rmmd.diffusion.noise import NoiseFn, SphericalNoise
from gencast_rmmd.diffusion.schedules import rho_quantile

# D(x; s) with the conditioning bound: (x [B, lat, lon, C], s [B] or scalar) -> x0_hat [B, lat, lon, C].
BoundDenoiser = Callable[[jax.Array, jax.Array], jax.Array]


def student_quantile(u, config: StudentSamplerConfig):
    """s(u) = (s_min^(1/rho) + u (s_max^(1/rho) - s_min^(1/rho)))^rho, u in [0, 1]; log-uniform for rho = inf."""
    low, high = config.min_noise_level, config.max_noise_level
    if np.isinf(config.rho):
        return low * (high / low) ** u
    return rho_quantile(u, low, high, config.rho)


def student_noise_levels(config: StudentSamplerConfig) -> np.ndarray:
    """The descending grid [K + 1]: s_i = student_quantile(1 - i/(K-1)) for i < K, then 0 (K = 1: [s_max, 0])."""
    count = config.steps
    u = np.linspace(1.0, 0.0, count) if count > 1 else np.ones(1)
    return np.append(student_quantile(u.astype(np.float64), config), 0.0)


def eta_scales(noise_level: jax.Array, next_noise_level: jax.Array, eta: float) -> tuple[jax.Array, jax.Array]:
    """(sqrt(s_s^2 - gamma^2), gamma) of the eta-step s_t -> s_s: the scales of eps_hat and of the fresh noise z.

    So the step's mean is x0_hat + sqrt(s_s^2 - gamma^2) (x_t - x0_hat) / s_t and its
    noise gamma z: a Gaussian transition whenever gamma > 0 (GNDM's policy, `distill/gndm.py`).
    """
    gamma = eta * next_noise_level * jnp.sqrt(jnp.maximum(1.0 - jnp.square(next_noise_level / noise_level), 0.0))
    return jnp.sqrt(jnp.maximum(jnp.square(next_noise_level) - jnp.square(gamma), 0.0)), gamma


def eta_step(x_t: jax.Array, denoised: jax.Array, noise_level: jax.Array, next_noise_level: jax.Array,
             eta: float, fresh_noise: jax.Array | None) -> jax.Array:
    """x_s = x0_hat + sqrt(s_s^2 - gamma^2) eps_hat + gamma z, gamma = eta s_s sqrt(1 - s_s^2/s_t^2).

    `noise_level` s_t > 0 and `next_noise_level` s_s <= s_t are scalars or [B];
    `fresh_noise` z is unit-variance noise shaped like x_t (None only for eta = 0).
    """
    s_t, s_s = per_example(noise_level, x_t), per_example(next_noise_level, x_t)
    eps_hat = (x_t - denoised) / s_t
    kept, gamma = eta_scales(s_t, s_s, eta)
    x_s = denoised + kept * eps_hat
    if eta > 0.0:
        if fresh_noise is None:
            raise ValueError("eta > 0 needs fresh noise")
        x_s = x_s + gamma * fresh_noise
    return x_s


def bind(denoiser: Denoiser, conditioning: Conditioning) -> BoundDenoiser:
    """D(x; s, cond) with `conditioning` fixed; scalar levels are broadcast to the batch."""
    def denoise(x: jax.Array, noise_level: jax.Array) -> jax.Array:
        return denoiser(x, jnp.broadcast_to(jnp.asarray(noise_level, x.dtype), x.shape[:1]), conditioning)
    return denoise


def run_steps(denoise: BoundDenoiser, x: jax.Array, levels: np.ndarray, eta: float, noise: NoiseFn,
              key: jax.Array, stop_index: jax.Array | None = None) -> jax.Array:
    """Apply the eta-steps levels[j] -> levels[j+1] for j = 0..len(levels)-2 to x (at levels[0]).

    Returns the final state, or, with `stop_index` [B] (ints in [0, len(levels)-1]),
    each example's state at level `levels[stop_index]` (the chain stopped there).
    One denoiser call per step, under `lax.scan`; step j draws its noise from
    `split(key, n_steps)[j]`.
    """
    levels = np.asarray(levels, np.float32)
    count = len(levels) - 1
    if count <= 0:
        return x
    keys = jax.random.split(key, count)

    def step(carry, per_step):
        state, kept = carry
        index, level, next_level, step_key = per_step
        fresh = noise(step_key, state.shape).astype(state.dtype) if eta > 0.0 else None
        state = eta_step(state, denoise(state, level), level, next_level, eta, fresh)
        if stop_index is not None:
            kept = jnp.where(per_example(stop_index == index + 1, state), state, kept)
        return (state, kept), None

    (state, kept), _ = jax.lax.scan(step, (x, x), (jnp.arange(count), levels[:-1], levels[1:], keys))
    return state if stop_index is None else kept


@dataclass(frozen=True, eq=False)
class StudentSampler:
    """The student's `Sampler`: x_0 = s_0 z, K - 1 eta-steps, then x0_hat = D(x; s_{K-1}); K denoiser calls.

    Jit-compatible; randomness only from `key` (`split(key)` -> initial noise,
    per-step noise); no churn (the paper's student uses none).
    """

    config: StudentSamplerConfig
    noise: NoiseFn

    @property
    def noise_levels(self) -> np.ndarray:
        """Descending levels [K + 1], ending with 0."""
        return student_noise_levels(self.config)

    @property
    def nfe_per_step(self) -> int:
        """Denoiser calls per sample: K."""
        return self.config.steps

    def __call__(self, denoiser: Denoiser, conditioning: Conditioning, key: jax.Array,
                 target_shape: tuple[int, ...]) -> jax.Array:
        levels = self.noise_levels[:-1]
        initial_key, steps_key = jax.random.split(key)
        x = jnp.float32(levels[0]) * self.noise(initial_key, tuple(target_shape))
        denoise = bind(denoiser, conditioning)
        x = run_steps(denoise, x, levels, self.config.eta, self.noise, steps_key)
        return denoise(x, jnp.float32(levels[-1]))


def build_student_sampler(config: dict, latitude: np.ndarray, longitude: np.ndarray,
                          noise: dict | None = None) -> StudentSampler:
    """`SAMPLER_BUILDERS['student_kstep']`: the sampler a student checkpoint describes."""
    return StudentSampler(StudentSamplerConfig(**config), SphericalNoise.from_spec(latitude, longitude, noise))
