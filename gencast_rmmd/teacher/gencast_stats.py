"""graphcast's four GenCast statistics files as our statistics Dataset.

graphcast publishes `mean_by_level.nc`, `stddev_by_level.nc`, `diffs_stddev_by_level.nc`
and `min_by_level.nc` (gs://dm_graphcast/gencast/stats/), one data variable per field,
by level where the field has levels. They map one to one onto our statistics (`mean`,
`std`, `diffs_std`, `minimum`: `gencast_rmmd.data.stats.STATISTICS`); our `diffs_std`
exists only for fields that are both inputs and targets, so it is NaN for the others.
"""

from __future__ import annotations

import io
import os

import numpy as np
import xarray as xr

from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.stats import STATISTICS
from gencast_rmmd.data.stores import join_location, open_file
from gencast_rmmd.errors import UserInputError

STATS_FILES = {"mean": "mean_by_level.nc", "std": "stddev_by_level.nc", "diffs_std": "diffs_stddev_by_level.nc",
               "minimum": "min_by_level.nc"}
PUBLISHED_STATS = "gs://dm_graphcast/gencast/stats/"


def stats_locations(directory: str | os.PathLike) -> dict[str, str]:
    """Statistic -> the location of its file in `directory` (a local folder or a gs:// prefix)."""
    return {statistic: join_location(str(directory), name) for statistic, name in STATS_FILES.items()}


def _read_file(location: str) -> xr.Dataset | None:
    """One statistics file, loaded (None when it does not exist)."""
    try:
        with open_file(location) as handle:
            content = handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as error:
        raise UserInputError(f"cannot read {location}: {error}") from None
    try:
        with xr.open_dataset(io.BytesIO(content)) as opened:
            return opened.load()
    except (OSError, ValueError, TypeError):
        raise UserInputError(f"{location} is not a NetCDF statistics file; download it again from "
                             f"{PUBLISHED_STATS}") from None


def read_statistics(directory: str | os.PathLike, layout: ChannelLayout, forcings: list[str]) -> xr.Dataset:
    """graphcast's statistics in `directory` as ours (`statistic` x [level]) for the fields of `layout`
    and the task's `forcings` (which graphcast normalises and we fold into the first layer)."""
    locations = stats_locations(directory)
    files = {statistic: _read_file(location) for statistic, location in locations.items()}
    missing = [STATS_FILES[statistic] for statistic, content in files.items() if content is None]
    if missing:
        raise UserInputError(f"{directory} lacks GenCast's statistics file(s) {', '.join(missing)}; download them "
                             f"from {PUBLISHED_STATS}")
    residual = set(layout.surface) | set(layout.atmospheric)
    needs = {name: ("mean", "std", "diffs_std" if name in residual else None, "minimum")
             for name in (*layout.time_varying, *layout.static, *forcings)}
    result = xr.Dataset()
    for name, statistics in needs.items():
        fields = []
        for statistic in STATISTICS:
            if statistic in statistics:
                if name not in files[statistic]:
                    raise UserInputError(f"{locations[statistic]} has no {name}, which the GenCast task needs; "
                                         "use the statistics files published with the checkpoint")
                field = files[statistic][name].astype(np.float64)
            else:
                field = xr.full_like(files["mean"][name], np.nan, dtype=np.float64)
            if "level" in field.dims:
                absent = sorted(set(layout.levels) - {int(level) for level in field["level"].values})
                if absent:
                    raise UserInputError(f"{locations[statistic]}: {name} has no level(s) "
                                         f"{', '.join(map(str, absent))}")
                field = field.sel(level=list(layout.levels))
            fields.append(field.reset_coords(drop=True))
        result[name] = xr.concat(fields, dim="statistic")
    return result.assign_coords(statistic=list(STATISTICS))
