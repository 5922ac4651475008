"""The embedded Held-Suarez dataset (`gencast-rmmd data simulate`).

What these tests prove, on the test config (60-day spin-up, 6 stored days, in a
temporary cache):
- the store has the WB2 64x32 schema (names, dims order, coordinates, units,
  one time step per chunk, zarr v2 + consolidated) and passes the data layer's
  schema check; the climate is Earth-like;
- the same config gives bit-identical stores, with a cached spin-up or a
  fresh one, and the second run skips the spin-up; an existing store made with
  the same config is reused;
- simulator members from the same state with different stochastic seeds differ
  at +12 h by at least 10% of the typical 12 h change of z500 and t850;
- the reference ensemble has the forecast layout, branches from exactly the
  stored state, its mean tracks the truth at +12 h, and member i does not
  depend on the ensemble size;
- bad input is one line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from gencast_rmmd.config import DataFileConfig, load_config
from gencast_rmmd.data.variables import cf_attributes

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "configs" / "data" / "test.yaml"
ERA5_CONFIG = REPO / "configs" / "data" / "era5_wb2_64x32.yaml"
GRAVITY = 9.80616
ATMOSPHERIC = ("temperature", "geopotential", "u_component_of_wind", "v_component_of_wind")
SURFACE = ("2m_temperature", "mean_sea_level_pressure", "10m_u_component_of_wind", "10m_v_component_of_wind")
STATIC = ("geopotential_at_surface", "land_sea_mask")


@pytest.fixture(scope="session")
def data_config() -> DataFileConfig:
    return load_config(TEST_CONFIG, DataFileConfig)


@pytest.fixture(scope="session")
def cache_root(simulated) -> Path:
    """The fresh cache that conftest's `simulated` store was made with."""
    return simulated[1].directory.parent


def _values(path: Path) -> dict[str, np.ndarray]:
    dataset = xr.open_zarr(path, consolidated=True)
    return {name: dataset[name].values for name in dataset.data_vars}


def test_store_has_the_wb2_64x32_schema(simulated, data_config):
    from gencast_rmmd.data.schema import check_dataset
    from gencast_rmmd.data.stores import open_dataset

    result, _ = simulated
    simulation = data_config.data.simulation
    assert (result.path / ".zmetadata").is_file()  # zarr v2, consolidated
    dataset = xr.open_zarr(result.path, consolidated=True)
    assert set(dataset.data_vars) == {*ATMOSPHERIC, *SURFACE, *STATIC}
    for name in ATMOSPHERIC:
        assert dataset[name].dims == ("time", "level", "longitude", "latitude")
        assert dataset[name].encoding["chunks"] == (1, 13, 64, 32)
    for name in SURFACE:
        assert dataset[name].dims == ("time", "longitude", "latitude")
        assert dataset[name].encoding["chunks"] == (1, 64, 32)
    for name in STATIC:
        assert dataset[name].dims == ("longitude", "latitude")
        assert np.all(dataset[name].values == 0.0)  # flat aquaplanet, documented
        assert "comment" in dataset[name].attrs
    for name in dataset.data_vars:
        assert dataset[name].dtype == np.float32
        for key, value in cf_attributes(name).items():
            assert dataset[name].attrs[key] == value, (name, key)
    np.testing.assert_array_equal(dataset["longitude"].values, np.arange(64) * 5.625)
    np.testing.assert_allclose(dataset["latitude"].values, np.linspace(-87.1875, 87.1875, 32))
    np.testing.assert_array_equal(dataset["level"].values, [50, 100, 150, 200, 250, 300, 400, 500, 600, 700,
                                                            850, 925, 1000])
    expected_times = pd.date_range(simulation.start, periods=int(simulation.days * 4), freq="6h")
    np.testing.assert_array_equal(dataset["time"].values, expected_times.values)
    assert dataset.attrs["Conventions"] == "CF-1.8"
    report = check_dataset(open_dataset(str(result.path)), data_config.data, str(result.path))
    assert report.time_count == len(expected_times) and report.gaps.count == 0


def test_climate_is_earth_like(simulated):
    from gencast_rmmd.data.stores import open_dataset

    dataset = open_dataset(str(simulated[0].path)).load()
    for name in dataset.data_vars:
        assert np.isfinite(dataset[name].values).all(), name
    jets = dataset["u_component_of_wind"].sel(level=[200, 250, 300]).mean(("time", "longitude"))
    assert 15.0 < float(jets.max()) < 45.0  # Held-Suarez: ~30 m/s
    north = jets.sel(latitude=slice(0, 90)).max()
    south = jets.sel(latitude=slice(-90, 0)).max()
    assert float(north) > 15.0 and float(south) > 15.0  # a jet in each hemisphere
    temperature = dataset["temperature"].values
    assert 180.0 < temperature.min() and temperature.max() < 320.0
    height = dataset["geopotential"].sel(level=500).values / GRAVITY
    assert 4500.0 < height.min() and height.max() < 6000.0 and 5200.0 < height.mean() < 5700.0
    pressure = dataset["mean_sea_level_pressure"].values
    assert 90000.0 < pressure.min() and pressure.max() < 110000.0
    # Geopotential increases upwards in every column (hydrostatic extrapolation included).
    assert (np.diff(dataset["geopotential"].values, axis=1) < 0).all()
    # Baroclinic eddies are present: the wind varies along latitude circles.
    eddy = dataset["v_component_of_wind"].sel(level=250).std("longitude").mean()
    assert float(eddy) > 3.0


