"""EDM preconditioning, spherical noise, noise-level schedules, loss weights and the denoising loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pydantic import ValidationError
from scipy.special import eval_legendre, sph_harm_y

from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.diffusion.config import LossConfig, NoiseConfig, SamplerConfig
from gencast_rmmd.diffusion.loss import WeightedNorm, channel_loss_weights, denoising_loss
from gencast_rmmd.diffusion.noise import SphericalNoise, iid_noise, resolvable_wavenumber
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser, c_in, c_out, c_skip, loss_weight
from gencast_rmmd.diffusion.schedules import (churn_rates, rho_quantile, sample_training_noise_levels,
                                              sampling_noise_levels)

WB2_LAT = np.linspace(-87.1875, 87.1875, 32)          # 64x32 equiangular, no poles
WB2_LON = np.arange(64) * 5.625
POLES_LAT = np.linspace(-90.0, 90.0, 33)              # same spacing, with poles
EMPTY = Conditioning(inputs=jnp.zeros((1,)), forcings=jnp.zeros((1,)), static=jnp.zeros((1,)))


def _great_circle_degrees(lat1, lon1, lat2, lon2):
    lat1, lon1, lat2, lon2 = map(np.deg2rad, (lat1, lon1, lat2, lon2))
    cosine = np.sin(lat1) * np.sin(lat2) + np.cos(lat1) * np.cos(lat2) * np.cos(lon1 - lon2)
    return np.rad2deg(np.arccos(np.clip(cosine, -1.0, 1.0)))


def _flat_spectrum_correlation(angle_degrees: float, max_wavenumber: int) -> float:
    """Cov of unit-variance noise with equal power per total wavenumber: mean_l P_l(cos gamma)."""
    cosine = np.cos(np.deg2rad(angle_degrees))
    return float(np.mean([eval_legendre(l, cosine) for l in range(max_wavenumber + 1)]))


# --------------------------------------------------------------------------- preconditioning


def test_edm_coefficients_satisfy_sigma_data_one_identities():
    """c_skip + c_out^2 = 1, c_in^2 = c_skip, lambda = c_out^-2; D -> identity as sigma -> 0."""
    sigma = jnp.array([1e-4, 0.02, 0.5, 1.0, 10.0, 88.0])
    np.testing.assert_allclose(c_skip(sigma) + c_out(sigma) ** 2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(c_in(sigma) ** 2, c_skip(sigma), rtol=1e-6)
    np.testing.assert_allclose(loss_weight(sigma), c_out(sigma) ** -2.0, rtol=1e-5)
    assert float(c_skip(sigma[0])) == pytest.approx(1.0, abs=1e-7) and float(c_out(sigma[0])) < 2e-4
    assert float(c_skip(sigma[-1])) < 2e-4 and float(c_out(sigma[-1])) == pytest.approx(1.0, abs=1e-4)


def test_preconditioned_denoiser_scales_network_input_and_output():
    """F sees c_in x and sigma; D = c_skip x + c_out F; at tiny sigma D(x) ~ x whatever F returns."""
    seen = {}

    def network(scaled, noise_level, conditioning):
        seen["scaled"], seen["noise_level"] = scaled, noise_level
        return jnp.full_like(scaled, 3.0)

    denoiser = PreconditionedDenoiser(network)
    x = jnp.asarray(_gaussian_data(0, (2, 4, 8, 3), 0.0, 1.0))
    sigma = jnp.array([0.5, 20.0])
    out = denoiser(x, sigma, EMPTY)
    expected_scale = (sigma ** 2 + 1) ** -0.5
    np.testing.assert_allclose(seen["scaled"], x * expected_scale[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(seen["noise_level"], sigma)
    expected = x / (sigma ** 2 + 1)[:, None, None, None] + 3.0 * (sigma * expected_scale)[:, None, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(denoiser(x, jnp.full((2,), 1e-6), EMPTY), x, atol=1e-5)
    assert denoiser(x, 0.7, EMPTY).shape == x.shape   # a scalar noise level is broadcast to the batch


# --------------------------------------------------------------------------- spherical noise


@pytest.mark.parametrize("latitudes", [WB2_LAT, POLES_LAT], ids=["equiangular", "with_poles"])
def test_spherical_noise_has_exactly_unit_variance_at_every_point(latitudes):
    """The basis tables give Var = sum F^2 P^2 = 1 at every grid point, pole rows included."""
    noise = SphericalNoise.for_grid(latitudes, WB2_LON)
    variance = np.einsum("imk,mjl->ji", noise.fourier.astype(np.float64) ** 2,
                         noise.legendre.astype(np.float64) ** 2)
    np.testing.assert_allclose(variance, 1.0, atol=1e-5)
    assert noise.max_wavenumber == 31 == resolvable_wavenumber(len(latitudes), 64)


@pytest.mark.parametrize("latitudes", [WB2_LAT, POLES_LAT], ids=["equiangular", "with_poles"])
def test_spherical_noise_sample_variance_is_one_in_every_row(latitudes):
    noise = SphericalNoise.for_grid(latitudes, WB2_LON)
    sample = np.asarray(jax.jit(lambda key: noise(key, (64, len(latitudes), 64, 8)))(jax.random.key(1)))
    assert sample.shape == (64, len(latitudes), 64, 8) and sample.dtype == np.float32
    np.testing.assert_allclose(sample.mean(), 0.0, atol=0.05)
    per_point = (sample ** 2).mean(axis=(0, 3))          # 512 samples per grid point
    per_row = per_point.mean(axis=1)
    np.testing.assert_allclose(per_row, 1.0, atol=0.1)   # pole rows included
    assert np.abs(per_point - 1.0).max() < 0.4


@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_spherical_noise_spectrum_is_as_asked_and_truncated(exponent):
    """Projected on an independent (scipy) real SH basis, samples lie in the span of l <= L and
    carry power 4 pi w_l in total wavenumber l, w_l = (l + 1)^p / sum_k (k + 1)^p
    (p = 0: equal power per wavenumber, GenCast's)."""
    n_lat, n_lon = 16, 32
    latitudes, longitudes = np.linspace(-84.375, 84.375, n_lat), np.arange(n_lon) * 11.25
    noise = SphericalNoise.for_grid(latitudes, longitudes, spectral_exponent=exponent)
    top = noise.max_wavenumber
    colatitude, azimuth = np.meshgrid(np.deg2rad(90.0 - latitudes), np.deg2rad(longitudes), indexing="ij")
    columns, degree = [], []
    for l in range(top + 1):
        for m in range(-l, l + 1):
            harmonic = sph_harm_y(l, abs(m), colatitude, azimuth)
            real = harmonic.real if m == 0 else np.sqrt(2.0) * (harmonic.real if m > 0 else harmonic.imag)
            columns.append(real.ravel())
            degree.append(l)
    design, degree = np.stack(columns, axis=1), np.array(degree)
    samples = np.asarray(noise(jax.random.key(2), (256, n_lat, n_lon, 4)), dtype=np.float64)
    fields = samples.transpose(1, 2, 0, 3).reshape(n_lat * n_lon, -1)
    coefficients = np.linalg.solve(design.T @ design, design.T @ fields)   # least squares
    residual = fields - design @ coefficients
    assert np.abs(residual).max() < 1e-3                  # nothing above the truncation L
    power = np.array([(coefficients[degree == l] ** 2).sum(axis=0).mean() for l in range(top + 1)])
    n_samples = fields.shape[1]
    tolerance = 5.0 * np.sqrt(2.0 / ((2 * np.arange(top + 1) + 1) * n_samples))
    share = (np.arange(top + 1) + 1.0) ** exponent
    np.testing.assert_array_less(np.abs(power / (4 * np.pi * share / share.sum()) - 1.0), tolerance)


def test_spherical_noise_is_isotropic_and_unlike_iid_noise():
    """Correlation depends only on angular distance (equator vs pole pairs at 5.625 deg agree with
    each other and with mean_l P_l(cos gamma)); close points near the pole are strongly correlated,
    unlike i.i.d. per-point noise."""
    noise = SphericalNoise.for_grid(WB2_LAT, WB2_LON)
    sample = np.asarray(noise(jax.random.key(3), (512, 32, 64, 8)))   # 4096 fields
    iid = np.asarray(iid_noise(jax.random.key(3), (512, 32, 64, 8)))

    def correlation(field, a, b):  # a, b: (row, lon shift); averaged over all longitudes
        first = field[:, a[0]]
        second = np.roll(field[:, b[0]], -b[1], axis=1)
        return float((first * second).mean() / np.sqrt((first ** 2).mean() * (second ** 2).mean()))

    half_turn = 32                                         # 180 deg in longitude
    pairs = {  # name: (point a, point b, angular distance in degrees)
        "north-south at equator": ((15, 0), (16, 0), 5.625),
        "north-south near pole": ((30, 0), (31, 0), 5.625),
        "across the north pole": ((31, 0), (31, half_turn), _great_circle_degrees(WB2_LAT[31], 0, WB2_LAT[31], 180)),
        "east-west at equator": ((16, 0), (16, 1), _great_circle_degrees(WB2_LAT[16], 0, WB2_LAT[16], 5.625)),
        "east-west near pole": ((31, 0), (31, 1), _great_circle_degrees(WB2_LAT[31], 0, WB2_LAT[31], 5.625)),
    }
    measured = {name: correlation(sample, a, b) for name, (a, b, _) in pairs.items()}
    for name, (_, _, angle) in pairs.items():
        # ~4 standard errors: pairs at the pole share their samples over all longitudes.
        assert measured[name] == pytest.approx(_flat_spectrum_correlation(angle, 31), abs=0.05), name
    assert abs(measured["north-south at equator"] - measured["north-south near pole"]) < 0.05
    assert abs(measured["north-south near pole"] - measured["across the north pole"]) < 0.05
    assert measured["east-west near pole"] > 0.95
    assert abs(correlation(iid, (31, 0), (31, 1))) < 0.02


def test_spherical_noise_is_reproducible_and_checks_the_grid():
    noise = SphericalNoise.for_grid(WB2_LAT, WB2_LON)
    first = noise(jax.random.key(5), (2, 32, 64, 3))
    np.testing.assert_array_equal(first, noise(jax.random.key(5), (2, 32, 64, 3)))
    assert not np.allclose(first, noise(jax.random.key(6), (2, 32, 64, 3)))
    channel_correlation = np.corrcoef(np.asarray(first[..., 0]).ravel(), np.asarray(first[..., 1]).ravel())[0, 1]
    assert abs(channel_correlation) < 0.25              # channels are independent draws
    assert SphericalNoise.for_grid(WB2_LAT, WB2_LON) is noise   # built once per grid
    with pytest.raises(ValueError, match="32x64"):
        noise(jax.random.key(0), (1, 16, 32, 1))
    with pytest.raises(ValueError, match="max_wavenumber"):
        SphericalNoise.for_grid(WB2_LAT, WB2_LON, max_wavenumber=40)


# --------------------------------------------------------------------------- schedules and configs


def test_training_noise_levels_follow_the_rho_distribution():
    config = NoiseConfig()
    levels = np.asarray(sample_training_noise_levels(jax.random.key(0), 200_000, config))
    assert levels.min() >= 0.02 and levels.max() <= 88.0
    for quantile in (0.1, 0.5, 0.9):
        expected = (0.02 ** (1 / 7) + quantile * (88.0 ** (1 / 7) - 0.02 ** (1 / 7))) ** 7
        assert np.quantile(levels, quantile) == pytest.approx(expected, rel=0.02)
    assert rho_quantile(0.0, 0.02, 88.0, 7.0) == pytest.approx(0.02)
    assert rho_quantile(1.0, 0.02, 88.0, 7.0) == pytest.approx(88.0)


def test_sampling_noise_levels_and_churn_rates_match_gencast():
    config = SamplerConfig()
    levels = sampling_noise_levels(config)
    assert levels.shape == (21,) and levels[-1] == 0.0
    assert levels[0] == pytest.approx(80.0) and levels[19] == pytest.approx(0.03)
    assert np.all(np.diff(levels) < 0)
    np.testing.assert_allclose(levels[7], rho_quantile(1 - 7 / 19, 0.03, 80.0, 7.0))
    gammas = churn_rates(levels, config)
    assert gammas.shape == (20,)
    np.testing.assert_allclose(gammas, np.where(levels[:-1] >= 0.75, 0.125, 0.0))
    assert 0 < np.count_nonzero(gammas) < 20
    capped = churn_rates(levels, config.model_copy(update={"churn": 100.0, "churn_max_noise_level": 10.0}))
    np.testing.assert_allclose(capped, np.where((levels[:-1] >= 0.75) & (levels[:-1] <= 10.0), np.sqrt(2) - 1, 0.0))
    np.testing.assert_allclose(sampling_noise_levels(config.model_copy(update={"num_noise_levels": 1})), [80.0, 0.0])


def test_configs_are_strict_and_validated():
    with pytest.raises(ValidationError, match="extra"):
        SamplerConfig(num_levels=20)
    with pytest.raises(ValidationError, match="below"):
        NoiseConfig(min_noise_level=90.0)
    with pytest.raises(ValidationError, match="negative"):
        LossConfig(variable_weights={"2m_temperature": -1.0})
    with pytest.raises(ValidationError):
        SamplerConfig().churn = 0.0  # frozen
    assert SamplerConfig.model_validate(SamplerConfig().model_dump(mode="json")) == SamplerConfig()


# --------------------------------------------------------------------------- loss weights and loss


LAYOUT = ChannelLayout(surface=("2m_temperature", "10m_u_component_of_wind"), atmospheric=("temperature",),
                       target_only=("total_precipitation_12hr",), static=(), levels=(500, 850), input_frames=2)


def test_channel_loss_weights_combine_variable_and_pressure_weights():
    weights = channel_loss_weights(LAYOUT, {"10m_u_component_of_wind": 0.1, "total_precipitation_12hr": 0.1}, 1.0)
    labels = [channel.label for channel in LAYOUT.target_channels]
    assert labels == ["2m_temperature", "10m_u_component_of_wind", "temperature@500", "temperature@850",
                      "total_precipitation_12hr"]
    np.testing.assert_allclose(weights, [1.0, 0.1, 500 / 675 / 2, 850 / 675 / 2, 0.1], rtol=1e-6)
    assert weights[2:4].sum() == pytest.approx(1.0)      # a level variable counts like one surface variable
    np.testing.assert_allclose(channel_loss_weights(LAYOUT, {}, 0.5), [0.5, 0.5, 500 / 675 / 4, 850 / 675 / 4, 0.5],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="geopotential"):
        channel_loss_weights(LAYOUT, {"geopotential": 1.0})


def test_latitude_cell_weights_match_the_closed_form():
    weights = latitude_cell_weights(WB2_LAT)
    assert weights.sum() == pytest.approx(32.0)
    np.testing.assert_allclose(weights, np.cos(np.deg2rad(WB2_LAT)) / np.cos(np.deg2rad(WB2_LAT)).mean(), rtol=1e-10)


def test_the_weighted_norm_is_an_area_average_per_channel_weighted_by_channel():
    """mean(constant k_c) = sum_c w_c k_c whatever the mask (each channel keeps a valid point), so
    mean / total_weight is a weighted average over channels; inner(u, v) = mean(u v); a channel with no
    valid point in an example contributes 0."""
    area = latitude_cell_weights(WB2_LAT[:8]).astype(np.float32)
    channel_weights = np.array([0.5, 2.0, 1.0], np.float32)
    norm = WeightedNorm(area, channel_weights)
    constants = np.array([3.0, -1.0, 0.25], np.float32)
    values = np.broadcast_to(constants, (2, 8, 4, 3)).copy()
    valid = np.random.default_rng(0).random(values.shape) < 0.6
    valid[:, 0, 0, :] = True
    np.testing.assert_allclose(norm.mean(jnp.asarray(values), jnp.asarray(valid)), [constants @ channel_weights] * 2,
                               rtol=1e-6)
    assert float(norm.total_weight(jnp.float32)) == pytest.approx(3.5)
    u, v = _gaussian_data(1, values.shape, 0.0, 1.0), _gaussian_data(2, values.shape, 1.0, 2.0)
    np.testing.assert_allclose(norm.inner(u, v, valid), norm.mean(u * v, valid), rtol=1e-5)
    valid[1, ..., 1] = False
    without = norm.mean(jnp.asarray(values), jnp.asarray(valid))
    assert float(without[1]) == pytest.approx(float(constants @ channel_weights - constants[1] * channel_weights[1]))


def _gaussian_data(seed, shape, mean, std):
    # numpy, not jax.random: XLA on CPU compiles a multi-dimensional threefry draw slowly.
    return (np.asarray(mean) + np.asarray(std) * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _gaussian_denoiser(mean, std):
    """The exact denoiser of N(mean, std^2) data per point: D(x; s) = (std^2 x + s^2 mean) / (std^2 + s^2)."""
    def denoise(noisy, noise_level, conditioning):
        sigma2 = jnp.square(noise_level)[:, None, None, None]
        return (std ** 2 * noisy + sigma2 * mean) / (std ** 2 + sigma2)
    return denoise


def test_denoising_loss_is_minimised_by_the_exact_denoiser():
    noise = SphericalNoise.for_grid(np.linspace(-84.375, 84.375, 16), np.arange(32) * 11.25)
    mean, std = jnp.array([0.5, -1.0, 0.0]), jnp.array([1.0, 0.5, 2.0])
    targets = _gaussian_data(0, (64, 16, 32, 3), mean, std)
    weights = np.array([1.0, 0.5, 0.1], np.float32)
    lat_weights = latitude_cell_weights(np.linspace(-84.375, 84.375, 16))

    @jax.jit
    def loss(key, shrink, bias):
        exact = _gaussian_denoiser(mean, std)
        denoiser = lambda x, s, c: exact(x, s, c) * shrink + bias  # noqa: E731
        return denoising_loss(denoiser, targets, EMPTY, key, NoiseConfig(), WeightedNorm(lat_weights, weights), noise=noise)[0]

    keys = jax.random.split(jax.random.key(1), 8)
    exact = np.mean([loss(key, 1.0, 0.0) for key in keys])
    for shrink, bias in ((0.9, 0.0), (1.1, 0.0), (1.0, 0.1)):
        assert exact < np.mean([loss(key, shrink, bias) for key in keys]), (shrink, bias)


def test_denoising_loss_masks_nan_targets_and_weights_variables():
    """A zero denoiser makes the loss sum_c w_c mean_b lambda_b * area-weighted mean of x0^2 over valid points."""
    latitudes = np.linspace(-84.375, 84.375, 16)
    noise = SphericalNoise.for_grid(latitudes, np.arange(32) * 11.25)
    lat_weights = latitude_cell_weights(latitudes)
    targets = _gaussian_data(0, (4, 16, 32, 5), 1.0, 1.0)
    targets[:, :5, :, 1] = np.nan                       # e.g. SST over land
    seen = {}

    def zero_denoiser(noisy, noise_level, conditioning):
        jax.debug.callback(lambda x, sigma: seen.update(noisy=np.asarray(x), sigma=np.asarray(sigma)),
                           noisy, noise_level)
        return jnp.zeros_like(noisy)

    weights = channel_loss_weights(LAYOUT, {"10m_u_component_of_wind": 0.1, "total_precipitation_12hr": 0.1})
    names = [channel.variable for channel in LAYOUT.target_channels]

    @jax.jit
    def loss_of(targets, mask):
        return denoising_loss(zero_denoiser, targets, EMPTY, jax.random.key(3), NoiseConfig(),
                              WeightedNorm(lat_weights, weights), mask, noise=noise, channel_names=names)

    loss, parts = loss_of(jnp.asarray(targets), None)
    noisy, sigma = seen["noisy"], seen["sigma"]
    assert np.all(np.isfinite(noisy)) and sigma.shape == (4,)
    valid = np.isfinite(targets)
    area = lat_weights[None, :, None, None] * valid
    mse = (area * np.where(valid, targets, 0.0) ** 2).sum(axis=(1, 2)) / area.sum(axis=(1, 2))
    per_channel = ((sigma ** 2 + 1) / sigma ** 2)[:, None] * mse
    expected = (per_channel.mean(axis=0) * weights).sum()
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert set(parts) == {"2m_temperature", "10m_u_component_of_wind", "temperature", "total_precipitation_12hr"}
    assert sum(float(value) for value in parts.values()) == pytest.approx(float(loss), rel=1e-5)
    assert float(parts["10m_u_component_of_wind"]) == pytest.approx(0.1 * per_channel.mean(axis=0)[1], rel=1e-4)

    # An explicit mask removes points as NaN does: their values no longer matter.
    filled = np.where(valid, targets, 1e3)
    masked_loss, _ = loss_of(jnp.asarray(filled), jnp.asarray(valid))
    assert float(masked_loss) == pytest.approx(float(loss), rel=1e-6)

    # Gradients stay finite with NaN targets.
    def loss_of_scale(scale):
        denoiser = lambda x, s, c: scale * x  # noqa: E731
        return denoising_loss(denoiser, jnp.asarray(targets), EMPTY, jax.random.key(3), NoiseConfig(),
                              WeightedNorm(lat_weights, weights), noise=noise)[0]
    assert np.isfinite(float(jax.jit(jax.grad(loss_of_scale))(0.5)))
