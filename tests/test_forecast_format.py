"""One forecast format from every writer, zarr as WeatherBench2 reads it, and CF-1.8 clean files.

The model's step-by-step writer (`forecast.writer.ForecastWriter`, what
`gencast-rmmd forecast` uses), the baseline commands and whole-dataset writes
(`forecast_io.write_forecast`, also the simulator's reference ensemble) must
agree on dims, coordinate types and encodings, and attributes; `--out F.zarr`
must give a store that `xr.open_zarr` reads with the same values as the
NetCDF; and both CF checkers must report no error on a forecast, a baseline,
a zarr forecast and a scores file.
"""

from __future__ import annotations

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cf_checkers import assert_cf_clean
from evaluation.scores_file import open_scores
from gencast_rmmd.data.forecast_io import ForecastFileWriter, forecast_dataset, write_forecast
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.forecast.writer import ForecastWriter

INITS = pd.DatetimeIndex(["2001-01-04T00", "2001-01-05T00"])
LEADS = pd.to_timedelta([12, 24], unit="h")
MEMBERS = 3
LAYOUT = ChannelLayout(surface=("2m_temperature", "10m_u_component_of_wind"), atmospheric=("temperature",),
                       target_only=("total_precipitation_12hr",), static=(), levels=(500, 850), input_frames=2)


