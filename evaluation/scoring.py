"""Score a forecast against the truth: pointwise statistics → regional means → metrics.

For every variable the fused kernel (`metrics.ensemble_statistics`) produces
pointwise statistics per (init, lead, [level,] latitude, longitude). Each is
averaged over a region with cell-area latitude weights, masking points where
the truth is NaN, then averaged over initialisation times with equal weight
per init, and only then turned into metrics (square roots, ratios). Rank
histograms are area-weighted frequencies of the truth's rank, averaged the
same way. The sums over inits and the count of inits are kept beside the
metrics (`InitSums`), so scores of disjoint sets of inits re-average exactly
(`combine_scores`). Everything is lazy: the returned Dataset is a dask graph computed by
`compute_scores` on the local or a distributed scheduler.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from evaluation import metrics
from evaluation.io import LEAD_DIM, align_truth, chunk_for_scoring, open_forecast
from gencast_rmmd.data.forecast_io import attribute_value
from gencast_rmmd.data.stores import describe_location, open_dataset
from gencast_rmmd.errors import UserInputError
from evaluation.regions import REGIONS, canonical_region, region_weights
from evaluation.scores_file import (COUNT_SUFFIX, RANK_HISTOGRAM_SUFFIX, SUM_SUFFIX, statistic_units,  # noqa: F401
                                     write_scores)


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


# Statistics whose sums over inits a scores file keeps (with the count), so that files re-average.
SUMMED_STATISTICS: tuple[str, ...] = tuple(name for name in metrics.STATISTICS if name != "truth_rank")


def sum_over_inits(regional: xr.DataArray, covered: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """(Σ over covered inits of `regional`, the number of covered inits), each init with weight 1.

    Inits where `covered` is false (the region had no valid truth) are left out;
    a NaN from a covered init (a NaN in the forecast) propagates.
    """
    return xr.where(covered, regional, 0.0).sum("time", skipna=False), covered.sum("time")


def mean_over_inits(regional: xr.DataArray, covered: xr.DataArray) -> xr.DataArray:
    """Mean over initialisation times (`time`), each init with weight 1, before any square root (`sum_over_inits`)."""
    total, count = sum_over_inits(regional, covered)
    return total / count.where(count > 0)


@dataclass(frozen=True)
class InitSums:
    """What scores are made of, summed over initialisation times: adding two gives the scores of both sets of inits.

    `statistics[name]` is Σ_t (regional mean of statistic `name` at init t) over
    the inits whose region had valid truth, `rank_histogram` the same sum of
    the rank frequencies, `count` the number of those inits; dims `(region,
    lead_time[, level])` (and `rank`).
    """

    statistics: dict[str, xr.DataArray]
    rank_histogram: xr.DataArray
    count: xr.DataArray
    members: int

    def __add__(self, other: "InitSums") -> "InitSums":
        if other.members != self.members:
            raise UserInputError(f"cannot re-average scores of {self.members}- and {other.members}-member "
                                 "ensembles: the fair CRPS, debiased RMSE and spread/skill ratio depend on M")
        return InitSums({name: value + other.statistics[name] for name, value in self.statistics.items()},
                        self.rank_histogram + other.rank_histogram, self.count + other.count, self.members)

    def scores(self) -> tuple[xr.DataArray, xr.DataArray]:
        """(metrics with dims `(metric, region, lead_time[, level])`, rank frequencies summing to 1 over `rank`)."""
        count = self.count.where(self.count > 0)
        finals = metrics.finalize_metrics({name: total / count for name, total in self.statistics.items()},
                                          self.members)
        scores = xr.concat([finals[name] for name in metrics.METRICS],
                           dim=xr.DataArray(list(metrics.METRICS), dims="metric", name="metric"))
        return scores.transpose("metric", "region", "lead_time", ...), self.rank_histogram / count


def init_sums(forecast: xr.DataArray, truth: xr.DataArray, regions: tuple[str, ...], seed: int = 0) -> InitSums:
    """The `InitSums` of one variable, lazily.

    `forecast` has dims `(time, prediction_timedelta, number, ...)`, `truth` the
    same without `number`. Each pointwise statistic (`metrics.ensemble_statistics`)
    is averaged over each region (`regional_mean`) and summed over inits.
    """
    members = forecast.sizes["number"]
    if forecast.chunks is not None:  # the kernel needs every member of a point in one chunk
        forecast = forecast.chunk({"number": -1})
    weights = region_weights(truth["latitude"], regions)
    valid = truth.notnull()
    covered = region_coverage(valid, weights) > 0
    statistics = metrics.ensemble_statistics(forecast, truth, "number", seed=seed)
    sums = {name: sum_over_inits(regional_mean(statistics[name], valid, weights), covered)[0]
            for name in SUMMED_STATISTICS}
    ranks = xr.DataArray(np.arange(members + 1), dims="rank", name="rank",
                         coords={"rank": np.arange(members + 1)})
    one_hot = (statistics["truth_rank"] == ranks).astype(np.float64)
    histogram, count = sum_over_inits(regional_mean(one_hot, valid, weights), covered)
    return InitSums({name: _as_lead_time(value.transpose("region", LEAD_DIM, ...)) for name, value in sums.items()},
                    _as_lead_time(histogram.transpose("region", LEAD_DIM, ..., "rank")),
                    _as_lead_time(count.transpose("region", LEAD_DIM, ...)), members)


def score_variable(forecast: xr.DataArray, truth: xr.DataArray, regions: tuple[str, ...],
                   seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    """Scores and rank histogram of one variable, lazily (`init_sums(...).scores()`).

    Returns `(scores, rank_histogram)`: scores with dims `(metric, region,
    lead_time[, level])` over `metrics.METRICS`; the rank histogram with dims
    `(region, lead_time[, level], rank)`, frequencies summing to 1 over `rank`
    (0..M).
    """
    return init_sums(forecast, truth, regions, seed).scores()


def _as_lead_time(array: xr.DataArray) -> xr.DataArray:
    array = array.rename({LEAD_DIM: "lead_time"})
    array["lead_time"].attrs.update({"long_name": "lead time"})
    return array


def score_dataset(forecast: xr.Dataset, truth: xr.Dataset, regions: tuple[str, ...] = tuple(REGIONS),
                  seed: int = 0) -> xr.Dataset:
    """Lazy scores of every forecast variable, in the in-memory layout of `evaluation.scores_file`.

    Per variable V: `V` (metrics, dims `(metric, region, lead_time[, level])`),
    `V_rank_histogram`, and the sums that re-average over other inits:
    `V_<statistic>_sum` for each of `SUMMED_STATISTICS` and `V_init_count`.
    `truth` is the aligned truth of `io.align_truth`. Attributes state the
    member and init counts, the formulas, the spread/skill factor and the regions.
    """
    regions = tuple(canonical_region(name) for name in regions)
    members = forecast.sizes["number"]
    data_vars = {}
    for name in truth.data_vars:
        sums = init_sums(forecast[name], truth[name], regions, seed=seed)
        data_vars.update(scores_variables(str(name), sums, forecast[name].attrs))
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


def scores_variables(name: str, sums: InitSums, source: Mapping[str, object]) -> dict[str, xr.DataArray]:
    """The in-memory scores variables of forecast variable `name` (see `score_dataset`) from its sums."""
    scores, histogram = sums.scores()
    units = str(source.get("units", ""))
    scores.attrs = {"forecast_variable": name, "long_name": f"scores of {source.get('long_name', name)}",
                    "units": units, "note": "units are the variable's for every metric but spread_skill_ratio (1)"}
    histogram.attrs = {"forecast_variable": name, "units": "1", "long_name": f"rank histogram of {name}",
                       "formula": metrics.FORMULAS["rank_histogram"]}
    variables = {name: scores, f"{name}{RANK_HISTOGRAM_SUFFIX}": histogram}
    for statistic, total in sums.statistics.items():
        variables[f"{name}_{statistic}{SUM_SUFFIX}"] = _own_task(total).drop_attrs(deep=False).assign_attrs(
            forecast_variable=name, statistic=statistic, units=statistic_units(statistic, units),
            long_name=f"sum over initialisation times of the regional mean {statistic.replace('_', ' ')} of {name}")
    variables[f"{name}{COUNT_SUFFIX}"] = _own_task(sums.count).drop_attrs(deep=False).assign_attrs(
        forecast_variable=name, units="1",
        long_name=f"number of initialisation times summed (those with valid truth in the region) for {name}")
    return variables


def _own_task(array: xr.DataArray) -> xr.DataArray:
    """`array` as its own dask task when lazy: a result that is also an input of another result of one
    `compute` is reported lost by `distributed` (dask 2026.8), so sums are copied out beside the metrics."""
    if array.chunks is None:
        return array
    return array.copy(data=array.data.map_blocks(np.copy, dtype=array.dtype))


def variable_sums(scores: xr.Dataset, name: str) -> InitSums:
    """The `InitSums` of forecast variable `name` stored in an in-memory scores Dataset."""
    missing = [key for key in (*(f"{name}_{statistic}{SUM_SUFFIX}" for statistic in SUMMED_STATISTICS),
                               f"{name}{COUNT_SUFFIX}") if key not in scores]
    if missing:
        raise UserInputError(f"the scores of {name} hold no sums over inits ({missing[0]} is missing; files "
                             "written before the sums were kept cannot be re-averaged): evaluate them again")
    histogram = scores[f"{name}{RANK_HISTOGRAM_SUFFIX}"] * scores[f"{name}{COUNT_SUFFIX}"]
    return InitSums({statistic: scores[f"{name}_{statistic}{SUM_SUFFIX}"] for statistic in SUMMED_STATISTICS},
                    histogram.fillna(0.0), scores[f"{name}{COUNT_SUFFIX}"], int(scores.attrs["member_count"]))


def combine_scores(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Scores of the union of the inits of `parts` (in-memory scores of disjoint inits), from their sums.

    Each metric is recomputed from the summed statistics and counts, so the
    result equals scoring all the inits at once. The parts must share members,
    variables, regions, leads and levels.
    """
    if not parts:
        raise UserInputError("no scores to combine")
    first = parts[0]
    names = [str(name) for name in first.data_vars if "metric" in first[name].dims]
    data_vars = {}
    for name in names:
        total = variable_sums(first, name)
        for part in parts[1:]:
            if name not in part:
                raise UserInputError(f"cannot combine scores: one file has no {name}")
            total = total + variable_sums(part, name)
        data_vars.update(scores_variables(name, total, first[name].attrs))
    combined = xr.Dataset(data_vars, attrs=dict(first.attrs))
    combined.attrs["init_count"] = int(sum(int(part.attrs["init_count"]) for part in parts))
    combined.attrs["first_init"] = min(str(part.attrs["first_init"]) for part in parts)
    combined.attrs["last_init"] = max(str(part.attrs["last_init"]) for part in parts)
    for coordinate in ("metric", "region"):
        combined[coordinate].attrs = dict(first[coordinate].attrs)
    return combined


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
        if isinstance(value, (str, int, float, np.number, np.bool_)) and not str(key).startswith("_"):
            result[f"{prefix}_{key}"] = attribute_value(value)
    return result


