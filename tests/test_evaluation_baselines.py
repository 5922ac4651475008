"""Truth-only baselines: persistence values, climatology member provenance, the CLI, the forecast layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from evaluation.baselines import climatology_forecast, lead_times, persistence_forecast
from evaluation.scores_file import open_scores
from gencast_rmmd.config import SplitRange
from gencast_rmmd.data.stores import open_dataset

LATITUDE = np.array([-60.0, -20.0, 20.0, 60.0])
LONGITUDE = np.arange(8) * 45.0


@pytest.fixture(scope="module")
def clock_store(tmp_path_factory):
    """Three years, 12-hourly, 4x8 grid, WB2 layout; every value is its own time's position on the time axis.

    The value tells which stored state a baseline member was copied from.
    """
    times = pd.date_range("2001-01-01", "2003-12-31T12", freq="12h")
    position = np.arange(len(times), dtype=np.float32)
    surface = np.broadcast_to(position[:, None, None], (len(times), LONGITUDE.size, LATITUDE.size))
    upper = np.broadcast_to(position[:, None, None, None], (len(times), 2, LONGITUDE.size, LATITUDE.size))
    dataset = xr.Dataset(
        {"2m_temperature": (("time", "longitude", "latitude"), surface.copy()),
         "temperature": (("time", "level", "longitude", "latitude"), upper.copy()),
         "land_sea_mask": (("longitude", "latitude"), np.zeros((LONGITUDE.size, LATITUDE.size), np.float32))},
        coords={"time": times, "level": [500, 850], "longitude": LONGITUDE, "latitude": LATITUDE})
    path = tmp_path_factory.mktemp("baselines") / "clock.zarr"
    dataset.chunk({"time": 400}).to_zarr(path, zarr_format=2, consolidated=True)
    return path


def _source_times(forecast: xr.Dataset, store_times: pd.DatetimeIndex) -> np.ndarray:
    positions = forecast["2m_temperature"].isel(latitude=0, longitude=0).values.round().astype(int)
    return store_times.values[positions]  # (init, lead, member)


def test_persistence_repeats_the_initial_state(clock_store):
    truth = open_dataset(str(clock_store))
    inits = pd.DatetimeIndex(["2003-06-01T00", "2003-06-03T12"])
    forecast = persistence_forecast(truth, inits, lead_times(4, 12), ["2m_temperature", "temperature"]).compute()
    assert dict(forecast["temperature"].sizes) == {"time": 2, "prediction_timedelta": 4, "number": 1, "level": 2,
                                                   "latitude": 4, "longitude": 8}
    sources = _source_times(forecast, pd.DatetimeIndex(truth["time"].values))
    np.testing.assert_array_equal(sources, np.broadcast_to(inits.values[:, None, None], sources.shape))
    np.testing.assert_array_equal(forecast["valid_time"].values[1, -1], np.datetime64("2003-06-05T12"))


def test_climatology_draws_same_season_and_hour_from_other_training_years(clock_store):
    truth = open_dataset(str(clock_store))
    store_times = pd.DatetimeIndex(truth["time"].values)
    inits = pd.DatetimeIndex(["2003-03-10T00", "2003-03-11T12"])
    leads = lead_times(6, 12)
    forecast = climatology_forecast(truth, inits, leads, ["2m_temperature"], members=8, seed=3).compute()
    sources = pd.DatetimeIndex(_source_times(forecast, store_times).ravel()).values.reshape(2, 6, 8)
    assert forecast.attrs["pairs_from_whole_training_period"] == 0
    for i, init in enumerate(inits):
        for j, lead in enumerate(leads):
            valid = init + lead
            drawn = pd.DatetimeIndex(sources[i, j])
            assert (drawn < inits.min()).all()                          # training period: before the first init
            assert (drawn.hour == valid.hour).all()                       # same time of day
            assert (drawn.year != valid.year).all()                       # other years
            assert (np.abs(drawn.day_of_year - valid.day_of_year) <= 15).all()  # same time of year
            assert drawn.nunique() == 8                                   # without replacement
    # Seeded: the same call gives the same members; another seed does not.
    again = climatology_forecast(truth, inits, leads, ["2m_temperature"], members=8, seed=3).compute()
    xr.testing.assert_identical(again, forecast)
    other = climatology_forecast(truth, inits, leads, ["2m_temperature"], members=8, seed=4).compute()
    assert not other["2m_temperature"].equals(forecast["2m_temperature"])


def test_climatology_uses_the_config_training_split_and_falls_back_to_the_whole_period(clock_store):
    truth = open_dataset(str(clock_store))
    store_times = pd.DatetimeIndex(truth["time"].values)
    inits = pd.DatetimeIndex(["2003-07-01T00"])
    split = SplitRange(start="2002-01-01", end="2002-12-31")  # one year only: no "other year" at all for 2002
    forecast = climatology_forecast(truth, inits, lead_times(2, 12), ["2m_temperature"], members=5,
                                    split=split).compute()
    drawn = pd.DatetimeIndex(_source_times(forecast, store_times).ravel())
    assert ((drawn >= "2002-01-01") & (drawn <= "2002-12-31T12")).all()
    assert (np.abs(drawn.day_of_year - 182) <= 16).all()  # 2002 is another year than 2003: the window applies
    early = pd.DatetimeIndex(["2001-02-01T00"])  # training = January 2001 only: no other year
    fallback = climatology_forecast(truth, early, lead_times(2, 12), ["2m_temperature"], members=5).compute()
    assert fallback.attrs["pairs_from_whole_training_period"] == 2
    drawn = _source_times(fallback, store_times)[0]  # (lead, member)
    assert (drawn < np.datetime64("2001-02-01")).all()
    assert (pd.DatetimeIndex(drawn[0]).hour == 12).all() and (pd.DatetimeIndex(drawn[1]).hour == 0).all()


def test_baseline_cli_writes_the_forecast_layout_that_evaluate_reads(tmp_path, clock_store, run_cli):
    common = ("--truth", clock_store, "--init", "2003-03-01..2003-03-05", "--init-every-hours", "48",
              "--steps", "3", "--variables", "2m_temperature,temperature")
    result = run_cli("baseline", "climatology", *common, "--members", "4", "--out", tmp_path / "clim.nc")
    assert result.code == 0, result.err
    result = run_cli("baseline", "persistence", *common, "--out", tmp_path / "persistence.nc")
    assert result.code == 0, result.err
    with xr.open_dataset(tmp_path / "clim.nc", decode_timedelta=True) as written:
        assert written["temperature"].dims == ("time", "prediction_timedelta", "number", "level", "latitude",
                                               "longitude")
        assert written.sizes["time"] == 3 and written.sizes["number"] == 4
        assert written.attrs["Conventions"] == "CF-1.8" and written.attrs["baseline"] == "climatology"
        assert written["temperature"].attrs["units"] == "K"
    for name in ("clim", "persistence"):
        result = run_cli("evaluate", "--forecast", tmp_path / f"{name}.nc", "--truth", clock_store,
                         "--out", tmp_path / f"{name}_scores.nc", "--no-progress")
        assert result.code == 0, result.err
    # Persistence error grows with lead exactly as the clock does: |X - Y| = lead in steps of 12 h.
    scores = open_scores(tmp_path / "persistence_scores.nc")
    np.testing.assert_allclose(scores["2m_temperature"].sel(metric="rmse", region="global").values, [1, 2, 3])
    bad = run_cli("baseline", "persistence", "--truth", clock_store, "--init", "1999-01-01", "--steps", "2",
                  "--out", tmp_path / "bad.nc")
    assert bad.code == 2 and "no state at init time" in bad.err
