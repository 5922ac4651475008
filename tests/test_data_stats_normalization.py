"""Statistics against numpy; GenCast residual normalisation round-trips exactly; NaN handling."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEST_DATA_CONFIG
from gencast_rmmd.config import DataFileConfig, load_config
from gencast_rmmd.data.batches import make_iterator
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.stats import compute_stats, load_stats


def open_source(store, *overrides):
    return DataSource.open(load_config(TEST_DATA_CONFIG, DataFileConfig,
                                       ["data.levels=[500,850]", *overrides], str(store)).data)


@pytest.fixture(scope="module")
def sst_source(tmp_path_factory, wb2_dataset):
    from wb2_stores import write_store
    store = write_store(wb2_dataset, tmp_path_factory.mktemp("sst") / "sst.zarr")
    return open_source(store, "data.variables.surface=[2m_temperature, sea_surface_temperature]")


def test_stats_match_numpy(wb2_store, wb2_dataset):
    source = open_source(wb2_store)
    stats = compute_stats(source)
    start, end = source.time_range("train")
    twelve_hourly = wb2_dataset.sel(time=wb2_dataset["time"].dt.hour.isin([0, 12]))
    train = twelve_hourly.sel(time=slice(start, end))
    values = train["temperature"].sel(level=850).values.astype(np.float64)
    expected = [values.mean(), values.std(), np.diff(values, axis=0).std(), values.min()]
    np.testing.assert_allclose(stats["temperature"].sel(level=850).values, expected, rtol=1e-5)
    msl = train["mean_sea_level_pressure"].values.astype(np.float64)
    np.testing.assert_allclose(stats["mean_sea_level_pressure"].sel(statistic="diffs_std"),
                               np.diff(msl, axis=0).std(), rtol=1e-5)
    assert stats.attrs["time_count"] == train.sizes["time"]


def test_diffs_ignore_pairs_across_gaps(tmp_path, wb2_dataset):
    from wb2_stores import write_store
    gapped = wb2_dataset.drop_sel(time=wb2_dataset["time"].values[8:12])       # lose one day
    source = open_source(write_store(gapped, tmp_path / "gap.zarr"))
    stats = compute_stats(source)
    start, end = source.time_range("train")
    train = source.dataset.sel(time=slice(start, end)).compute()
    values = train["2m_temperature"].values.astype(np.float64)
    steps = np.diff(train["time"].values) == np.timedelta64(12, "h")
    np.testing.assert_allclose(stats["2m_temperature"].sel(statistic="diffs_std"),
                               np.diff(values, axis=0)[steps].std(), rtol=1e-5)


def test_stats_command_writes_netcdf(run_cli, tmp_path, wb2_store):
    out = tmp_path / "stats.nc"
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--set", "data.levels=[500,850]",
                     "--data", wb2_store, "--out", out)
    assert result.code == 0, result.err
    stats = load_stats(out)
    assert list(stats["statistic"].values) == ["mean", "std", "diffs_std", "minimum"]
    assert stats["geopotential"].dims == ("statistic", "level")
    assert "land_sea_mask" in stats and "source" in stats.attrs


def test_residual_normalisation_round_trip_is_exact(sst_source):
    normalizer = Normalizer.from_stats(compute_stats(sst_source), sst_source.layout)
    with make_iterator(sst_source) as iterator:
        batch = next(iterator).batch
    targets = batch.targets[:, 0].astype(np.float64)
    last = normalizer.last_frame(batch.inputs).astype(np.float64)
    normalized = normalizer.normalize_targets(targets, last)
    assert np.all(np.isfinite(normalized)), "NaNs must be filled before the model sees them"
    recovered = normalizer.restore_nan(normalizer.denormalize_targets(normalized, last), last)
    np.testing.assert_array_equal(np.isnan(recovered), np.isnan(targets))
    np.testing.assert_allclose(recovered, targets, rtol=1e-12, atol=0, equal_nan=True)


def test_residual_form_uses_last_input_and_diffs_std(wb2_store):
    source = open_source(wb2_store)
    stats = compute_stats(source)
    normalizer = Normalizer.from_stats(stats, source.layout)
    with make_iterator(source) as iterator:
        batch = next(iterator).batch
    channel = [c.label for c in source.layout.target_channels].index("temperature@850")
    last = normalizer.last_frame(batch.inputs)
    normalized = normalizer.normalize_targets(batch.targets[:, 0], last)
    diffs_std = float(stats["temperature"].sel(level=850, statistic="diffs_std"))
    np.testing.assert_allclose(normalized[..., channel],
                               (batch.targets[:, 0, ..., channel] - last[..., channel]) / diffs_std, rtol=1e-5)
    inputs = normalizer.normalize_inputs(batch.inputs)
    mean, std = (float(stats["temperature"].sel(level=850, statistic=s)) for s in ("mean", "std"))
    np.testing.assert_allclose(inputs[..., channel], (batch.inputs[..., channel] - mean) / std, rtol=1e-5, atol=1e-6)


def test_target_only_channels_use_mean_and_std(tmp_path):
    from wb2_stores import era5_like, six_hourly, write_store
    dataset = era5_like(six_hourly(days=8), levels=(500,), extra_surface=("total_precipitation_6hr",))
    source = open_source(write_store(dataset, tmp_path / "tp.zarr"), "data.levels=[500]",
                         "data.variables.target_only=[total_precipitation_12hr]")
    stats = compute_stats(source)
    normalizer = Normalizer.from_stats(stats, source.layout)
    assert normalizer.target_input_index[-1] == -1
    assert normalizer.target_center[-1] == pytest.approx(float(stats["total_precipitation_12hr"].sel(statistic="mean")))
    assert normalizer.target_scale[-1] == pytest.approx(float(stats["total_precipitation_12hr"].sel(statistic="std")))


def test_normalizer_serialises_and_works_under_jit(sst_source):
    import jax
    import jax.numpy as jnp
    normalizer = Normalizer.from_stats(compute_stats(sst_source), sst_source.layout)
    restored = Normalizer.from_dict(normalizer.to_dict())
    with make_iterator(sst_source) as iterator:
        batch = next(iterator).batch
    last = normalizer.last_frame(batch.inputs)
    expected = normalizer.normalize_targets(batch.targets[:, 0], last)
    actual = jax.jit(restored.normalize_targets)(jnp.asarray(batch.targets[:, 0]), jnp.asarray(last))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-5)


def test_missing_statistics_is_a_user_error(wb2_store):
    from gencast_rmmd.errors import UserInputError
    source = open_source(wb2_store)
    with pytest.raises(UserInputError, match="no entry for temperature"):
        Normalizer.from_stats(compute_stats(source).drop_vars("temperature"), source.layout)
