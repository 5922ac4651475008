"""The K-step student sampler: its grid, its eta-step (DDIM at eta=0, DDPM posterior at eta=1), its NFE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.diffusion.noise import iid_noise
from gencast_rmmd.distill.config import StudentSamplerConfig
from gencast_rmmd.diffusion.student_sampler import StudentSampler, eta_step, run_steps, student_noise_levels
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.diffusion.registry import SAMPLER_BUILDERS

SHAPE = (2, 4, 8, 3)


@pytest.mark.parametrize("steps,rho", [(1, 7.0), (2, 100.0), (5, 7.0), (8, 100.0), (8, float("inf"))])
def test_grid_matches_the_formula(steps, rho):
    config = StudentSamplerConfig(steps=steps, rho=rho, max_noise_level=80.0, min_noise_level=0.03)
    levels = student_noise_levels(config)
    assert levels.shape == (steps + 1,) and levels[-1] == 0.0
    if steps == 1:
        np.testing.assert_allclose(levels, [80.0, 0.0])
        return
    i = np.arange(steps)
    if np.isinf(rho):  # rho -> inf: log-uniform in s
        expected = np.exp(np.log(80.0) + i / (steps - 1) * (np.log(0.03) - np.log(80.0)))
    else:
        expected = (80.0 ** (1 / rho) + i / (steps - 1) * (0.03 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    np.testing.assert_allclose(levels[:-1], expected, rtol=1e-12)
    assert levels[0] == pytest.approx(80.0) and levels[steps - 1] == pytest.approx(0.03)


def test_large_rho_approaches_the_log_uniform_grid():
    finite = student_noise_levels(StudentSamplerConfig(steps=8, rho=1e6))
    infinite = student_noise_levels(StudentSamplerConfig(steps=8, rho=float("inf")))
    np.testing.assert_allclose(finite, infinite, rtol=1e-4)


def _step_coefficients(eta, s_t, s_s):
    """(x_s at z = 0, d x_s / d z) for scalar fields x_t = 1, x0_hat = 0.25: the step is affine in z."""
    x_t, denoised = jnp.full(SHAPE, 1.0), jnp.full(SHAPE, 0.25)
    at_zero = eta_step(x_t, denoised, s_t, s_s, eta, jnp.zeros(SHAPE))
    at_one = eta_step(x_t, denoised, s_t, s_s, eta, jnp.ones(SHAPE))
    return float(at_zero[0, 0, 0, 0]), float((at_one - at_zero)[0, 0, 0, 0])


@pytest.mark.parametrize("s_t,s_s", [(80.0, 20.0), (2.0, 1.5), (0.5, 0.03)])
def test_eta_one_is_the_ddpm_posterior(s_t, s_s):
    mean, std = _step_coefficients(1.0, s_t, s_s)
    assert mean == pytest.approx(0.25 + (s_s ** 2 / s_t ** 2) * (1.0 - 0.25), rel=1e-5)
    assert std ** 2 == pytest.approx(s_s ** 2 * (s_t ** 2 - s_s ** 2) / s_t ** 2, rel=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.5, 1.0])
def test_step_keeps_the_marginal_noise_level(eta):
    """With a perfect x0_hat, x_s - x0 = sqrt(s_s^2 - g^2) eps + g z has variance s_s^2 for every eta."""
    s_t, s_s = 3.0, 1.2
    mean, std = _step_coefficients(eta, s_t, s_s)
    eps_coefficient = (mean - 0.25) / ((1.0 - 0.25) / s_t)
    gamma = eta * s_s * np.sqrt(1 - s_s ** 2 / s_t ** 2)
    assert std == pytest.approx(gamma, abs=1e-6)
    assert eps_coefficient ** 2 + std ** 2 == pytest.approx(s_s ** 2, rel=1e-5)


def _toy_denoiser(x, noise_level, conditioning):
    """The exact denoiser of x_0 ~ N(0, 1) per point: E[x_0 | x_s] = x / (1 + s^2)."""
    del conditioning
    return x / (1.0 + noise_level[:, None, None, None] ** 2)


def test_eta_zero_is_deterministic_given_the_state():
    levels = student_noise_levels(StudentSamplerConfig(steps=6, eta=0.0))[:-1]
    x = 80.0 * jax.random.normal(jax.random.PRNGKey(0), SHAPE)
    denoise = lambda state, level: _toy_denoiser(state, jnp.full((SHAPE[0],), level), None)  # noqa: E731
    outputs = [run_steps(denoise, x, levels, 0.0, iid_noise, jax.random.PRNGKey(seed)) for seed in (1, 2)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    stochastic = [run_steps(denoise, x, levels, 0.5, iid_noise, jax.random.PRNGKey(seed)) for seed in (1, 2)]
    assert not np.allclose(stochastic[0], stochastic[1])


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_sampler_calls_the_denoiser_k_times_on_the_grid(steps):
    config = StudentSamplerConfig(steps=steps, rho=100.0, eta=0.5)
    sampler = SAMPLER_BUILDERS["student_kstep"](config.model_dump(), np.linspace(-80, 80, 4), np.arange(8) * 45.0)
    assert isinstance(sampler, StudentSampler) and sampler.nfe_per_step == steps
    seen: list[float] = []

    def counting_denoiser(x, noise_level, conditioning):
        jax.debug.callback(lambda level: seen.append(float(level[0])), noise_level, ordered=True)
        return _toy_denoiser(x, noise_level, conditioning)

    conditioning = Conditioning(jnp.zeros((*SHAPE[:3], 1)), jnp.zeros((*SHAPE[:3], 1)), jnp.zeros((*SHAPE[1:3], 1)))
    sample = jax.jit(lambda key: sampler(counting_denoiser, conditioning, key, SHAPE))(jax.random.PRNGKey(0))
    jax.block_until_ready(sample)
    jax.effects_barrier()
    np.testing.assert_allclose(seen, student_noise_levels(config)[:-1], rtol=1e-6)
    assert sample.shape == SHAPE and bool(jnp.all(jnp.isfinite(sample)))


@pytest.mark.parametrize("values,phrase", [({"steps": 9}, "steps"), ({"steps": 0}, "steps"),
                                           ({"eta": 1.5}, "eta"),
                                           ({"min_noise_level": 90.0}, "below max_noise_level")])
def test_config_rejects_bad_values(values, phrase):
    from gencast_rmmd.config import validate_config
    with pytest.raises(UserInputError, match=phrase):
        validate_config(values, StudentSamplerConfig, "student")
