"""The fast CRPS kernel (members sorted block by block, in their own dtype) equals the pairwise definitions.

The reference is the O(M²) double sum in float64 on the same values. The data
cross every path of the kernel: float32 and float64 members, non-negative
float32 (sorted as int32) and values of both signs, M = 1, 2, 3 and 50,
exact ties (between members, with the truth, +0.0 against −0.0), both signs,
the member axis between other axes (a strided view), more points than one
block, dask chunks of uneven sizes (the member axis split too), a truth that is
not chunked, and NaN in a member or the truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from crps_oracle import pairwise_parts

from evaluation import metrics

DIMS = ("time", "prediction_timedelta", "number", "level", "latitude", "longitude")
# 2 levels x 9 latitudes x 64 longitudes = 1152 points per (init, lead): more than one block, and a partial one.
SHAPE = {"time": 2, "prediction_timedelta": 2, "level": 2, "latitude": 9, "longitude": 64}


def _ensemble(members: int, dtype, seed: int = 0, non_negative: bool = False) -> tuple[xr.DataArray, xr.DataArray]:
    """Members and truth around ±5 with a third of the values on a coarse grid: many exact ties and zeros.

    `non_negative`: their absolute values (no sign bit anywhere, like precipitation).
    """
    rng = np.random.default_rng(seed)
    shape = (SHAPE["time"], SHAPE["prediction_timedelta"], members, *list(SHAPE.values())[2:])
    values = rng.normal(size=(shape[0], shape[1], members + 1, *shape[3:])) * 5.0
    coarse = rng.random(values.shape) < 1 / 3
    values[coarse] = np.round(values[coarse] / 4.0)  # integers around 0, +0.0 and −0.0 among them
    values = (np.abs(values) if non_negative else values).astype(dtype)
    forecast = xr.DataArray(values[:, :, 1:], dims=DIMS)
    truth = xr.DataArray(values[:, :, 0], dims=DIMS[:2] + DIMS[3:])
    return forecast, truth


def _members_last(forecast: xr.DataArray, truth: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    return (forecast.transpose(*truth.dims, "number").values.astype(np.float64), truth.values.astype(np.float64))


def _layouts(forecast: xr.DataArray, truth: xr.DataArray):
    """The same data in memory, in uneven dask chunks (members split), and chunked with an in-memory truth."""
    yield "in memory", forecast, truth
    uneven = {"time": 1, "level": 1, "latitude": 4, "longitude": 40, "number": max(forecast.sizes["number"] // 2, 1)}
    yield "dask", forecast.chunk(uneven), truth.chunk({dim: size for dim, size in uneven.items() if dim != "number"})
    yield "dask forecast, numpy truth", forecast.chunk({"prediction_timedelta": 1}), truth


@pytest.mark.parametrize("dtype,non_negative", [(np.float32, False), (np.float32, True), (np.float64, False)])
@pytest.mark.parametrize("members", [2, 3, 50])
def test_fair_crps_equals_the_pairwise_double_sum(members, dtype, non_negative):
    forecast, truth = _ensemble(members, dtype, seed=members, non_negative=non_negative)
    skill, pair_sum = pairwise_parts(*_members_last(forecast, truth))
    fair = skill - pair_sum / (2 * members * (members - 1))
    ecdf = skill - pair_sum / (2 * members**2)
    values, observed = _members_last(forecast, truth)
    assert (values == observed[..., None]).any() and np.sum(values == 0) > 100  # ties with the truth, zeros
    for layout, layout_forecast, layout_truth in _layouts(forecast, truth):
        result = metrics.fair_crps(layout_forecast, layout_truth)
        assert result.dims == truth.dims, layout
        np.testing.assert_allclose(result.values, fair, rtol=1e-12, atol=1e-12, err_msg=layout)
        np.testing.assert_allclose(metrics.fair_crps_skill(layout_forecast, layout_truth).values, skill,
                                   rtol=1e-12, atol=1e-12, err_msg=layout)
        np.testing.assert_allclose(metrics.fair_crps_spread(layout_forecast).values,
                                   pair_sum / (members * (members - 1)), rtol=1e-12, atol=1e-12, err_msg=layout)
        np.testing.assert_allclose(metrics.biased_crps(layout_forecast, layout_truth).values, ecdf,
                                   rtol=1e-12, atol=1e-12, err_msg=layout)


def test_one_member_is_the_absolute_error():
    forecast, truth = _ensemble(1, np.float32)
    expected = np.abs(forecast.isel(number=0).values.astype(np.float64) - truth.values)
    for layout, layout_forecast, layout_truth in _layouts(forecast, truth):
        np.testing.assert_array_equal(metrics.fair_crps(layout_forecast, layout_truth).values, expected, layout)


@pytest.mark.parametrize("members", [2, 50])
def test_fused_statistics_equal_their_definitions(members):
    forecast, truth = _ensemble(members, np.float32, seed=10 + members)
    values, observed = _members_last(forecast, truth)
    skill, pair_sum = pairwise_parts(values, observed)
    errors = values - observed[..., None]
    below, ties = (errors < 0).sum(-1), (errors == 0).sum(-1)
    assert (ties > 0).any()
    expected = {"absolute_error": skill, "pair_spread": pair_sum / (members * (members - 1)),
                "ensemble_mean_squared_error": errors.mean(-1) ** 2, "ensemble_variance": values.var(-1, ddof=1),
                "ensemble_mean_error": errors.mean(-1)}
    for layout, layout_forecast, layout_truth in _layouts(forecast, truth):
        statistics = metrics.ensemble_statistics(layout_forecast, layout_truth, seed=3).compute()
        for name, value in expected.items():
            np.testing.assert_allclose(statistics[name].values, value, rtol=1e-10, atol=1e-12, err_msg=layout)
        rank = statistics["truth_rank"].values
        assert ((rank >= below) & (rank <= below + ties)).all(), layout
        np.testing.assert_array_equal(rank[ties == 0], below[ties == 0], layout)


@pytest.mark.parametrize("non_negative", [False, True])
def test_nan_spoils_only_its_own_point(non_negative):
    forecast, truth = _ensemble(5, np.float32, non_negative=non_negative)
    forecast[0, 0, 3, 1, 2, 5] = np.nan
    truth[1, 1, 0, 4, 7] = np.nan
    spoiled = np.zeros(truth.shape, dtype=bool)
    spoiled[0, 0, 1, 2, 5] = spoiled[1, 1, 0, 4, 7] = True
    for layout, layout_forecast, layout_truth in _layouts(forecast, truth):
        result = metrics.fair_crps(layout_forecast, layout_truth).values
        np.testing.assert_array_equal(np.isnan(result), spoiled, layout)
        statistics = metrics.ensemble_statistics(layout_forecast, layout_truth).compute()
        assert np.isnan(statistics["absolute_error"].values[spoiled]).all(), layout
        assert not np.isnan(statistics["pair_spread"].values[~spoiled]).any(), layout
