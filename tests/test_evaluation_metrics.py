"""Metric formulas against references: brute force, xskillscore, closed forms, calibrated ensembles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import xskillscore
from crps_oracle import brute_force_fair_crps
from scipy import stats

from evaluation import metrics
from evaluation.regions import REGIONS, canonical_region, latitude_cell_weights, region_weights
from gencast_rmmd.errors import UserInputError
from evaluation.scoring import score_variable


def _pointwise(members: int, points: int = 300, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    forecast = rng.normal(size=(points, members))
    truth = rng.normal(size=points)
    if ties:  # coarse values: many exact ties between members and with the truth
        forecast, truth = np.round(forecast), np.round(truth)
    return (xr.DataArray(forecast, dims=("point", "number")), xr.DataArray(truth, dims="point"))


@pytest.mark.parametrize("members,ties", [(2, False), (7, False), (50, False), (10, True)])
def test_fair_crps_equals_brute_force_double_sum(members, ties):
    forecast, truth = _pointwise(members, ties=ties)
    expected = brute_force_fair_crps(forecast.values, truth.values)
    np.testing.assert_allclose(metrics.fair_crps(forecast, truth).values, expected, rtol=1e-12, atol=1e-12)
    skill = metrics.fair_crps_skill(forecast, truth)
    spread = metrics.fair_crps_spread(forecast)
    np.testing.assert_allclose((skill - 0.5 * spread).values, expected, rtol=1e-12, atol=1e-12)


def test_fair_crps_keeps_float64_accuracy_on_float32_geopotential():
    """float32 inputs near 5e4 (geopotential): equal to the float64 double sum on the same values."""
    forecast, truth = _pointwise(20)
    forecast32, truth32 = (5e4 + 30 * forecast).astype(np.float32), (5e4 + 30 * truth).astype(np.float32)
    expected = brute_force_fair_crps(forecast32.values, truth32.values)
    np.testing.assert_allclose(metrics.fair_crps(forecast32, truth32).values, expected, rtol=1e-9)


@pytest.mark.parametrize("members", [2, 5, 30])
def test_biased_crps_equals_xskillscore(members):
    forecast, truth = _pointwise(members, seed=members)
    theirs = xskillscore.crps_ensemble(truth, forecast, member_dim="number", dim=[])
    np.testing.assert_allclose(metrics.biased_crps(forecast, truth).values, theirs.values, rtol=1e-12)
    # ... and the fair CRPS is not: it is lower by exactly E|X - X'| / (2M).
    relation = theirs - metrics.fair_crps_spread(forecast) / (2 * members)
    np.testing.assert_allclose(metrics.fair_crps(forecast, truth).values, relation.values, rtol=1e-10, atol=1e-12)


def _gaussian_crps(sigma: float) -> float:
    """E CRPS(N(mu, sigma^2), Y) for Y ~ N(mu, sigma^2): E|X - Y| - E|X - X'|/2 = 2s/sqrt(pi) - s/sqrt(pi)."""
    return sigma / np.sqrt(np.pi)


def test_fair_is_unbiased_biased_converges_as_members_grow():
    """Fair CRPS matches the closed form at every M; the biased one is high by sigma/(sqrt(pi) M) → 0."""
    rng = np.random.default_rng(3)
    target = _gaussian_crps(1.0)
    gaps = []
    for members in (2, 4, 16, 64):
        forecast = xr.DataArray(rng.normal(size=(40_000, members)), dims=("point", "number"))
        truth = xr.DataArray(rng.normal(size=40_000), dims="point")
        fair = float(metrics.fair_crps(forecast, truth).mean())
        biased = float(metrics.biased_crps(forecast, truth).mean())
        assert fair == pytest.approx(target, abs=0.01)
        assert biased - fair == pytest.approx(1.0 / (np.sqrt(np.pi) * members), rel=0.05)
        gaps.append(biased - fair)
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[-1] < 0.01