def test_second_run_uses_the_cached_spinup_and_is_bit_identical(simulated, data_config, tmp_path):
    from gencast_rmmd.data.simulator import simulate_store

    result, cache = simulated
    assert result.spinup_computed and not result.reused_store
    again = simulate_store(data_config.data.simulation, tmp_path / "again.zarr", cache, log=lambda _: None)
    assert not again.spinup_computed and not again.reused_store
    first, second = _values(result.path), _values(again.path)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_fresh_cache_reproduces_the_store(simulated, data_config, tmp_path):
    from gencast_rmmd.data.simulator import TrajectoryCache, simulate_store

    simulation = data_config.data.simulation
    cache = TrajectoryCache.for_config(simulation, tmp_path / "cache")
    fresh = simulate_store(simulation, tmp_path / "fresh.zarr", cache, log=lambda _: None)
    assert fresh.spinup_computed
    first, second = _values(simulated[0].path), _values(fresh.path)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_seed_and_streams_change_the_randomness(data_config):
    import jax

    from gencast_rmmd.data.simulator.model import MEMBER_STREAM, TRUTH_STREAM, build_model, stream_key

    simulation = data_config.data.simulation
    model = build_model(simulation)
    first, other_seed = model.initial_state(0), model.initial_state(1)
    assert not np.array_equal(first.dynamics.temperature_variation, other_seed.dynamics.temperature_variation)
    truth = model.advance(first, stream_key(0, TRUTH_STREAM))
    member = model.advance(first, stream_key(0, MEMBER_STREAM, 0, 0))
    repeat = model.advance(first, stream_key(0, TRUTH_STREAM))
    assert not np.array_equal(truth.dynamics.vorticity, member.dynamics.vorticity)
    np.testing.assert_array_equal(jax.device_get(truth.dynamics.vorticity), jax.device_get(repeat.dynamics.vorticity))


def test_existing_store_is_reused_by_the_cli(simulated, run_cli, cache_root):
    result, _ = simulated
    metadata = result.path / ".zmetadata"
    before = metadata.stat().st_mtime_ns
    outcome = run_cli("data", "simulate", "--out", result.path, "--config", TEST_CONFIG, "--cache-dir", cache_root)
    assert outcome.code == 0, outcome.err
    assert "reusing it" in outcome.err
    assert metadata.stat().st_mtime_ns == before


@pytest.fixture(scope="session")
def reference(simulated, data_config):
    """Four members, two leads, from two init times of the test store."""
    from gencast_rmmd.data.simulator import reference_ensemble

    _, cache = simulated
    return reference_ensemble(data_config.data.simulation, cache, ["2000-01-02T00:00", "2000-01-03T12:00"],
                              members=4, steps=2, log=lambda _: None)


def test_reference_ensemble_has_the_forecast_layout(reference):
    dataset = reference.dataset
    assert dict(dataset.sizes) == {"time": 2, "prediction_timedelta": 2, "number": 4, "level": 13,
                                   "latitude": 32, "longitude": 64}
    assert dataset["temperature"].dims == ("time", "prediction_timedelta", "number", "level", "latitude",
                                           "longitude")
    assert dataset["2m_temperature"].dims == ("time", "prediction_timedelta", "number", "latitude", "longitude")
    np.testing.assert_array_equal(dataset["prediction_timedelta"].values,
                                  pd.to_timedelta([12, 24], unit="h").values)
    np.testing.assert_array_equal(dataset["valid_time"].values[1, 0], np.datetime64("2000-01-04T00:00"))
    assert dataset["latitude"].values[0] < dataset["latitude"].values[-1]
    assert dataset["geopotential"].attrs["units"] == "m2 s-2"
    assert all(np.isfinite(dataset[name].values).all() for name in dataset.data_vars)