def evaluate_files(forecast_path: str, truth_url: str, out: str, *, member_dim: str | None = None,
                   regions: tuple[str, ...] = tuple(REGIONS), variables: list[str] | None = None,
                   scheduler_address: str | None = None, seed: int = 0, label: str | None = None,
                   progress: bool = True) -> xr.Dataset:
    """`gencast-rmmd evaluate`: open, align, score lazily, compute, write `out` atomically; return the scores.

    `out` is in the CF file layout of `scores_file`; the returned Dataset is
    the in-memory layout (`score_dataset`), what `scores_file.open_scores` reads back.

    The forecast is any WB2-layout NetCDF/zarr (`io.open_forecast`), the truth any
    store the data layer opens. The file gets provenance attributes for both
    (`forecast_*`, `truth_*`) and `label` (default: the forecast file's stem),
    which scorecards use as the forecast's name.
    """
    regions = tuple(canonical_region(name) for name in regions)
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
    check_scored(scores, forecast_path)
    write_scores(scores, out)
    return scores


def check_scored(scores: xr.Dataset, forecast_path: str) -> None:
    """Refuse scores that are NaN in every region at some lead (and level): nothing was scored there.

    That happens when the forecast (or the truth) is NaN at every point of that
    field, e.g. a forecast file from a rollout that turned NaN; written, it would
    reach scorecards as silent gaps.
    """
    for name in scores.data_vars:
        if "metric" not in scores[name].dims:
            continue
        unscored = scores[name].sel(metric="ensemble_mean_rmse").isnull().all("region")
        if bool(unscored.any()):
            first = {dim: unscored[dim].values[int(position[0])]
                     for dim, position in zip(unscored.dims, np.nonzero(unscored.values))}
            where = ", ".join(f"level {value}" if dim == "level"
                              else f"lead +{pd.Timedelta(value) / pd.Timedelta(hours=1):g} h"
                              for dim, value in first.items())
            raise UserInputError(
                f"{forecast_path}: {name} cannot be scored at {int(unscored.sum())} field(s), first {where}: the "
                "forecast (or the truth) is NaN at every point there; nothing was written. Check the forecast file")