def test_debiased_ensemble_mean_mse_removes_the_finite_ensemble_penalty():
    """Calibrated ensemble, sigma = 1: raw ensemble-mean MSE = 1 + 1/M, debiased = 1 (truth noise only)."""
    rng = np.random.default_rng(4)
    members = 4
    centre = rng.normal(size=200_000)
    forecast = xr.DataArray(centre[:, None] + rng.normal(size=(200_000, members)), dims=("point", "number"))
    truth = xr.DataArray(centre + rng.normal(size=200_000), dims="point")
    raw = float(metrics.ensemble_mean_squared_error(forecast, truth).mean())
    debiased = float(metrics.debiased_ensemble_mean_squared_error(forecast, truth).mean())
    assert raw == pytest.approx(1.0 + 1.0 / members, rel=0.01)
    assert debiased == pytest.approx(1.0, rel=0.01)
    assert float(metrics.ensemble_variance(forecast).mean()) == pytest.approx(1.0, rel=0.01)


def _gridded(inits=6, leads=2, members=10, spread_scale=1.0, seed=0):
    """A synthetic ensemble on an 8x16 grid: truth and members ~ N(mu, 1), members' spread scaled."""
    rng = np.random.default_rng(seed)
    latitude = np.linspace(-78.75, 78.75, 8)
    shape = (inits, leads, 8, 16)
    centre = 10.0 * rng.normal(size=shape)
    truth = centre + rng.normal(size=shape)
    forecast = centre[:, :, None] + spread_scale * rng.normal(size=(inits, leads, members, 8, 16))
    coords = {"time": pd.date_range("2000-01-01", periods=inits, freq="D"),
              "prediction_timedelta": pd.to_timedelta([12, 24][:leads], unit="h"),
              "latitude": latitude, "longitude": np.arange(16) * 22.5}
    dims = ("time", "prediction_timedelta", "latitude", "longitude")
    return (xr.DataArray(forecast, dims=(*dims[:2], "number", *dims[2:]), coords=coords),
            xr.DataArray(truth, dims=dims, coords=coords))


def test_calibrated_ensemble_has_unit_spread_skill_and_flat_rank_histogram():
    members = 10
    forecast, truth = _gridded(inits=120, members=members)
    scores, histogram = score_variable(forecast, truth, ("global",))
    ssr = scores.sel(metric="spread_skill_ratio", region="global")
    np.testing.assert_allclose(ssr.values, 1.0, atol=0.03)
    # Flat within sampling error: area-weighted frequencies, effective sample size from the weights.
    weights = np.broadcast_to(latitude_cell_weights(truth["latitude"].values)[:, None], (8, 16))
    effective = weights.sum() ** 2 / (weights**2).sum() * truth.sizes["time"]
    expected = 1.0 / (members + 1)
    tolerance = 4.0 * np.sqrt(expected * (1 - expected) / effective)
    frequencies = histogram.sel(region="global").values
    np.testing.assert_allclose(frequencies.sum(-1), 1.0)
    assert np.abs(frequencies - expected).max() < tolerance
    chi_square = ((frequencies - expected) ** 2 / expected).sum(-1) * effective
    assert (stats.chi2.sf(chi_square, members) > 1e-3).all()


def test_under_dispersive_ensemble_is_detected():
    """Members with half the true spread: SSR ≈ 0.5/√(1 + 0.25/M)... well below 1, U-shaped histogram."""
    forecast, truth = _gridded(inits=60, spread_scale=0.5, seed=1)
    scores, histogram = score_variable(forecast, truth, ("global",))
    assert float(scores.sel(metric="spread_skill_ratio", region="global").max()) < 0.6
    frequencies = histogram.sel(region="global").values
    assert (frequencies[:, [0, -1]] > 2.0 / 11).all()


def test_rank_ties_are_broken_uniformly_and_reproducibly():
    """A truth equal to all M members takes each rank 0..M with probability 1/(M+1), seeded."""
    members = 4
    forecast = xr.DataArray(np.zeros((50_000, members)), dims=("point", "number"))
    truth = xr.DataArray(np.zeros(50_000), dims="point")
    ranks = metrics.truth_rank(forecast, truth, seed=7)
    counts = np.bincount(ranks.values, minlength=members + 1) / ranks.size
    np.testing.assert_allclose(counts, 1.0 / (members + 1), atol=0.01)
    np.testing.assert_array_equal(ranks.values, metrics.truth_rank(forecast, truth, seed=7).values)
    assert not np.array_equal(ranks.values, metrics.truth_rank(forecast, truth, seed=8).values)


