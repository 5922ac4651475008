"""Normalisation statistics computed with dask over the training split.

For each variable (and level): `mean`, `std`, `diffs_std` (standard deviation of
the 12 h change x(t + 12 h) - x(t) over consecutive model steps) and `minimum`
(used to fill NaNs, e.g. SST over land, GenCast-style). Static fields get
`mean` and `std` over the grid. Means are plain (unweighted) averages over
time, latitude and longitude, as in GenCast's statistics.

Saved as one NetCDF: a data variable per WB2 variable with dims
`(statistic[, level])`, plus provenance attributes.
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.data.source import DataSource
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import write_netcdf_atomic

STATISTICS: tuple[str, ...] = ("mean", "std", "diffs_std", "minimum")
_SPATIAL = ("latitude", "longitude")


def compute_stats(source: DataSource, split: str = "train", progress: bool = False) -> xr.Dataset:
    """Compute normalisation statistics over `split` of `source` (lazy reads, one dask compute)."""
    start, end = source.time_range(split)
    data = source.dataset.sel(time=slice(start, end))
    if data.sizes["time"] < 2:
        raise UserInputError(f"the {split} split ({start} .. {end}) has fewer than 2 model steps; "
                             "statistics need more data")
    reduce_dims = ("time", *_SPATIAL)
    # 12 h differences only between consecutive model steps (a gap breaks the pair).
    delta = data["time"].diff("time")
    consecutive = delta == np.timedelta64(source.config.step_hours, "h")
    diffs = data.diff("time").where(consecutive)
    lazy = {
        "mean": data.mean(reduce_dims, skipna=True),
        "std": data.std(reduce_dims, skipna=True),
        "diffs_std": diffs.std(reduce_dims, skipna=True),
        "minimum": data.min(reduce_dims, skipna=True),
    }
    if progress:
        from dask.diagnostics import ProgressBar
        with ProgressBar(dt=1.0):
            (computed,) = dask.compute(lazy)
    else:
        (computed,) = dask.compute(lazy)
    result = xr.Dataset()
    for name in data.data_vars:
        result[name] = xr.concat([computed[stat][name] for stat in STATISTICS], dim="statistic")
    for name, field in source.static.data_vars.items():
        values = [field.mean(_SPATIAL), field.std(_SPATIAL), xr.DataArray(np.nan), field.min(_SPATIAL)]
        result[name] = xr.concat(values, dim="statistic")
    result = result.assign_coords(statistic=list(STATISTICS))
    result.attrs.update({
        "source": source.report.location,
        "split": split,
        "time_start": str(pd.Timestamp(start)),
        "time_end": str(pd.Timestamp(end)),
        "time_count": int(data.sizes["time"]),
        "step_hours": source.config.step_hours,
        "description": "mean, std, diffs_std (std of 12 h changes) and minimum over time, latitude, longitude",
    })
    return result


def save_stats(stats: xr.Dataset, path: str | os.PathLike) -> None:
    """Write statistics to NetCDF atomically."""
    write_netcdf_atomic(stats, path)


def load_stats(path: str | os.PathLike) -> xr.Dataset:
    """Read a statistics file written by `save_stats` (UserInputError if unreadable)."""
    if not os.path.isfile(path):
        raise UserInputError(f"statistics file {path} does not exist; create it with `gencast-rmmd data stats`")
    try:
        with xr.open_dataset(path) as opened:
            stats = opened.load()
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read statistics file {path}: {error}") from None
    if "statistic" not in stats.coords or set(STATISTICS) - set(stats["statistic"].values.tolist()):
        raise UserInputError(f"{path} is not a gencast-rmmd statistics file (no statistic coordinate)")
    return stats