def _model_fields(truth: xr.Dataset, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per lead, the fields a rollout hands its writer: `[init, member, [level,] lat, lon]`, float32."""
    rng = np.random.default_rng(seed)
    shape = (len(INITS), MEMBERS, truth.sizes["latitude"], truth.sizes["longitude"])
    steps = []
    for _ in LEADS:
        fields = {name: (280 + rng.standard_normal(shape)).astype(np.float32) for name in LAYOUT.surface}
        fields["total_precipitation_12hr"] = np.abs(rng.standard_normal(shape)).astype(np.float32) * 1e-3
        fields["temperature"] = (250 + rng.standard_normal((len(INITS), MEMBERS, 2, *shape[2:]))).astype(np.float32)
        steps.append(fields)
    return steps


def _write_model_forecast(path, truth: xr.Dataset, steps: list[dict[str, np.ndarray]]) -> None:
    with ForecastWriter(path, init_times=INITS, leads=LEADS, members=MEMBERS, layout=LAYOUT,
                        latitude=truth["latitude"].values, longitude=truth["longitude"].values,
                        attrs={"model_kind": "teacher", "parameters": "ema", "resumed": True}) as writer:
        for lead, fields in enumerate(steps):
            writer.write_step(lead, fields)


@pytest.fixture(scope="module")
def written(tmp_path_factory, wb2_dataset, wb2_store, run_cli_module):
    """Forecasts of the same inits by every writer, NetCDF and zarr; scores of the NetCDF model forecast."""
    folder = tmp_path_factory.mktemp("formats")
    steps = _model_fields(wb2_dataset)
    for suffix in ("nc", "zarr"):
        _write_model_forecast(folder / f"model.{suffix}", wb2_dataset, steps)
        for baseline, extra in (("persistence", ()), ("climatology", ("--members", "4"))):
            result = run_cli_module("baseline", baseline, "--truth", wb2_store, *(("--init", str(t)) for t in INITS),
                                    "--steps", "2", "--variables", "2m_temperature,temperature", *extra,
                                    "--out", folder / f"{baseline}.{suffix}")
            assert result.code == 0, result.err
    result = run_cli_module("evaluate", "--forecast", folder / "model.nc", "--truth", wb2_store,
                            "--out", folder / "scores.nc", "--no-progress")
    assert result.code == 0, result.err
    return folder


@pytest.fixture(scope="module")
def run_cli_module():
    """`gencast-rmmd ARGS...` in-process for module fixtures (no capsys there): exit code and stderr."""
    import contextlib
    import io
    import types

    from gencast_rmmd.cli import main

    def run(*args) -> types.SimpleNamespace:
        flat = [str(a) for arg in args for a in (arg if isinstance(arg, tuple) else (arg,))]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(flat)
        return types.SimpleNamespace(code=code, out=out.getvalue(), err=err.getvalue())

    return run


def _raw_variables(path) -> dict[str, dict]:
    """Each NetCDF variable's dtype and attributes as stored (no decoding)."""
    with netCDF4.Dataset(path) as nc:
        return {name: {"dtype": str(variable.dtype), **{key: str(variable.getncattr(key))
                                                        for key in variable.ncattrs()}}
                for name, variable in nc.variables.items()}


def test_model_and_baseline_writers_agree_on_the_layout(written):
    """Coordinates: same dtypes, encodings and attributes from both writers; CF names; no coordinate fill value."""
    model, baseline = _raw_variables(written / "model.nc"), _raw_variables(written / "climatology.nc")
    for name in ("time", "prediction_timedelta", "valid_time", "number", "level", "latitude", "longitude",
                 "height_2m"):
        assert model[name] == baseline[name], name
        assert "_FillValue" not in model[name], name
    assert model["time"] == {"dtype": "int32", "units": "hours since 1970-01-01",
                             "calendar": "proleptic_gregorian", "standard_name": "forecast_reference_time",
                             "long_name": "initialisation time"}
    assert model["prediction_timedelta"]["standard_name"] == "forecast_period"
    assert (model["number"]["standard_name"], model["number"]["units"]) == ("realization", "1")
    assert (model["level"]["standard_name"], model["level"]["units"], model["level"]["positive"]) == (
        "air_pressure", "hPa", "down")
    assert model["height_2m"]["units"] == "m" and model["height_2m"]["positive"] == "up"
    assert model["height_10m"]["standard_name"] == "height"
    for name in ("2m_temperature", "temperature"):
        assert model[name]["dtype"] == baseline[name]["dtype"] == "float32"
        assert model[name]["_FillValue"] == baseline[name]["_FillValue"] == "nan"
        assert model[name]["coordinates"] == baseline[name]["coordinates"]
    assert model["2m_temperature"]["coordinates"] == "valid_time height_2m"
    assert model["10m_u_component_of_wind"]["coordinates"] == "valid_time height_10m"
    assert model["temperature"]["coordinates"] == "valid_time"
    with xr.open_dataset(written / "model.nc") as forecast, xr.open_dataset(written / "climatology.nc") as clim:
        assert forecast.attrs["Conventions"] == clim.attrs["Conventions"] == "CF-1.8"
        assert forecast.attrs["title"] == "gencast-rmmd teacher ensemble forecast"
        assert clim.attrs["title"] == "climatology baseline" and "history" in clim.attrs
        assert forecast.attrs["resumed"] == 1                     # a boolean attribute, written as 0/1
        assert forecast["temperature"].dims == clim["temperature"].dims
        np.testing.assert_array_equal(forecast["valid_time"].values, clim["valid_time"].values)


def test_every_zarr_forecast_reads_like_weatherbench2_with_the_netcdf_values(written, wb2_dataset):
    """WB2's readers open the store as written: `xr.open_zarr` (consolidated zarr v2), its names and dims."""
    steps = _model_fields(wb2_dataset)
    for name in ("model", "persistence", "climatology"):
        store = written / f"{name}.zarr"
        assert (store / ".zmetadata").is_file() and (store / ".zgroup").is_file()   # zarr v2, consolidated
        forecast = xr.open_zarr(store)
        assert {"time", "prediction_timedelta", "number", "latitude", "longitude"} <= set(forecast.dims)
        assert np.issubdtype(forecast["time"].dtype, np.datetime64)
        assert np.issubdtype(forecast["prediction_timedelta"].dtype, np.timedelta64)
        np.testing.assert_array_equal(forecast["time"].values, INITS.values)
        np.testing.assert_array_equal(forecast["prediction_timedelta"].values, LEADS.values)
        assert "2m_temperature" in forecast and forecast["temperature"].dims == (
            "time", "prediction_timedelta", "number", "level", "latitude", "longitude")
        # WB2's by-init convention (`schema.apply_time_conventions`): init_time, lead_time, valid_time.
        by_init = forecast.rename({"prediction_timedelta": "lead_time", "time": "init_time"})
        by_init.coords["valid_time"] = by_init.init_time + by_init.lead_time
        assert by_init["valid_time"].sel(init_time=INITS[1], lead_time=LEADS[1]).values == np.datetime64(
            "2001-01-06T00:00")
        with xr.open_dataset(written / f"{name}.nc") as netcdf:
            for variable in netcdf.data_vars:
                np.testing.assert_array_equal(forecast[variable].values, netcdf[variable].values)
    model = xr.open_zarr(written / "model.zarr")
    np.testing.assert_array_equal(model["temperature"].isel(prediction_timedelta=1).values,
                                  steps[1]["temperature"])


def test_evaluate_scores_a_zarr_forecast_as_its_netcdf(written, wb2_store, run_cli):
    for suffix in ("zarr", "nc"):
        result = run_cli("evaluate", "--forecast", written / f"climatology.{suffix}", "--truth", wb2_store,
                         "--out", written / f"climatology_{suffix}_scores.nc", "--no-progress")
        assert result.code == 0, result.err
    from_zarr, from_netcdf = (open_scores(written / f"climatology_{suffix}_scores.nc") for suffix in ("zarr", "nc"))
    for name in ("2m_temperature", "temperature"):
        xr.testing.assert_allclose(from_zarr[name], from_netcdf[name], rtol=1e-12)


def test_a_zarr_store_is_replaced_only_by_a_complete_one(tmp_path, wb2_dataset):
    store = tmp_path / "forecast.zarr"
    steps = _model_fields(wb2_dataset)
    _write_model_forecast(store, wb2_dataset, steps)
    before = xr.open_zarr(store)["temperature"].values
    with pytest.raises(RuntimeError, match="killed mid-rollout"):
        with ForecastWriter(store, init_times=INITS, leads=LEADS, members=MEMBERS, layout=LAYOUT,
                            latitude=wb2_dataset["latitude"].values,
                            longitude=wb2_dataset["longitude"].values) as writer:
            writer.write_step(0, _model_fields(wb2_dataset, seed=1)[0])
            raise RuntimeError("killed mid-rollout")
    np.testing.assert_array_equal(xr.open_zarr(store)["temperature"].values, before)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forecast.zarr"]     # no temporary left
    _write_model_forecast(store, wb2_dataset, _model_fields(wb2_dataset, seed=2))     # a complete one replaces it
    assert not np.array_equal(xr.open_zarr(store)["temperature"].values, before)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forecast.zarr"]


def test_unfilled_leads_read_as_missing_not_as_zero(tmp_path, wb2_dataset):
    """A writer closed after one of two leads (a bug, not a crash) leaves NaN, the fill value, in the other."""
    template = forecast_dataset({"2m_temperature": np.zeros((1, 2, 2, 32, 64), np.float32)},
                                init_times=INITS[:1], leads=LEADS, latitude=wb2_dataset["latitude"].values,
                                longitude=wb2_dataset["longitude"].values)
    for suffix in ("nc", "zarr"):
        with ForecastFileWriter(tmp_path / f"partial.{suffix}", template) as writer:
            writer.write_step(0, {"2m_temperature": np.ones((1, 2, 32, 64), np.float32)})
        with xr.open_dataset(tmp_path / f"partial.{suffix}") as partial:
            values = partial["2m_temperature"].values
        assert (values[:, 0] == 1).all() and np.isnan(values[:, 1]).all(), suffix


def test_whole_dataset_and_step_writes_give_the_same_file(tmp_path, wb2_dataset):
    """The reference ensemble's path (`write_forecast` of a Dataset) and the model's (steps) agree byte for value."""
    steps = _model_fields(wb2_dataset)
    _write_model_forecast(tmp_path / "steps.nc", wb2_dataset, steps)
    fields = {name: np.stack([step[name] for step in steps], axis=1) for name in steps[0]}
    whole = forecast_dataset(fields, init_times=INITS, leads=LEADS, latitude=wb2_dataset["latitude"].values,
                             longitude=wb2_dataset["longitude"].values, levels=np.array(LAYOUT.levels),
                             attrs={"title": "gencast-rmmd teacher ensemble forecast", "model_kind": "teacher",
                                    "parameters": "ema", "resumed": True})
    write_forecast(whole, tmp_path / "whole.nc")
    stepped, dataset = _raw_variables(tmp_path / "steps.nc"), _raw_variables(tmp_path / "whole.nc")
    assert stepped == dataset
    with xr.open_dataset(tmp_path / "steps.nc") as a, xr.open_dataset(tmp_path / "whole.nc") as b:
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


@pytest.mark.parametrize("name", ["model.nc", "climatology.nc", "persistence.nc", "model.zarr", "scores.nc"])
def test_both_cf_checkers_report_no_error(written, tmp_path, name):
    """IOOS compliance-checker (cf:1.8) and cfchecks: 0 errors. Warnings left (see cf_checkers.py): WB2's
    variable names begin with a digit (§2.3) and its dims are not in T, Z, Y, X order (§2.4)."""
    warnings = assert_cf_clean(written / name, tmp_path)
    allowed = ("should begin with a letter", "not in the recommended order")
    assert [w for w in warnings["compliance-checker"] if not any(phrase in w for phrase in allowed)] == []
    assert [w for w in warnings["cfchecks"] if "should begin with a letter" not in w] == []


def test_a_forecast_has_one_pipeline_digest_as_netcdf_and_as_zarr(written):
    """The pipeline records a forecast output by a digest of its raw values; the format does not change it."""
    from pipelines.digests import output_record

    netcdf, zarr = (output_record("netcdf", written / f"model.{suffix}") for suffix in ("nc", "zarr"))
    assert netcdf["digest"] == zarr["digest"]
    assert zarr["bytes"] > 100_000            # the store's files, not its directory entry
