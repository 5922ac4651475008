"""Conservative regridding (`gencast_rmmd.data.regrid`, `gencast-rmmd data regrid`): area integrals kept,
constants and identity exact, NaN (land) left out, the periodic seam, the written store, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.data.regrid import (latitude_edges, latitude_weights, longitude_weights, regrid_array,
                                      regular_grid)
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.errors import UserInputError

# The WB2 64x32 equiangular grid (no poles) and two grids with poles.
LAT_64x32 = -90 + 2.8125 + 5.625 * np.arange(32)
LON_64x32 = 5.625 * np.arange(64)


def area_mean(field: np.ndarray, latitude: np.ndarray) -> float:
    """Exact area-weighted mean: each row weighted by the sine difference of its band."""
    sines = np.diff(np.sin(np.deg2rad(latitude_edges(latitude))))
    return float(np.sum(sines[:, None] * field) / (sines.sum() * field.shape[1]))


def weights(source, target):
    return latitude_weights(source[0], target[0]), longitude_weights(source[1], target[1])


@pytest.mark.parametrize("resolution", [11.25, 22.5, 5.625])
def test_the_global_area_mean_is_kept_and_constants_stay_constant(resolution):
    target = regular_grid(resolution)
    rows, columns = weights((LAT_64x32, LON_64x32), target)
    field = np.random.default_rng(0).normal(size=(3, 32, 64)) * 10 + 280
    out = regrid_array(field, rows, columns)
    assert out.shape == (3, target[0].size, target[1].size)
    for index in range(3):
        assert area_mean(out[index], target[0]) == pytest.approx(area_mean(field[index], LAT_64x32), rel=1e-12)
    np.testing.assert_allclose(regrid_array(np.full((32, 64), 3.5), rows, columns), 3.5, rtol=1e-12)
    # the band weights are areas: they match the grid's own cell weights up to normalisation
    bands = latitude_weights(LAT_64x32, LAT_64x32).sum(axis=1)
    np.testing.assert_allclose(bands / bands.mean(), latitude_cell_weights(LAT_64x32), rtol=1e-6)


def test_the_same_grid_is_the_identity_and_a_block_average_is_exact():
    rows, columns = weights((LAT_64x32, LON_64x32), (LAT_64x32, LON_64x32))
    field = np.random.default_rng(1).normal(size=(32, 64))
    np.testing.assert_allclose(regrid_array(field, rows, columns), field, rtol=1e-12, atol=1e-12)
    # 1 degree -> 2 degrees with poles, a field constant in longitude within each 2-degree cell: the mean of
    # the two (or one and two halves at the seam) source columns, weighted by overlap
    source, target = regular_grid(1.0), regular_grid(2.0)
    rows, columns = weights(source, target)
    by_longitude = np.tile(np.arange(360.0), (181, 1))
    out = regrid_array(by_longitude, rows, columns)
    # target cell K spans [2K - 1, 2K + 1]: half of column 2K-1, all of 2K, half of 2K+1
    expected = (0.5 * np.roll(np.arange(360.0), 1)[::2] + np.arange(360.0)[::2] + 0.5 * np.roll(np.arange(360.0),
                                                                                                  -1)[::2]) / 2
    np.testing.assert_allclose(out[90], expected, rtol=1e-12)
    assert out[90, 0] == pytest.approx((0.5 * 359 + 0 + 0.5 * 1) / 2)       # the periodic seam at 0 degrees


def test_nan_is_left_out_and_a_mostly_invalid_cell_is_nan():
    rows, columns = weights((LAT_64x32, LON_64x32), regular_grid(22.5))
    field = np.full((32, 64), 290.0)
    field[:, :32] = np.nan                                           # "land" on the first half of the globe
    field[:, 32:] = 280.0
    out = regrid_array(field, rows, columns)
    assert np.all(np.isnan(out[:, :7])) and np.allclose(out[:, 9:15], 280.0)   # wholly land / wholly sea
    # the cell straddling the coast near 180 degrees ([168.75, 191.25]; sea from 177.1875) is 62.5 % sea, the one at
    # 0 degrees ([-11.25, 11.25]; sea up to 357.1875) 37.5 %: each kept only at a threshold below its fraction
    assert np.allclose(out[1:-1, 8], 280.0) and np.all(np.isnan(out[:, 0]))
    assert np.all(np.isnan(regrid_array(field, rows, columns, min_valid_fraction=0.7)[1:-1, 8]))
    assert np.allclose(regrid_array(field, rows, columns, min_valid_fraction=0.3)[1:-1, 0], 280.0)


def test_bad_resolutions_and_grids_are_one_line():
    with pytest.raises(UserInputError, match="divides 180"):
        regular_grid(0.7)
    with pytest.raises(UserInputError, match="evenly spaced"):
        longitude_weights(np.array([0.0, 10.0, 30.0]), np.arange(4) * 90.0)


def test_data_regrid_writes_a_wb2_store_with_the_regridded_values(run_cli, wb2_store, tmp_path):
    out = tmp_path / "era5_22p5deg.zarr"
    result = run_cli("data", "regrid", "--data", wb2_store, "--resolution", "22.5", "--out", out,
                     "--config", "configs/data/test.yaml", "--set", "data.levels=[500]")
    assert result.code == 0, result.err
    written, source = open_dataset(str(out)), open_dataset(str(wb2_store))
    assert written.sizes["latitude"] == 9 and written.sizes["longitude"] == 16
    assert list(written["level"].values) == [500] and written.sizes["time"] == source.sizes["time"]
    rows, columns = weights((source["latitude"].values, source["longitude"].values), regular_grid(22.5))
    expected = regrid_array(source["temperature"].sel(level=500).isel(time=3).values, rows, columns)
    np.testing.assert_allclose(written["temperature"].sel(level=500).isel(time=3).values, expected, rtol=1e-6)
    assert "conservative" in written.attrs["regridding"]
    # bad input: one line, exit 2, nothing written
    again = run_cli("data", "regrid", "--data", wb2_store, "--resolution", "0.7", "--out", tmp_path / "x.zarr")
    assert again.code == 2 and "divides 180" in again.err and not (tmp_path / "x.zarr").exists()
    missing = run_cli("data", "regrid", "--data", tmp_path / "none.zarr", "--out", tmp_path / "y.zarr")
    assert missing.code == 2 and len(missing.err.strip().splitlines()) == 1 and not (tmp_path / "y.zarr").exists()
