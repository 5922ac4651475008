"""evaluation/diagnostics.py: activity, per-lead CRPS and spread/skill, spread and error power by band.

Each number is checked against a hand computation on fields built for it, and `diagnose` on a forecast
file against `evaluate`'s own global scores (one CRPS, one spread/skill ratio in the package).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from evaluation.diagnostics import activity, diagnose, lead_hours, lead_scores, spread_error_by_band
from evaluation.io import open_forecast
from evaluation.scores_file import open_scores
from evaluation.scoring import evaluate_files
from gencast_rmmd.data.forecast_io import forecast_dataset, write_forecast
from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.errors import UserInputError

LATITUDE = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
LONGITUDE = np.arange(64) * 5.625
LAMBDA = np.deg2rad(LONGITUDE)
LEADS = pd.to_timedelta([12, 24], unit="h")


def _field(values: np.ndarray, members: bool = True) -> xr.DataArray:
    """[time, lead, (member,) latitude, longitude] values as a DataArray on the test grid."""
    dims = ("time", "prediction_timedelta", *(("number",) if members else ()), "latitude", "longitude")
    return xr.DataArray(values, dims=dims, coords={"prediction_timedelta": LEADS, "latitude": LATITUDE,
                                                   "longitude": LONGITUDE})


def test_activity_is_the_area_weighted_anomaly_variance_ratio():
    """Truth anomaly 1 everywhere; both members' anomaly 2 on one row and 0 elsewhere: A = 4 w_j / Σ w."""
    truth = _field(np.ones((3, 2, 5, 64)), members=False)
    row = np.zeros((5, 64))
    row[3] = 2.0
    forecast = _field(np.broadcast_to(row, (3, 2, 2, 5, 64)).copy())
    weights = latitude_cell_weights(LATITUDE)
    expected = 4.0 * weights[3] / weights.sum()
    np.testing.assert_allclose(activity(forecast, truth, xr.zeros_like(truth.isel(time=0, prediction_timedelta=0))),
                               [expected, expected])
    # and about a climate that is not zero: shifting everything by c changes nothing
    climate = xr.full_like(truth.isel(time=0, prediction_timedelta=0), 7.0)
    np.testing.assert_allclose(activity(forecast + 7.0, truth + 7.0, climate), [expected, expected])


def test_lead_scores_are_the_fair_crps_and_the_spread_skill_ratio():
    """Members y + 2 ± 1 (M = 2): CRPS = mean|x − y| − ½ E|x − x'| = 2 − 1 = 1; SSR = √(3/2 · 2 / 4) = √0.75."""
    truth = _field(np.zeros((3, 2, 5, 64)), members=False)
    members = np.stack([np.full((3, 2, 5, 64), 3.0), np.full((3, 2, 5, 64), 1.0)], axis=2)
    scores = lead_scores(_field(members), truth)
    np.testing.assert_allclose(scores["crps"], [1.0, 1.0])
    np.testing.assert_allclose(scores["spread_skill_ratio"], [np.sqrt(0.75)] * 2)


def test_spread_and_error_power_land_in_their_bands_in_the_mid_latitudes():
    """Members X̄ ± cos 5λ, X̄ − Y = 1 + 3 cos 10λ at |φ| in 20-70; something else at the equator.

    Spread: Σ_m P_5(±cos 5λ)/(M − 1) = 2 · ½ = 1 in wn 4-7; error: P_0 = 1 (wn 0-3), P_10 = 9/2 (wn 8-11).
    """
    mean = 5.0 + np.cos(2 * LAMBDA)
    rows = np.ones((5, 1))
    rows[2] = 10.0                                   # the equator: left out of the 20-70 degree bands
    members = np.stack([mean + rows * np.cos(5 * LAMBDA), mean - rows * np.cos(5 * LAMBDA)])
    truth = mean - rows * (1.0 + 3.0 * np.cos(10 * LAMBDA))
    powers = spread_error_by_band(_field(np.broadcast_to(members, (3, 2, 2, 5, 64)).copy()),
                                  _field(np.broadcast_to(truth, (3, 2, 5, 64)).copy(), members=False))
    assert powers["spread"].dims == ("prediction_timedelta", "band")
    expected_spread, expected_error = np.zeros(6), np.zeros(6)
    expected_spread[1], expected_error[0], expected_error[2] = 1.0, 1.0, 4.5
    np.testing.assert_allclose(powers["spread"].values, [expected_spread] * 2, atol=1e-12)
    np.testing.assert_allclose(powers["error"].values, [expected_error] * 2, atol=1e-12)
    with pytest.raises(UserInputError, match="at least 2 members"):
        spread_error_by_band(_field(members[None, None, :1].repeat(2, axis=1)), _field(truth[None, None].repeat(
            2, axis=1), members=False))


def test_diagnose_a_forecast_file_agrees_with_evaluate(wb2_dataset, wb2_store, tmp_path):
    """On a forecast file, `diagnose`'s CRPS and spread/skill equal the global scores `evaluate` writes, and
    the band powers summed over all wavenumbers are the mid-latitude ensemble variance and squared error."""
    rng = np.random.default_rng(0)
    inits, leads = pd.date_range("2001-01-02", periods=4, freq="12h"), pd.to_timedelta([12, 24], unit="h")
    valid = np.stack([wb2_dataset["geopotential"].sel(time=init + leads).values for init in inits])
    scale = 0.1 * np.nanstd(valid)
    values = valid[:, :, None] + scale * rng.standard_normal((*valid.shape[:2], 3, *valid.shape[2:]))
    forecast = forecast_dataset({"geopotential": values.astype(np.float32)}, init_times=inits, leads=leads,
                                latitude=wb2_dataset["latitude"].values, longitude=wb2_dataset["longitude"].values,
                                levels=wb2_dataset["level"].values)
    write_forecast(forecast, tmp_path / "f.nc")
    evaluate_files(str(tmp_path / "f.nc"), str(wb2_store), str(tmp_path / "s.nc"), regions=("global",),
                   progress=False)
    scores = open_scores(tmp_path / "s.nc")["geopotential"].sel(region="global", level=500)
    diagnostics = diagnose(str(tmp_path / "f.nc"), str(wb2_store), targets=[("geopotential", 500)],
                           bands=[(0, 32)])["geopotential@500"]
    assert lead_hours(diagnostics) == [12, 24]
    np.testing.assert_allclose(diagnostics["crps"], scores.sel(metric="crps"), rtol=1e-5)
    np.testing.assert_allclose(diagnostics["spread_skill_ratio"], scores.sel(metric="spread_skill_ratio"),
                               rtol=1e-5)
    assert (diagnostics["activity"] > 0).all()
    members = open_forecast(str(tmp_path / "f.nc"))["geopotential"].sel(level=500).astype(np.float64).load()
    latitude = members["latitude"].values
    rows = (np.abs(latitude) >= 20) & (np.abs(latitude) <= 70)
    weights = latitude_cell_weights(latitude)[rows] / latitude_cell_weights(latitude)[rows].sum()
    variance = members.var("number", ddof=1).isel(latitude=np.flatnonzero(rows)).mean(("time", "longitude"))
    variance = variance.transpose("prediction_timedelta", "latitude")
    np.testing.assert_allclose(diagnostics["spread"].isel(band=0), variance.values @ weights, rtol=1e-5)
    with pytest.raises(UserInputError, match="no temperature"):
        diagnose(str(tmp_path / "f.nc"), str(wb2_store), targets=[("temperature", 850)])
