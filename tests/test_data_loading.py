"""Opening stores in any WB2 layout yields the same model batches; windows, forcings, iterator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TEST_DATA_CONFIG
from gencast_rmmd.config import DataFileConfig, load_config
from gencast_rmmd.data.batches import BatchIterator, make_iterator
from gencast_rmmd.data.forcings import day_progress, forcing_channels, year_progress
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.data.windows import build_windows
from wb2_stores import era5_like, six_hourly, write_store

LEVELS = ["data.levels=[500,850]"]


def data_config(path, *overrides):
    return load_config(TEST_DATA_CONFIG, DataFileConfig, [*LEVELS, *overrides], str(path)).data


def first_batches(path, count=3, **overrides):
    source = DataSource.open(data_config(path, *[f"{k}={v}" for k, v in overrides.items()]))
    with make_iterator(source) as iterator:
        return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("layout,zarr_format,consolidated", [
    ("0p25", 2, True),        # latitude descending, (time, level, latitude, longitude)
    ("0p25", 3, False),       # zarr v3, not consolidated
    ("latlon", 2, False),     # lat/lon names, level in Pa, longitude in [-180, 180)
])
def test_every_layout_gives_identical_batches(tmp_path, wb2_dataset, wb2_store, layout, zarr_format, consolidated):
    other = write_store(wb2_dataset, tmp_path / f"{layout}.zarr", layout, zarr_format, consolidated)
    reference, candidate = first_batches(wb2_store), first_batches(other)
    for expected, actual in zip(reference, candidate):
        np.testing.assert_array_equal(expected.init_times, actual.init_times)
        for name in expected.batch._fields:
            np.testing.assert_array_equal(getattr(expected.batch, name), getattr(actual.batch, name), err_msg=name)


def test_file_url_opens_the_same_store(wb2_store):
    np.testing.assert_array_equal(open_dataset(f"file://{wb2_store}")["temperature"].values,
                                  open_dataset(str(wb2_store))["temperature"].values)


def test_internal_convention(tmp_path, wb2_dataset):
    opened = open_dataset(str(write_store(wb2_dataset, tmp_path / "s.zarr", "latlon")))
    assert opened["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert np.all(np.diff(opened["latitude"].values) > 0)
    longitude = opened["longitude"].values
    assert longitude.min() >= 0 and longitude.max() < 360 and np.all(np.diff(longitude) > 0)
    assert opened["level"].values.tolist() == [500, 850]
    assert opened["temperature"].chunks is not None, "must stay lazy (dask)"


def test_batch_values_match_direct_selection(wb2_dataset, wb2_store):
    """Inputs are (t-12h, t), targets t+12h, from the 12-hourly axis, channels in layout order."""
    labeled = first_batches(wb2_store, count=1)[0]
    init = pd.Timestamp(labeled.init_times[0])
    source = DataSource.open(data_config(wb2_store))
    layout = source.layout
    channels = layout.input_channels

    def frame(time):
        selected = wb2_dataset.sel(time=time)
        return np.stack([selected[c.variable].values if c.level is None
                         else selected[c.variable].sel(level=c.level).values for c in channels], axis=-1)

    n = layout.n_input_channels
    np.testing.assert_array_equal(labeled.batch.inputs[0, ..., :n], frame(init - pd.Timedelta(hours=12)))
    np.testing.assert_array_equal(labeled.batch.inputs[0, ..., n:], frame(init))
    np.testing.assert_array_equal(labeled.batch.targets[0, 0], frame(init + pd.Timedelta(hours=12)))
    np.testing.assert_array_equal(labeled.batch.forcings[0, 0],
                                  forcing_channels(np.array([init + pd.Timedelta(hours=12)]),
                                                   source.latitude, source.longitude)[0])
    assert init.hour in (0, 12), "6-hourly data must be subsampled to 00/12 UTC"
    # Split the targets back into named fields.
    fields = layout.split_targets(labeled.batch.targets[0, 0])
    np.testing.assert_array_equal(fields["temperature"][1],
                                  wb2_dataset["temperature"].sel(time=init + pd.Timedelta(hours=12), level=850).values)


def test_windows_skip_gaps_and_count_them():
    times = pd.date_range("2000-01-01", periods=20, freq="12h").delete([7])   # one missing step
    windows = build_windows(times, pd.Timedelta(hours=12), 2, 1, (times[0], times[-1]))
    # Without the gap: inits at positions 1..18 of 20 -> 18 windows; the gap kills 3 (t-12, t, t+12 cross it).
    assert len(windows) == 18 - 3 and windows.skipped_for_gaps == 2
    for position in windows.init_positions:
        assert times[position + 1] - times[position - 1] == pd.Timedelta(hours=24)


def test_splits_by_fraction_do_not_share_frames(wb2_store):
    source = DataSource.open(data_config(wb2_store))
    train, validation = source.windows("train"), source.windows("validation")
    train_frames = set(np.ravel(train.init_positions[:, None] + train.frame_offsets()))
    validation_frames = set(np.ravel(validation.init_positions[:, None] + validation.frame_offsets()))
    assert len(train) > 0 and len(validation) > 0
    assert not train_frames & validation_frames


def test_splits_by_date(wb2_store):
    source = DataSource.open(data_config(
        wb2_store, "data.splits.train={start: '2001-01-01', end: '2001-01-05'}"))
    start, end = source.time_range("train")
    assert start == pd.Timestamp("2001-01-01") and end == pd.Timestamp("2001-01-05 23:59:59")
    assert source.windows("train").init_times.max() == pd.Timestamp("2001-01-05 00:00")


def test_rollout_windows_have_k_targets(wb2_store):
    source = DataSource.open(data_config(wb2_store, "data.target_steps=3"))
    labeled = first_batches(wb2_store, count=1, **{"data.target_steps": 3})[0]
    assert labeled.batch.targets.shape[1] == 3 and labeled.batch.forcings.shape[1] == 3
    assert len(source.windows("train")) < len(DataSource.open(data_config(wb2_store)).windows("train"))


def test_iterator_is_seeded_and_resumes_without_replay(wb2_store):
    source = DataSource.open(data_config(wb2_store))
    windows = source.windows("train")
    straight = BatchIterator(source, windows, batch_size=2, seed=7, prefetch=2)
    reference = [next(straight) for _ in range(7)]
    straight.close()
    resumed = BatchIterator(source, windows, batch_size=2, seed=7, start_step=4, prefetch=0)
    for expected in reference[4:]:
        actual = next(resumed)
        np.testing.assert_array_equal(expected.init_times, actual.init_times)
        np.testing.assert_array_equal(expected.batch.targets, actual.batch.targets)
    other_seed = BatchIterator(source, windows, batch_size=2, seed=8, prefetch=0)
    orders = [tuple(BatchIterator.examples_at(it, s)) for it in (resumed, other_seed) for s in range(3)]
    assert orders[:3] != orders[3:]
    # Every window is visited once per epoch.
    epoch = np.concatenate([resumed.examples_at(s) for s in range(resumed.steps_per_epoch)])
    assert len(set(epoch)) == len(epoch) == resumed.steps_per_epoch * 2


def test_cached_and_lazy_reading_agree(wb2_store):
    cached = first_batches(wb2_store, count=2, **{"data.loader.cache_in_memory": "true"})
    lazy = first_batches(wb2_store, count=2, **{"data.loader.cache_in_memory": "false"})
    for a, b in zip(cached, lazy):
        np.testing.assert_array_equal(a.batch.inputs, b.batch.inputs)


def test_forcings_closed_form():
    times = np.array(["2000-01-01T00:00", "2000-01-01T06:00"], dtype="datetime64[ns]")
    progress = day_progress(times, np.array([0.0, 90.0, 180.0]))
    np.testing.assert_allclose(progress, [[0.0, 0.25, 0.5], [0.25, 0.5, 0.75]], atol=1e-12)
    epoch_year = year_progress(np.array(["1970-01-01"], dtype="datetime64[ns]"))
    assert epoch_year[0] == 0.0
    half = year_progress(np.array([np.datetime64("1970-01-01") + np.timedelta64(int(365.24219 * 43200), "s")]))
    np.testing.assert_allclose(half, [0.5], atol=1e-6)


def test_sst_nan_kept_in_batches(tmp_path):
    dataset = era5_like(six_hourly(days=6), levels=(500,), extra_surface=("sea_surface_temperature",))
    store = write_store(dataset, tmp_path / "sst.zarr")
    source = DataSource.open(data_config(
        store, "data.levels=[500]",
        "data.variables.surface=[2m_temperature, sea_surface_temperature]"))
    labeled = first_batches(store, count=1, **{"data.levels": "[500]",
                                               "data.variables.surface": "[2m_temperature, sea_surface_temperature]"})[0]
    sst_channel = [c.variable for c in source.layout.input_channels].index("sea_surface_temperature")
    land = dataset["land_sea_mask"].values > 0
    assert np.array_equal(np.isnan(labeled.batch.inputs[0, ..., sst_channel]), land)


def test_precipitation_12hr_derived_from_6hr(tmp_path):
    dataset = era5_like(six_hourly(days=6), levels=(500,), extra_surface=("total_precipitation_6hr",))
    store = write_store(dataset, tmp_path / "tp.zarr")
    source = DataSource.open(data_config(store, "data.levels=[500]",
                                         "data.variables.target_only=[total_precipitation_12hr]"))
    assert source.report.derived == {"total_precipitation_12hr": "total_precipitation_6hr"}
    time = source.times[3]
    expected = (dataset["total_precipitation_6hr"].sel(time=time)
                + dataset["total_precipitation_6hr"].sel(time=time - pd.Timedelta(hours=6)))
    np.testing.assert_allclose(source.dataset["total_precipitation_12hr"].sel(time=time).values, expected.values,
                               rtol=1e-6)
    assert "total_precipitation_12hr" not in [c.variable for c in source.layout.input_channels]
    assert source.layout.target_channels[-1].variable == "total_precipitation_12hr"


def test_evenly_spaced_inits_span_the_split_and_refuse_too_many():
    """Five windows at positions 0..4 of a 12-hourly axis: 3 evenly spaced are the first, middle and last."""
    from gencast_rmmd.data.windows import WindowIndex
    from gencast_rmmd.errors import UserInputError

    times = pd.date_range("2000-01-01", periods=10, freq="12h")
    windows = WindowIndex(times, np.array([2, 3, 4, 5, 6]), 0, input_frames=2, target_steps=3)
    assert list(windows.evenly_spaced(3)) == [times[2], times[4], times[6]]
    assert list(windows.evenly_spaced(5)) == list(times[2:7])
    with pytest.raises(UserInputError, match="only 5 init"):
        windows.evenly_spaced(6)
