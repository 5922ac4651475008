"""The scores file: CF-1.8 on disk, one variable per metric; a `metric` dim in memory.

In memory (`scoring.score_dataset`, `open_scores`), per forecast variable V:
`V` with dims `(metric, region, lead_time[, level])`, `V_rank_histogram`
(`..., rank`), the sums over initialisation times `V_<statistic>_sum` and the
count `V_init_count` that re-average over other inits (`scoring.combine_scores`).

On disk (`write_scores`) each metric is its own variable `V_<metric>`, because
CF gives one `units` per variable: RMSE, CRPS, spread and bias in V's units,
`spread_skill_ratio` "1", the sums of squared errors and variances in V's
units squared. Regions are labelled by a fixed-width character auxiliary
coordinate `region_name(region, strlen)` referenced from every variable's
`coordinates` (CF §6.1 string labels: both CF checkers accept it, where a
variable-length string coordinate breaks them); `lead_time` is the
`forecast_period` in int32 hours. `open_scores` reads both this layout and the
one written before it (a `metric` dim, underscore region names), and gives
region names as WeatherBench2 spells them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import xarray as xr

from evaluation import metrics
from evaluation.regions import canonical_region
from gencast_rmmd.data.forecast_io import CONVENTIONS, COORDINATE_ATTRIBUTES
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import write_netcdf_atomic

RANK_HISTOGRAM_SUFFIX = "_rank_histogram"
SUM_SUFFIX = "_sum"
COUNT_SUFFIX = "_init_count"
# Metrics without units whatever the variable's (the others carry the variable's units).
DIMENSIONLESS_METRICS: tuple[str, ...] = ("spread_skill_ratio",)
# Statistics in the variable's units squared (the other summed statistics are in its units).
SQUARED_STATISTICS: tuple[str, ...] = ("ensemble_mean_squared_error", "ensemble_variance")
REGION_LABEL = "region_name"
_UNIT_TERM = re.compile(r"^([A-Za-z_]+)(-?\d+)?$")


def squared_units(units: str) -> str:
    """UDUNITS units of a squared quantity: "m s-1" -> "m2 s-2", "K" -> "K2", "1" -> "1".

    Each space-separated term's exponent is doubled; a string that is not a
    product of such terms is parenthesised ("(degC)^2" style: "(x)2").
    """
    terms = units.split()
    if not terms or units.strip() == "1":
        return units
    doubled = []
    for term in terms:
        match = _UNIT_TERM.match(term)
        if match is None:
            return f"({units})2"
        doubled.append(f"{match.group(1)}{2 * int(match.group(2) or 1)}")
    return " ".join(doubled)


def metric_units(metric: str, units: str) -> str:
    """Units of `metric` of a variable in `units`."""
    return "1" if metric in DIMENSIONLESS_METRICS else units


def statistic_units(statistic: str, units: str) -> str:
    """Units of the sum over inits of `statistic` of a variable in `units`."""
    return squared_units(units) if statistic in SQUARED_STATISTICS else units


def _metric_variables(scores: xr.Dataset) -> list[str]:
    return [str(name) for name, array in scores.data_vars.items() if "metric" in array.dims]


def to_file_layout(scores: xr.Dataset) -> xr.Dataset:
    """The CF file layout of in-memory scores (see the module docstring), with encodings set."""
    variables = {}
    for name, array in scores.data_vars.items():
        name = str(name)
        if "metric" not in array.dims:
            variables[name] = array
            continue
        units = str(array.attrs.get("units", ""))
        for metric in array["metric"].values.astype(str):
            variables[f"{name}_{metric}"] = array.sel(metric=metric, drop=True).assign_attrs({
                "long_name": f"{metric.replace('_', ' ')} of {array.attrs.get('long_name', name)}",
                "units": metric_units(metric, units), "forecast_variable": name, "metric": str(metric),
                "formula": metrics.FORMULAS.get(metric, "")})
    dataset = xr.Dataset(variables)
    if "metric" in dataset.coords:
        dataset = dataset.drop_vars("metric")
    region_attrs = dict(scores["region"].attrs)
    labels = scores["region"].values.astype(str)
    dataset = dataset.drop_vars("region").assign_coords({REGION_LABEL: ("region", labels, {
        **region_attrs, "long_name": "region (WeatherBench2 name)"})})
    for name, variable in dataset.data_vars.items():
        variable.attrs = {key: value for key, value in variable.attrs.items() if key != "coordinates"}
        variable.attrs["coordinates"] = REGION_LABEL
        variable.encoding = {"dtype": "int32"} if name.endswith(COUNT_SUFFIX) else {"dtype": "float64"}
    dataset["lead_time"].attrs = dict(COORDINATE_ATTRIBUTES["prediction_timedelta"])
    dataset["lead_time"].encoding = {"units": "hours", "dtype": "int32", "_FillValue": None}
    if "level" in dataset.coords:
        dataset["level"].attrs = dict(COORDINATE_ATTRIBUTES["level"])
        dataset["level"].encoding = {"dtype": "int32", "_FillValue": None}
    if "rank" in dataset.coords:
        dataset["rank"].attrs = {"long_name": "rank of the truth among the ensemble members", "units": "1"}
        dataset["rank"].encoding = {"dtype": "int32", "_FillValue": None}
    dataset[REGION_LABEL].encoding = {"dtype": "S1"}
    dataset.attrs = {"Conventions": CONVENTIONS, **{key: value for key, value in scores.attrs.items()
                                                    if key != "Conventions"}}
    dataset.attrs.setdefault("title", "gencast-rmmd forecast scores")
    dataset.attrs.setdefault("history", f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} written by "
                                        "gencast-rmmd evaluate")
    dataset.attrs["metrics"] = " ".join(metrics.METRICS)
    return dataset


def from_file_layout(dataset: xr.Dataset) -> xr.Dataset:
    """In-memory scores from a scores file of either layout (region names as WeatherBench2 spells them)."""
    if REGION_LABEL in dataset.coords:
        labels = dataset[REGION_LABEL].values.astype(str)
        dataset = dataset.drop_vars(REGION_LABEL).assign_coords(
            region=("region", labels, {key: value for key, value in dataset[REGION_LABEL].attrs.items()
                                       if key != "long_name"}))
    if "region" in dataset.coords:
        dataset = dataset.assign_coords(region=[canonical_region(str(name)) for name in dataset["region"].values])
    if _metric_variables(dataset):          # the layout before one variable per metric
        return dataset
    order = {metric: position for position, metric in enumerate(metrics.METRICS)}
    grouped: dict[str, list[str]] = {}
    for name, array in dataset.data_vars.items():
        if "metric" in array.attrs and "forecast_variable" in array.attrs:
            grouped.setdefault(str(array.attrs["forecast_variable"]), []).append(str(name))
    variables = {str(name): array for name, array in dataset.data_vars.items()
                 if not any(str(name) in members for members in grouped.values())}
    for variable, names in grouped.items():
        names.sort(key=lambda name: order.get(dataset[name].attrs["metric"], len(order)))
        present = [str(dataset[name].attrs["metric"]) for name in names]
        stacked = xr.concat([dataset[name] for name in names],
                            dim=xr.DataArray(present, dims="metric", name="metric"))
        dimensional = [name for name in names if dataset[name].attrs["metric"] not in DIMENSIONLESS_METRICS]
        first = dataset[(dimensional or names)[0]]
        long_name = str(first.attrs.get("long_name", variable)).split(" of ", 1)[-1]
        stacked.attrs = {"forecast_variable": variable, "long_name": long_name,
                         "units": str(first.attrs.get("units", "")),
                         "note": "units are the variable's for every metric but spread_skill_ratio (1)"}
        variables[variable] = stacked
    result = xr.Dataset(variables, attrs={key: value for key, value in dataset.attrs.items() if key != "metrics"})
    if "metric" in result.coords:   # absent in a file with no scores: `scorecard.load_scores` says so
        result["metric"].attrs["long_name"] = "verification metric"
    return result


def write_scores(scores: xr.Dataset, path: str | os.PathLike) -> None:
    """Write in-memory scores to `path` in the CF file layout, atomically (NetCDF-4)."""
    write_netcdf_atomic(to_file_layout(scores), path)


def open_scores(path: str | os.PathLike) -> xr.Dataset:
    """Read a scores file (either layout) into memory, in the in-memory layout.

    Raises `UserInputError` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no scores file at {path}; write one with `gencast-rmmd evaluate`")
    try:
        with xr.open_dataset(path, decode_timedelta=True) as opened:
            dataset = opened.load()
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read scores file {path} ({type(error).__name__}: {error})") from None
    return from_file_layout(dataset)
