"""Score a forecast against the truth: pointwise statistics → regional means → metrics.

For every variable the fused kernel (`metrics.ensemble_statistics`) produces
pointwise statistics per (init, lead, [level,] latitude, longitude). Each is
averaged over a region with cell-area latitude weights, masking points where
the truth is NaN, then averaged over initialisation times with equal weight
per init, and only then turned into metrics (square roots, ratios). Rank
histograms are area-weighted frequencies of the truth's rank, averaged the
same way. Everything is lazy: the returned Dataset is a dask graph computed by
`compute_scores` on the local or a distributed scheduler.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import xarray as xr

from evaluation import metrics
from evaluation.io import LEAD_DIM, align_truth, chunk_for_scoring, open_forecast
from gencast_rmmd.data.stores import describe_location, open_dataset
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import write_netcdf_atomic
from evaluation.regions import REGIONS, region_weights

RANK_HISTOGRAM_SUFFIX = "_rank_histogram"


def regional_mean(field: xr.DataArray, valid: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    """Cell-area weighted mean of `field` over each region, where `valid` is true.

    mean_r = Σ_j w_rj Σ_i v_ij f_ij / Σ_j w_rj Σ_i v_ij (j latitude, i longitude,
    v the validity mask, w the region weights of `regions.region_weights`).
    Invalid points are excluded; a NaN at a valid point propagates (a broken
    forecast is not silently skipped). A region without valid points gives NaN.
    """
    summed = xr.where(valid, field, 0.0).sum("longitude", skipna=False)
    numerator = xr.dot(summed, weights, dim="latitude")
    denominator = region_coverage(valid, weights)
    return numerator / denominator.where(denominator > 0)


def region_coverage(valid: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    """Σ_j w_rj Σ_i v_ij: the weighted count of valid points per region (0: nothing to score)."""
    return xr.dot(valid.sum("longitude").astype(np.float64), weights, dim="latitude")


def mean_over_inits(regional: xr.DataArray, covered: xr.DataArray) -> xr.DataArray:
    """Mean over initialisation times (`time`), each init with weight 1, before any square root.

    Inits where `covered` is false (the region had no valid truth) are left out;
    a NaN from a covered init (a NaN in the forecast) propagates.
    """
    total = xr.where(covered, regional, 0.0).sum("time", skipna=False)
    count = covered.sum("time")
    return total / count.where(count > 0)


def score_variable(forecast: xr.DataArray, truth: xr.DataArray, regions: tuple[str, ...],
                   seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    """Scores and rank histogram of one variable, lazily.

    Returns `(scores, rank_histogram)`: scores with dims `(metric, region,
    lead_time[, level])` over `metrics.METRICS`; the rank histogram with dims
    `(region, lead_time[, level], rank)`, frequencies summing to 1 over `rank`
    (0..M). `forecast` has dims `(time, prediction_timedelta, number, ...)`,
    `truth` the same without `number`.
    """
    members = forecast.sizes["number"]
    if forecast.chunks is not None:  # the kernel needs every member of a point in one chunk
        forecast = forecast.chunk({"number": -1})
    weights = region_weights(truth["latitude"], regions)
    valid = truth.notnull()
    covered = region_coverage(valid, weights) > 0
    statistics = metrics.ensemble_statistics(forecast, truth, "number", seed=seed)
    means = {name: mean_over_inits(regional_mean(statistics[name], valid, weights), covered)
             for name in metrics.STATISTICS if name != "truth_rank"}
    finals = metrics.finalize_metrics(means, members)
    scores = xr.concat([finals[name] for name in metrics.METRICS],
                       dim=xr.DataArray(list(metrics.METRICS), dims="metric", name="metric"))
    ranks = xr.DataArray(np.arange(members + 1), dims="rank", name="rank",
                         coords={"rank": np.arange(members + 1)})
    one_hot = (statistics["truth_rank"] == ranks).astype(np.float64)
    histogram = mean_over_inits(regional_mean(one_hot, valid, weights), covered)
    scores = scores.transpose("metric", "region", LEAD_DIM, ...)
    return _as_lead_time(scores), _as_lead_time(histogram.transpose("region", LEAD_DIM, ..., "rank"))


def _as_lead_time(array: xr.DataArray) -> xr.DataArray:
    array = array.rename({LEAD_DIM: "lead_time"})
    array["lead_time"].attrs.update({"long_name": "lead time"})
    return array


def score_dataset(forecast: xr.Dataset, truth: xr.Dataset, regions: tuple[str, ...] = tuple(REGIONS),
                  seed: int = 0) -> xr.Dataset:
    """Lazy scores of every forecast variable (see `score_variable`), one data variable each.

    Rank histograms are stored as `<variable>_rank_histogram`. `truth` is the
    aligned truth of `io.align_truth`. Attributes state the member and init
    counts, the formulas, the spread/skill factor and the regions.
    """
    members = forecast.sizes["number"]
    data_vars = {}
    for name in truth.data_vars:
        scores, histogram = score_variable(forecast[name], truth[name], regions, seed=seed)
        source = forecast[name].attrs
        scores.attrs = {"forecast_variable": str(name), "long_name": f"scores of {source.get('long_name', name)}",
                        "units": str(source.get("units", "")),
                        "note": "units are the variable's for every metric but spread_skill_ratio (1)"}
        histogram.attrs = {"forecast_variable": str(name), "units": "1", "long_name": f"rank histogram of {name}",
                           "formula": metrics.FORMULAS["rank_histogram"]}
        data_vars[str(name)] = scores
        data_vars[f"{name}{RANK_HISTOGRAM_SUFFIX}"] = histogram
    dataset = xr.Dataset(data_vars)
    dataset["metric"].attrs["long_name"] = "verification metric"
    dataset["region"].attrs["definition"] = json.dumps(
        {name: {key: value for key, value in vars(band).items() if value is not None} for name, band in
         ((region, REGIONS[region]) for region in regions)})
    dataset.attrs.update({
        "title": "gencast-rmmd forecast scores",
        "member_count": members,
        "init_count": forecast.sizes["time"],
        "first_init": str(np.datetime_as_string(forecast["time"].values[0], unit="m")),
        "last_init": str(np.datetime_as_string(forecast["time"].values[-1], unit="m")),
        "spread_skill_ratio_factor": f"sqrt((M+1)/M) = {np.sqrt((members + 1) / members):.6f}",
        "rank_tie_breaking_seed": seed,
        "formulas": json.dumps(metrics.FORMULAS),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return dataset


def compute_scores(lazy: xr.Dataset, scheduler_address: str | None = None, progress: bool = True) -> xr.Dataset:
    """Compute a lazy scores Dataset, locally (threads) or on a `dask.distributed` cluster.

    With `scheduler_address` the graph is sent to that scheduler (workers must
    see the same forecast and truth paths); otherwise dask's threaded scheduler
    runs it in this process. A progress bar goes to stderr when `progress`.
    """
    if scheduler_address:
        from distributed import Client, progress as distributed_progress

        with Client(scheduler_address) as client:
            future = client.compute(lazy)
            if progress:
                distributed_progress(future)
                print(file=sys.stderr)
            return future.result()
    from dask.diagnostics import ProgressBar

    if not progress:
        return lazy.compute(scheduler="threads")
    with ProgressBar(minimum=1.0, out=sys.stderr):
        return lazy.compute(scheduler="threads")


def provenance_attributes(prefix: str, location: str, attrs: Mapping[str, object]) -> dict[str, object]:
    """`{prefix}_location` plus the source's string/number attributes as `{prefix}_<key>`."""
    result: dict[str, object] = {f"{prefix}_location": location}
    for key, value in attrs.items():
        if isinstance(value, (str, int, float, np.integer, np.floating)) and not str(key).startswith("_"):
            result[f"{prefix}_{key}"] = value
    return result