def test_rank_without_ties_counts_members_below():
    forecast = xr.DataArray(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), dims=("point", "number"))
    truth = xr.DataArray(np.array([0.5, 2.5, np.nan]), dims="point")
    np.testing.assert_array_equal(metrics.truth_rank(forecast, truth).values, [0, 2, -1])


@pytest.mark.parametrize("latitude", [np.linspace(-87.1875, 87.1875, 32),   # WB2 64x32, no poles
                                      np.linspace(-90.0, 90.0, 121)])        # WB2 1.5 deg, with poles
def test_latitude_weights_match_the_closed_form(latitude):
    spacing = latitude[1] - latitude[0]
    upper = np.deg2rad(np.minimum(latitude + spacing / 2, 90.0))
    lower = np.deg2rad(np.maximum(latitude - spacing / 2, -90.0))
    area = np.sin(upper) - np.sin(lower)          # cell area / (2 pi R^2 / n_lon)
    assert area.sum() == pytest.approx(2.0)        # the whole sphere
    np.testing.assert_allclose(latitude_cell_weights(latitude), area / area.mean(), rtol=1e-12)
    np.testing.assert_allclose(latitude_cell_weights(latitude[::-1]), (area / area.mean())[::-1], rtol=1e-12)
    if latitude[0] > -90:  # without poles: proportional to cos(latitude)
        cosine = np.cos(np.deg2rad(latitude))
        np.testing.assert_allclose(latitude_cell_weights(latitude), cosine / cosine.mean(), rtol=1e-12)


def test_regions_select_weatherbench2s_latitude_bands():
    """WB2's names and inclusive bounds: the rows at exactly +-20 and +-60 degrees belong to both sides."""
    latitude = xr.DataArray(np.array([-80.0, -60.0, -20.0, 0.0, 20.0, 20.5, 60.0, 61.0]), dims="latitude")
    weights = region_weights(latitude, tuple(REGIONS))
    selected = {region: latitude.values[weights.sel(region=region).values > 0].tolist() for region in REGIONS}
    assert list(REGIONS) == ["global", "tropics", "extra-tropics", "northern-hemisphere", "southern-hemisphere",
                             "arctic", "antarctic"]
    assert selected["global"] == latitude.values.tolist()
    assert selected["tropics"] == [-20.0, 0.0, 20.0]
    assert selected["extra-tropics"] == [-80.0, -60.0, -20.0, 20.0, 20.5, 60.0, 61.0]
    assert selected["northern-hemisphere"] == [20.0, 20.5, 60.0, 61.0]
    assert selected["southern-hemisphere"] == [-80.0, -60.0, -20.0]
    assert selected["arctic"] == [60.0, 61.0]
    assert selected["antarctic"] == [-80.0, -60.0]


def test_old_region_names_mean_the_same_regions():
    latitude = xr.DataArray(np.linspace(-87.1875, 87.1875, 32), dims="latitude")
    old = region_weights(latitude, ("extra_tropics", "northern_hemisphere", "southern_hemisphere"))
    new = region_weights(latitude, ("extra-tropics", "northern-hemisphere", "southern-hemisphere"))
    assert old["region"].values.tolist() == new["region"].values.tolist()
    np.testing.assert_array_equal(old.values, new.values)
    assert canonical_region("extra_tropics") == "extra-tropics" and canonical_region("global") == "global"
    with pytest.raises(UserInputError, match="unknown region 'mid_latitudes'"):
        canonical_region("mid_latitudes")


def test_spread_skill_ratio_states_the_finite_ensemble_factor():
    variance = xr.DataArray([4.0])
    mse = xr.DataArray([4.0 * 1.25])  # calibrated M = 4: MSE = (1 + 1/M) var
    assert float(metrics.spread_skill_ratio(variance, mse, 4)[0]) == pytest.approx(1.0)
    assert np.isnan(float(metrics.spread_skill_ratio(variance, mse, 1)[0]))
