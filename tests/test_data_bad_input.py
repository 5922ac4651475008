"""Every bad store or config is answered with one line naming the problem and exit code 2."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import TEST_DATA_CONFIG
from wb2_stores import write_store

WB2_64x32 = "gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-64x32_equiangular_conservative.zarr"


def check(run_cli, store, *extra):
    return run_cli("data", "check", "--config", TEST_DATA_CONFIG, "--set", "data.levels=[500,850]",
                   "--data", store, *extra)


def assert_one_line_error(result, *phrases):
    assert result.code == 2, (result.code, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def broken(tmp_path, dataset, name="broken.zarr", **kw):
    return write_store(dataset, tmp_path / name, **kw)


def test_valid_store_prints_summary(run_cli, wb2_store):
    result = check(run_cli, wb2_store)
    assert result.code == 0, result.err
    assert "32 latitudes x 64 longitudes" in result.err and "500, 850 hPa" in result.err
    assert "train" in result.err and "windows" in result.err


def test_missing_variable(run_cli, tmp_path, wb2_dataset):
    result = check(run_cli, broken(tmp_path, wb2_dataset.drop_vars("geopotential")))
    assert_one_line_error(result, "missing variable", "geopotential")


def test_missing_level(run_cli, wb2_store):
    result = check(run_cli, wb2_store, "--set", "data.levels=[500,700,850]")
    assert_one_line_error(result, "missing pressure level", "700")


def test_missing_dimension(run_cli, tmp_path, wb2_dataset):
    flat = wb2_dataset.isel(latitude=0, drop=True)
    result = check(run_cli, broken(tmp_path, flat.transpose("time", "level", "longitude")))
    assert_one_line_error(result, "latitude")


def test_wrong_dims_on_a_variable(run_cli, tmp_path, wb2_dataset):
    dataset = wb2_dataset.copy()
    dataset["2m_temperature"] = dataset["temperature"]        # has a level dim it should not have
    result = check(run_cli, broken(tmp_path, dataset))
    assert_one_line_error(result, "2m_temperature", "dims")


def test_duplicate_times(run_cli, tmp_path, wb2_dataset):
    times = wb2_dataset["time"].values.copy()
    times[5] = times[4]
    result = check(run_cli, broken(tmp_path, wb2_dataset.assign_coords(time=times)))
    assert_one_line_error(result, "duplicate time")


def test_non_monotonic_times(run_cli, tmp_path, wb2_dataset):
    order = np.arange(wb2_dataset.sizes["time"])
    order[[3, 4]] = order[[4, 3]]
    result = check(run_cli, broken(tmp_path, wb2_dataset.isel(time=order)))
    assert_one_line_error(result, "not increasing")


def test_all_nan_variable(run_cli, tmp_path, wb2_dataset):
    dataset = wb2_dataset.copy()
    dataset["temperature"] = dataset["temperature"] * np.nan
    result = check(run_cli, broken(tmp_path, dataset))
    assert_one_line_error(result, "temperature", "entirely NaN")


def test_non_numeric_dtype(run_cli, tmp_path, wb2_dataset):
    dataset = wb2_dataset.copy()
    dataset["10m_u_component_of_wind"] = dataset["10m_u_component_of_wind"].astype(str)
    result = check(run_cli, broken(tmp_path, dataset))
    assert_one_line_error(result, "10m_u_component_of_wind", "non-numeric")


def test_path_does_not_exist(run_cli, tmp_path):
    assert_one_line_error(check(run_cli, tmp_path / "nowhere.zarr"), "does not exist")


def test_path_is_not_a_zarr_store(run_cli, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    assert_one_line_error(check(run_cli, tmp_path / "plain"), "not a zarr store")


def test_unreachable_gcs_fails_fast(run_cli):
    started = time.monotonic()
    result = run_cli("data", "check", "--data", WB2_64x32, "--config", "configs/data/era5_wb2_64x32.yaml")
    assert time.monotonic() - started < 5.0
    assert_one_line_error(result, "unreachable", "storage.googleapis.com")


def test_time_gaps_are_reported_not_fatal(run_cli, tmp_path, wb2_dataset):
    gapped = wb2_dataset.drop_sel(time=wb2_dataset["time"].values[16:18])
    result = check(run_cli, broken(tmp_path, gapped))
    assert result.code == 0, result.err
    assert "1 gap(s); first between 2001-01-04 18:00:00 and 2001-01-05 12:00:00" in result.err
    assert "skipped for gaps" in result.err


@pytest.mark.parametrize("override,phrase", [
    ("data.loader.batch_sise=3", "data.loader.batch_sise: unknown key"),
    ("data.loader.batch_size=-1", "data.loader.batch_size"),
    ("data.splits.train.fraction=[0.5,0.2]", "data.splits.train"),
    ("data.step_hours=twelve", "data.step_hours"),
    ("data.levels", "expected dotted.key=value"),
])
def test_bad_config_values_name_the_key(run_cli, wb2_store, override, phrase):
    assert_one_line_error(check(run_cli, wb2_store, "--set", override), phrase)


def test_missing_config_file(run_cli, wb2_store):
    result = run_cli("data", "check", "--data", wb2_store, "--config", "configs/data/nope.yaml")
    assert_one_line_error(result, "config file", "does not exist")


def test_bad_input_does_not_damage_existing_output(run_cli, tmp_path, wb2_store):
    out = tmp_path / "stats.nc"
    out.write_bytes(b"previous")
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", tmp_path / "missing.zarr",
                     "--out", out)
    assert result.code == 2 and out.read_bytes() == b"previous"


def test_too_few_windows_for_batch(run_cli, wb2_store):
    from gencast_rmmd.config import DataFileConfig, load_config
    from gencast_rmmd.data.batches import make_iterator
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.errors import UserInputError
    config = load_config(TEST_DATA_CONFIG, DataFileConfig, ["data.levels=[500,850]", "data.loader.batch_size=500"],
                         str(wb2_store)).data
    with pytest.raises(UserInputError, match="valid windows for batch size 500"):
        make_iterator(DataSource.open(config))