def test_members_branch_from_the_stored_state_and_track_the_truth(reference, simulated):
    from gencast_rmmd.data.simulator import branch_mismatch
    from gencast_rmmd.data.stores import open_dataset

    truth = open_dataset(str(simulated[0].path)).load()
    assert branch_mismatch(reference, truth) < 1e-4  # +0 h equals the stored state (interpolation precision)
    lead = pd.Timedelta(hours=12)
    weights = np.cos(np.deg2rad(truth["latitude"].values))[:, None]
    inits = pd.DatetimeIndex(reference.dataset["time"].values)
    for name, level in (("geopotential", 500), ("temperature", 850), ("u_component_of_wind", 250)):
        mean = reference.dataset[name].sel(prediction_timedelta=lead, level=level).mean("number").values
        target = truth[name].sel(time=inits + lead, level=level).values
        persisted = truth[name].sel(time=inits, level=level).values
        mean_error = np.sqrt(np.mean((mean - target) ** 2 * weights))
        persistence_error = np.sqrt(np.mean((persisted - target) ** 2 * weights))
        assert mean_error < 0.5 * persistence_error, (name, mean_error, persistence_error)


def test_stochastic_spread_is_at_least_ten_percent_of_the_12h_change(reference, simulated):
    from gencast_rmmd.data.simulator import spread_to_change_ratio
    from gencast_rmmd.data.stores import open_dataset

    truth = open_dataset(str(simulated[0].path)).load()
    z500 = spread_to_change_ratio(reference.dataset, truth, "geopotential", 500)
    t850 = spread_to_change_ratio(reference.dataset, truth, "temperature", 850)
    print(f"+12 h member difference / 12 h change: z500 {z500:.3f}, t850 {t850:.3f}")
    assert z500 >= 0.1 and t850 >= 0.1
    # The spread is a perturbation, not noise that swamps the dynamics.
    assert z500 < 1.0 and t850 < 1.0


def test_member_does_not_depend_on_ensemble_size(reference, simulated, data_config):
    from gencast_rmmd.data.simulator import reference_ensemble

    smaller = reference_ensemble(data_config.data.simulation, simulated[1], ["2000-01-02T00:00"], members=2,
                                 steps=1, log=lambda _: None)
    for name in ("geopotential", "2m_temperature"):
        np.testing.assert_allclose(smaller.dataset[name].isel(time=0, prediction_timedelta=0).values,
                                   reference.dataset[name].isel(time=0, prediction_timedelta=0, number=[0, 1]).values,
                                   rtol=1e-6, err_msg=name)


def test_cli_writes_a_reference_ensemble(simulated, run_cli, cache_root, tmp_path, monkeypatch):
    from gencast_rmmd.data.simulator import CACHE_ENV_VAR

    monkeypatch.setenv(CACHE_ENV_VAR, str(cache_root))  # the environment variable points at the cache
    out = tmp_path / "reference.nc"
    outcome = run_cli("data", "simulate", "--out", simulated[0].path, "--config", TEST_CONFIG,
                      "--reference-out", out, "--init", "2000-01-04T06:00", "--members", "2", "--steps", "1")
    assert outcome.code == 0, outcome.err
    assert "match the stored state" in outcome.err and "z500 member difference" in outcome.err
    written = xr.open_dataset(out)
    assert written.sizes["number"] == 2 and written.sizes["prediction_timedelta"] == 1
    assert written.attrs["Conventions"] == "CF-1.8"


@pytest.mark.parametrize("arguments, message", [
    (["--reference-out", "ref.nc", "--init", "2001-06-01T00:00"], "outside the simulated period"),
    (["--reference-out", "ref.nc", "--init", "2000-01-02T03:00"], "not on the 6-hourly output grid"),
    (["--reference-out", "ref.nc", "--init", "tomorrow-ish"], "not an ISO date-time"),
    (["--init", "2000-01-02T00:00"], "--reference-out and --init go together"),
    (["--reference-out", "ref.nc", "--init", "2000-01-02T00:00", "--members", "0"], "at least 1"),
    (["--set", "data.simulation.time_step_minutes=7"], "time_step_minutes"),
    (["--set", "data.simulation.stochastic.max_wavenumber=40"], "exceeds the truncation"),
])
def test_bad_input_is_one_line_and_exit_code_2(run_cli, tmp_path, arguments, message):
    arguments = [str(tmp_path / arg) if arg == "ref.nc" else arg for arg in arguments]
    outcome = run_cli("data", "simulate", "--out", tmp_path / "never.zarr", "--config", TEST_CONFIG,
                      "--cache-dir", tmp_path / "cache", *arguments)
    assert outcome.code == 2, outcome.err
    assert message in outcome.err
    assert len(outcome.err.strip().splitlines()) == 1
    assert not (tmp_path / "never.zarr").exists()


def test_an_unrelated_directory_is_never_overwritten(run_cli, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    outcome = run_cli("data", "simulate", "--out", precious, "--config", TEST_CONFIG,
                      "--cache-dir", tmp_path / "cache")
    assert outcome.code == 2
    assert "is not a store written by" in outcome.err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_config_without_simulation_section_is_refused(run_cli, tmp_path):
    outcome = run_cli("data", "simulate", "--out", tmp_path / "never.zarr", "--config", ERA5_CONFIG)
    assert outcome.code == 2
    assert "no data.simulation section" in outcome.err
