"""`gencast-rmmd evaluate` end to end: numpy cross-check, layout invariance, NaN masking, M = 1, dask, bad input."""

from __future__ import annotations

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from evaluation.io import align_truth, chunk_for_scoring, open_forecast
from evaluation import metrics
from evaluation.scorecard import ScoreSet, metric_frame
from evaluation.scores_file import open_scores
from evaluation.scoring import combine_scores, compute_scores, score_dataset
from gencast_rmmd.data.forecast_io import forecast_dataset, write_forecast
from gencast_rmmd.data.stores import open_dataset
from wb2_stores import write_store

INITS = pd.date_range("2001-01-02", periods=3, freq="24h")
LEADS = pd.to_timedelta([12, 24, 48], unit="h")
VARIABLES = ("2m_temperature", "temperature", "sea_surface_temperature")


def _forecast(truth: xr.Dataset, members: int = 6, seed: int = 0) -> xr.Dataset:
    """Members = truth at valid time + a shared error + member noise (float32), WB2 forecast layout."""
    rng = np.random.default_rng(seed)
    fields = {}
    for name in VARIABLES:
        valid = np.stack([truth[name].sel(time=init + LEADS).values for init in INITS])  # (init, lead, ...)
        scale = 0.3 * np.nanstd(truth[name].values)
        centre = np.nan_to_num(valid) + scale * rng.standard_normal(valid.shape)
        noise = scale * rng.standard_normal((valid.shape[0], valid.shape[1], members, *valid.shape[2:]))
        fields[name] = (centre[:, :, None] + noise).astype(np.float32)
    return forecast_dataset(fields, init_times=INITS, leads=LEADS, latitude=truth["latitude"].values,
                            longitude=truth["longitude"].values, levels=truth["level"].values)


