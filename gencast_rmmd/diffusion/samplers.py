"""The teacher sampler: DPM-Solver++ 2S with EDM stochastic churn (GenCast §A; graphcast
`dpm_solver_plus_plus_2s.py`; Lu et al. 2022, arXiv 2211.01095; Karras et al. 2022, Alg. 2).

Derivation of the step. In the variance-exploding form x_sigma = x_0 + sigma eps
the probability-flow ODE is dx/dsigma = (x - D(x; sigma)) / sigma. Holding the
denoised estimate D fixed over a step, x - D obeys d(x - D)/dsigma = (x - D)/sigma,
so x - D is proportional to sigma and

    x(sigma') = (sigma'/sigma) x(sigma) + (1 - sigma'/sigma) D,          (first order, DDIM)

a convex combination (0 <= sigma'/sigma < 1) of the current state and the
denoised estimate. DPM-Solver++ 2S (single-step, second order, midpoint r = 1/2
in lambda = -log sigma) evaluates D where it matters for the step, at the
geometric midpoint sigma_m = sqrt(sigma sigma'):

    x0_hat = D(x; sigma)
    x_m    = (sigma_m/sigma) x + (1 - sigma_m/sigma) x0_hat             (half step)
    x'     = (sigma'/sigma)  x + (1 - sigma'/sigma)  D(x_m; sigma_m)    (full step)

(Lu et al. write D_i = (1 - 1/(2r)) x0_hat + 1/(2r) D(x_m); with r = 1/2 the first
term vanishes.) At the final level sigma' = 0, so sigma_m = 0, x_m = x0_hat and
x' = D(x0_hat; 0) = x0_hat, because the preconditioned denoiser is the identity at
sigma = 0 (c_skip = 1, c_out = 0). The last level therefore returns
x0_hat = D(x; sigma_{N-1}) and skips the midpoint call, which GenCast's loop makes
and throws away: 2 N - 1 denoiser calls for N levels (39 for 20).

Churn (before each step, at levels S_tmin <= sigma <= S_tmax): raise the noise
level to sigma_hat = sigma (1 + gamma) by adding fresh noise,
x_hat = x + S_noise sqrt(sigma_hat^2 - sigma^2) eps, and take the step from
sigma_hat instead of sigma. S_noise > 1 slightly over-noises to offset the
blurring of an L2-trained denoiser. All noise here is spherical (`noise.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.diffusion.base import Conditioning, Denoiser
from gencast_rmmd.diffusion.config import SamplerConfig
from gencast_rmmd.diffusion.noise import NoiseFn
from gencast_rmmd.diffusion.schedules import churn_rates, sampling_noise_levels

# D(x; sigma) with the conditioning bound: (x [B, lat, lon, C], sigma scalar) -> [B, lat, lon, C].
BoundDenoiser = Callable[[jax.Array, jax.Array], jax.Array]


def dpm_solver_2s_update(denoise: BoundDenoiser, x: jax.Array, noise_level: jax.Array,
                         next_noise_level: jax.Array) -> jax.Array:
    """One DPM-Solver++ 2S step from sigma to sigma' > 0 (two denoiser calls).

    x0_hat = D(x; sigma); sigma_m = sqrt(sigma sigma');
    x_m = (sigma_m/sigma) x + (1 - sigma_m/sigma) x0_hat;
    x' = (sigma'/sigma) x + (1 - sigma'/sigma) D(x_m; sigma_m).
    Both updates are convex combinations of the state and a denoised estimate.
    """
    denoised = denoise(x, noise_level)
    mid_noise_level = jnp.sqrt(noise_level * next_noise_level)
    mid_ratio = mid_noise_level / noise_level
    x_mid = mid_ratio * x + (1.0 - mid_ratio) * denoised
    ratio = next_noise_level / noise_level
    return ratio * x + (1.0 - ratio) * denoise(x_mid, mid_noise_level)


def apply_churn(noise: NoiseFn, key: jax.Array, x: jax.Array, noise_level: jax.Array,
                churn_rate: jax.Array, noise_inflation: float) -> tuple[jax.Array, jax.Array]:
    """Re-noise x from sigma to sigma_hat = sigma (1 + gamma): x + S_noise sqrt(sigma_hat^2 - sigma^2) eps.

    Returns (x_hat, sigma_hat). gamma = 0 returns x unchanged (no noise drawn when
    called through `lax.cond` on gamma > 0).
    """
    raised = noise_level * (1.0 + churn_rate)
    extra_std = noise_inflation * jnp.sqrt(jnp.maximum(raised ** 2 - noise_level ** 2, 0.0))
    return x + extra_std * noise(key, x.shape).astype(x.dtype), raised


@dataclass(frozen=True, eq=False)
class DPMSolverPlusPlus2S:
    """GenCast's teacher sampler: DPM-Solver++ 2S with stochastic churn; a `Sampler`.

    `noise` is the spherical noise of the target grid (`SphericalNoise.for_grid`).
    One call draws x_N = sigma_max * eps and runs N - 1 two-call steps under
    `lax.scan` (levels sigma_0 > ... > sigma_{N-1}), then returns the denoised
    estimate at sigma_{N-1} (after churn there, if any): 2 N - 1 denoiser calls.
    Jit-compatible; randomness only from `key` (ensemble members: `fold_in(key, i)`).
    """

    config: SamplerConfig
    noise: NoiseFn

    @property
    def noise_levels(self) -> np.ndarray:
        """Descending noise levels [N + 1], ending with 0."""
        return sampling_noise_levels(self.config)

    @property
    def churn_rates(self) -> np.ndarray:
        """Per-level churn gamma_i [N]."""
        return churn_rates(self.noise_levels, self.config)

    @property
    def nfe_per_step(self) -> int:
        """Denoiser calls per sample: 2 N - 1."""
        return 2 * self.config.num_noise_levels - 1

    def __call__(self, denoiser: Denoiser, conditioning: Conditioning, key: jax.Array,
                 target_shape: tuple[int, ...]) -> jax.Array:
        target_shape = tuple(target_shape)
        batch = target_shape[0]
        levels = self.noise_levels.astype(np.float32)
        gammas = self.churn_rates.astype(np.float32)
        inflation = self.config.noise_inflation
        init_key, churn_key = jax.random.split(key)
        step_keys = jax.random.split(churn_key, len(gammas))

        def denoise(x: jax.Array, noise_level: jax.Array) -> jax.Array:
            return denoiser(x, jnp.full((batch,), noise_level, dtype=x.dtype), conditioning)

        def churn(x: jax.Array, noise_level: jax.Array, gamma: jax.Array, step_key: jax.Array):
            return jax.lax.cond(
                gamma > 0.0,
                lambda: apply_churn(self.noise, step_key, x, noise_level, gamma, inflation),
                lambda: (x, noise_level))

        scanned_churn = bool(np.any(gammas[:-1] > 0.0))  # else no noise is drawn inside the loop

        def step(x: jax.Array, per_level) -> tuple[jax.Array, None]:
            noise_level, next_noise_level, gamma, step_key = per_level
            if scanned_churn:
                x, noise_level = churn(x, noise_level, gamma, step_key)
            return dpm_solver_2s_update(denoise, x, noise_level, next_noise_level), None

        x = levels[0] * self.noise(init_key, target_shape)
        count = len(gammas)
        if count > 1:
            x, _ = jax.lax.scan(step, x, (levels[:count - 1], levels[1:count], gammas[:count - 1],
                                          step_keys[:count - 1]))
        # Last level: sigma' = 0, so x' = x0_hat; the midpoint call would be wasted.
        last_level = jnp.asarray(levels[count - 1])
        if gammas[-1] > 0.0:
            x, last_level = apply_churn(self.noise, step_keys[-1], x, last_level, gammas[-1], inflation)
        return denoise(x, last_level)