def evaluate_files(forecast_path: str, truth_url: str, out: str, *, member_dim: str | None = None,
                   regions: tuple[str, ...] = tuple(REGIONS), variables: list[str] | None = None,
                   scheduler_address: str | None = None, seed: int = 0, label: str | None = None,
                   progress: bool = True) -> xr.Dataset:
    """`gencast-rmmd evaluate`: open, align, score lazily, compute, write `out` atomically; return the scores.

    The forecast is any WB2-layout NetCDF/zarr (`io.open_forecast`), the truth any
    store the data layer opens. The file gets provenance attributes for both
    (`forecast_*`, `truth_*`) and `label` (default: the forecast file's stem),
    which scorecards use as the forecast's name.
    """
    unknown = [name for name in regions if name not in REGIONS]
    if unknown:
        raise UserInputError(f"unknown region(s) {', '.join(unknown)}; choose from {', '.join(REGIONS)}")
    forecast = open_forecast(forecast_path, member_dim)
    forecast_attrs = dict(forecast.attrs)
    if variables:
        absent = [name for name in variables if name not in forecast.data_vars]
        if absent:
            raise UserInputError(f"the forecast has no variable(s) {', '.join(absent)}; it has "
                                 f"{', '.join(map(str, forecast.data_vars))}")
        forecast = forecast[variables]
    truth_store = open_dataset(truth_url)
    truth, missing = align_truth(forecast, truth_store)
    if missing:
        print(f"warning: the truth has no {', '.join(missing)}; not scored", file=sys.stderr)
    forecast, truth = chunk_for_scoring(forecast[list(truth.data_vars)], truth)
    lazy = score_dataset(forecast, truth, regions, seed=seed)
    location = forecast_path if "://" in forecast_path else str(Path(forecast_path).resolve())
    lazy.attrs.update(provenance_attributes("forecast", location, forecast_attrs))
    lazy.attrs.update(provenance_attributes("truth", str(describe_location(truth_url)), truth_store.attrs))
    lazy.attrs.update({"label": label or Path(forecast_path.rstrip("/")).stem,
                       "variables_not_in_truth": ", ".join(missing)})
    scores = compute_scores(lazy, scheduler_address, progress)
    write_netcdf_atomic(scores, out)
    return scores