def _numpy_scores(forecast: np.ndarray, truth: np.ndarray, latitude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global fair CRPS and SSR per lead by brute force: forecast (init, lead, M, lat, lon), truth without M."""
    forecast, truth = forecast.astype(np.float64), truth.astype(np.float64)
    members = forecast.shape[2]
    bounds = np.deg2rad(np.concatenate([[-90.0], (latitude[1:] + latitude[:-1]) / 2, [90.0]]))
    weights = (np.sin(bounds[1:]) - np.sin(bounds[:-1]))[:, None] * np.isfinite(truth)
    skill = np.abs(forecast - truth[:, :, None]).mean(2)
    pairs = np.abs(forecast[:, :, :, None] - forecast[:, :, None, :]).sum((2, 3)) / (members * (members - 1))
    crps = skill - 0.5 * pairs

    def area_then_init_mean(field):
        return (np.nansum(field * weights, (-2, -1)) / weights.sum((-2, -1))).mean(0)

    mse = area_then_init_mean((forecast.mean(2) - truth) ** 2)
    variance = area_then_init_mean(forecast.var(2, ddof=1))
    return area_then_init_mean(crps), np.sqrt((members + 1) / members) * np.sqrt(variance / mse)


def test_evaluate_cli_matches_direct_numpy_within_0p2_percent(tmp_path, wb2_dataset, wb2_store, run_cli):
    forecast = _forecast(wb2_dataset)
    write_forecast(forecast, tmp_path / "forecast.nc")
    result = run_cli("evaluate", "--forecast", tmp_path / "forecast.nc", "--truth", wb2_store,
                     "--out", tmp_path / "scores.nc", "--no-progress")
    assert result.code == 0, result.err
    scores = open_scores(tmp_path / "scores.nc")
    assert scores["temperature"].dims == ("metric", "region", "lead_time", "level")
    assert scores["2m_temperature"].dims == ("metric", "region", "lead_time")
    assert np.issubdtype(scores["lead_time"].dtype, np.timedelta64)
    assert scores.attrs["member_count"] == 6 and scores.attrs["init_count"] == 3
    assert "sqrt((M+1)/M)" in scores.attrs["spread_skill_ratio_factor"]
    assert scores.attrs["truth_location"].endswith("era5_64x32.zarr")
    latitude = wb2_dataset["latitude"].values
    for name, selection in (("2m_temperature", {}), ("temperature", {"level": 850}),
                            ("sea_surface_temperature", {})):
        truth = np.stack([wb2_dataset[name].sel(time=init + LEADS, **selection).values for init in INITS])
        members = forecast[name].sel(**selection).values
        crps, ssr = _numpy_scores(members, truth, latitude)
        ours = scores[name].sel(region="global", **selection)
        np.testing.assert_allclose(ours.sel(metric="crps").values, crps, rtol=2e-3)
        np.testing.assert_allclose(ours.sel(metric="spread_skill_ratio").values, ssr, rtol=2e-3)
        # In fact far tighter than the 0.2 % the acceptance asks:
        np.testing.assert_allclose(ours.sel(metric="crps").values, crps, rtol=1e-9)
    histogram = scores["temperature_rank_histogram"]
    assert histogram.dims == ("region", "lead_time", "level", "rank") and histogram.sizes["rank"] == 7
    np.testing.assert_allclose(histogram.sum("rank").values, 1.0)


def _score_files(forecast_path, truth_url, member_dim=None) -> xr.Dataset:
    forecast = open_forecast(str(forecast_path), member_dim)
    truth, _ = align_truth(forecast, open_dataset(str(truth_url)))
    return score_dataset(forecast[list(truth.data_vars)], truth).compute()


@pytest.mark.parametrize("layout", ["0p25", "latlon"])
def test_scores_do_not_depend_on_latitude_order_or_member_dim_name(tmp_path, wb2_dataset, wb2_store, layout):
    forecast = _forecast(wb2_dataset)
    write_forecast(forecast, tmp_path / "reference.nc")
    reference = _score_files(tmp_path / "reference.nc", wb2_store)
    # Same forecast: latitude descending, member dim `realization`, dims in another order.
    variant = (forecast.isel(latitude=slice(None, None, -1)).rename(number="realization")
               .transpose("realization", "time", "prediction_timedelta", ..., "longitude", "latitude"))
    variant.to_netcdf(tmp_path / "variant.nc")
    truth_store = write_store(wb2_dataset, tmp_path / f"truth_{layout}.zarr", layout)
    scores = _score_files(tmp_path / "variant.nc", truth_store)
    assert scores.attrs["member_count"] == reference.attrs["member_count"]
    for name in VARIABLES:
        xr.testing.assert_allclose(scores[name], reference[name], rtol=1e-9)
    # The member dim can also be named explicitly.
    named = _score_files(tmp_path / "variant.nc", wb2_store, member_dim="realization")
    xr.testing.assert_allclose(named["temperature"], reference["temperature"], rtol=1e-9)


def test_nan_in_truth_masks_points_and_forecast_values_there_do_not_matter(tmp_path, wb2_dataset, wb2_store):
    forecast = _forecast(wb2_dataset)
    land = wb2_dataset["sea_surface_temperature"].isel(time=0).isnull().values
    assert 0 < land.mean() < 1
    write_forecast(forecast, tmp_path / "forecast.nc")
    reference = _score_files(tmp_path / "forecast.nc", wb2_store)
    garbage = forecast.copy(deep=True)
    garbage["sea_surface_temperature"].values[..., land] = 1e6
    write_forecast(garbage, tmp_path / "garbage.nc")
    scores = _score_files(tmp_path / "garbage.nc", wb2_store)
    xr.testing.assert_allclose(scores["sea_surface_temperature"], reference["sea_surface_temperature"])
    # The land mask removes whole regions' worth of cells: tropics (|lat| <= 20) score over ocean only.
    assert np.isfinite(scores["sea_surface_temperature"].sel(metric="crps")).all()
    # A NaN forecast where the truth is valid is not skipped: it shows as NaN.
    broken = forecast.copy(deep=True)
    broken["sea_surface_temperature"].values[0, 0, 0, ~land] = np.nan
    write_forecast(broken, tmp_path / "broken.nc")
    crps = _score_files(tmp_path / "broken.nc", wb2_store)["sea_surface_temperature"].sel(metric="crps",
                                                                                            region="global")
    assert np.isnan(crps.values[0]) and np.isfinite(crps.values[1:]).all()


def test_deterministic_forecast_gets_rmse_bias_and_mae(tmp_path, wb2_dataset, wb2_store):
    forecast = _forecast(wb2_dataset, members=1).squeeze("number", drop=True)  # no member dim at all
    forecast.to_netcdf(tmp_path / "deterministic.nc")
    scores = _score_files(tmp_path / "deterministic.nc", wb2_store)
    assert scores.attrs["member_count"] == 1
    truth = np.stack([wb2_dataset["2m_temperature"].sel(time=init + LEADS).values for init in INITS])
    error = forecast["2m_temperature"].values.astype(np.float64) - truth
    latitude = np.deg2rad(wb2_dataset["latitude"].values)
    weights = np.cos(latitude)[:, None] / np.cos(latitude).mean()
    rmse = np.sqrt((error**2 * weights).mean((-2, -1)).mean(0))
    got = scores["2m_temperature"].sel(region="global")
    np.testing.assert_allclose(got.sel(metric="rmse").values, rmse, rtol=1e-9)
    np.testing.assert_allclose(got.sel(metric="bias").values, (error * weights).mean((-2, -1)).mean(0), rtol=1e-9)
    np.testing.assert_allclose(got.sel(metric="crps").values,
                               (np.abs(error) * weights).mean((-2, -1)).mean(0), rtol=1e-9)
    assert np.isnan(got.sel(metric="spread_skill_ratio")).all()


def test_chunked_and_distributed_scoring_equal_in_memory(tmp_path, wb2_dataset, wb2_store):
    distributed = pytest.importorskip("distributed")
    forecast = _forecast(wb2_dataset)
    write_forecast(forecast, tmp_path / "forecast.nc")
    opened = open_forecast(str(tmp_path / "forecast.nc"))
    truth, _ = align_truth(opened, open_dataset(str(wb2_store)))
    in_memory = score_dataset(opened[list(truth.data_vars)].load(), truth.load())
    small_chunks = chunk_for_scoring(opened[list(truth.data_vars)], truth, target_bytes=1)  # one lead per chunk
    assert small_chunks[0]["temperature"].data.numblocks[:2] == (3, 3)
    lazy = score_dataset(*small_chunks)
    threaded = compute_scores(lazy, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        on_cluster = compute_scores(lazy, cluster.scheduler_address, progress=False)
    xr.testing.assert_identical(on_cluster, threaded)  # same seeded tie-breaks for the same chunks
    for name in VARIABLES:
        xr.testing.assert_allclose(on_cluster[name], in_memory[name], rtol=1e-9)
        # float32 forecasts can tie the truth exactly; tie-breaking draws depend on the chunking.
        xr.testing.assert_allclose(on_cluster[f"{name}_rank_histogram"], in_memory[f"{name}_rank_histogram"],
                                   atol=0.01)


def test_bad_input_exits_2_with_one_line(tmp_path, wb2_dataset, wb2_store, run_cli):
    forecast = _forecast(wb2_dataset)
    write_forecast(forecast, tmp_path / "forecast.nc")
    cases = {
        "no forecast at": ("--forecast", tmp_path / "missing.nc", "--truth", wb2_store),
        "is not a dim": ("--forecast", tmp_path / "forecast.nc", "--truth", wb2_store, "--member-dim", "sample"),
        "no store at": ("--forecast", tmp_path / "forecast.nc", "--truth", tmp_path / "nothing.zarr"),
    }
    late = forecast.assign_coords(time=forecast["time"] + pd.Timedelta(days=8))
    write_forecast(late, tmp_path / "late.nc")
    cases["truth has no state"] = ("--forecast", tmp_path / "late.nc", "--truth", wb2_store)
    two = forecast.expand_dims(sample=[0])
    two.to_netcdf(tmp_path / "two_member_dims.nc")
    cases["several possible member dims"] = ("--forecast", tmp_path / "two_member_dims.nc", "--truth", wb2_store)
    coarse = forecast.isel(latitude=slice(0, None, 2))
    write_forecast(coarse, tmp_path / "coarse.nc")
    cases["differs from the truth grid"] = ("--forecast", tmp_path / "coarse.nc", "--truth", wb2_store)
    for message, arguments in cases.items():
        result = run_cli("evaluate", *arguments, "--out", tmp_path / "scores.nc")
        assert result.code == 2, (message, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "scores.nc").exists()


def test_evaluation_never_imports_model_code():
    """docs/DESIGN.md §2: evaluation/ scores any forecast file; it must not import the model side of the package."""
    import ast
    from pathlib import Path

    forbidden = ("gencast_rmmd.models", "gencast_rmmd.diffusion", "gencast_rmmd.distill", "gencast_rmmd.training")
    package = Path(__file__).resolve().parent.parent / "evaluation"
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # `from gencast_rmmd import models` included
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            assert not [name for name in names if name.startswith(forbidden)], (module.name, names)



def test_scores_files_re_average_over_other_inits(tmp_path, wb2_dataset, wb2_store, run_cli):
    """The sums and counts a scores file keeps give, combined over two files of disjoint inits, the scores of
    all the inits scored at once (every metric and the rank histogram, per region, lead and level)."""
    forecast = _forecast(wb2_dataset)
    parts = {"whole": forecast, "first": forecast.isel(time=[0]), "rest": forecast.isel(time=[1, 2])}
    for name, part in parts.items():
        write_forecast(part, tmp_path / f"{name}.nc")
        result = run_cli("evaluate", "--forecast", tmp_path / f"{name}.nc", "--truth", wb2_store,
                         "--out", tmp_path / f"{name}_scores.nc", "--no-progress")
        assert result.code == 0, result.err
    whole, first, rest = (open_scores(tmp_path / f"{name}_scores.nc") for name in parts)
    combined = combine_scores([first, rest])
    assert combined.attrs["init_count"] == 3
    for name in VARIABLES:
        xr.testing.assert_allclose(combined[name], whole[name], rtol=1e-12)
        # The random tie-breaks are drawn by position in the scored array, so the few exact ties (float32
        # members equal to the truth) may fall in other bins when the inits are scored apart.
        xr.testing.assert_allclose(combined[f"{name}_rank_histogram"], whole[f"{name}_rank_histogram"], atol=0.01)
        assert (combined[f"{name}_init_count"] == whole[f"{name}_init_count"]).all()
    # Averaging the two files' metrics instead (what a file of RMSEs alone allows) is not the same.
    naive = (first["temperature"] + 2 * rest["temperature"]) / 3
    rmse = {"metric": "ensemble_mean_rmse"}
    assert not np.allclose(naive.sel(rmse), whole["temperature"].sel(rmse), rtol=1e-9)


def test_scores_file_has_one_variable_per_metric_with_its_units(tmp_path, wb2_dataset, wb2_store, run_cli):
    write_forecast(_forecast(wb2_dataset), tmp_path / "forecast.nc")
    result = run_cli("evaluate", "--forecast", tmp_path / "forecast.nc", "--truth", wb2_store, "--regions",
                     "global,extra_tropics", "--out", tmp_path / "scores.nc", "--no-progress")
    assert result.code == 0, result.err
    with netCDF4.Dataset(tmp_path / "scores.nc") as stored:
        assert stored.Conventions == "CF-1.8"
        assert stored["region_name"].dtype == "S1" and stored["region_name"].dimensions[0] == "region"
        assert len(stored["region_name"].dimensions) == 2                      # (region, string length)
        assert stored["region_name"][:].tolist() == ["global", "extra-tropics"]  # netCDF4 joins the chars
        units = {name: stored[name].units for name in stored.variables if name.startswith("2m_temperature")}
        assert stored["2m_temperature_crps"].coordinates == "region_name"
        assert stored["lead_time"].standard_name == "forecast_period" and stored["lead_time"].dtype == np.int32
    assert units["2m_temperature_crps"] == units["2m_temperature_ensemble_mean_rmse"] == "K"
    assert units["2m_temperature_spread_skill_ratio"] == "1"
    assert units["2m_temperature_ensemble_mean_squared_error_sum"] == "K2"
    assert units["2m_temperature_ensemble_variance_sum"] == "K2"
    assert units["2m_temperature_init_count"] == "1"
    with xr.open_dataset(tmp_path / "scores.nc") as plain:    # what xarray reads back as written
        assert plain["region_name"].values.tolist() == ["global", "extra-tropics"]
        assert "metric" not in plain.dims
    scores = open_scores(tmp_path / "scores.nc")
    assert scores["region"].values.tolist() == ["global", "extra-tropics"]
    assert scores["2m_temperature"].attrs["units"] == "K"
    assert list(scores["temperature"]["metric"].values) == list(metrics.METRICS)


def test_scores_files_of_the_layout_before_read_the_same(tmp_path, wb2_dataset, wb2_store):
    """A file written before (a `metric` dim, underscore region names) reads as the current layout does."""
    forecast = _forecast(wb2_dataset)
    write_forecast(forecast, tmp_path / "forecast.nc")
    current = _score_files(tmp_path / "forecast.nc", wb2_store)
    old = current[[name for name in current.data_vars if "metric" in current[name].dims
                   or name.endswith("_rank_histogram")]]
    old = old.assign_coords(region=[name.replace("-", "_") for name in old["region"].values])
    old.to_netcdf(tmp_path / "old_scores.nc")
    reread = open_scores(tmp_path / "old_scores.nc")
    assert reread["region"].values.tolist() == current["region"].values.tolist()
    for name in old.data_vars:
        xr.testing.assert_allclose(reread[name], current[name])
    for region in ("extra_tropics", "extra-tropics"):     # the old names still select
        frame = metric_frame(ScoreSet("old", tmp_path / "old_scores.nc", reread), "crps", region)
        assert np.isfinite(frame.values).all()
