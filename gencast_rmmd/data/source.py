"""A store opened for one data config: validated, selected, 12-hourly, still lazy.

`DataSource.open(config)` is the single way the rest of the product reads data:
it opens the store (any layout), checks it against the config, selects the
configured variables and levels, derives what can be derived (12 h
precipitation from 6 h), subsamples to the model step and keeps everything
lazy (dask) until `load_frames` is asked for particular times.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import xarray as xr

from gencast_rmmd.config import DataConfig, SplitName
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.schema import SchemaReport, check_dataset
from gencast_rmmd.data.stores import describe_location, open_dataset
from gencast_rmmd.data.windows import WindowIndex, build_windows, split_time_range, subsample_times
from gencast_rmmd.errors import UserInputError


def _derive(dataset: xr.Dataset, name: str, source: str) -> xr.DataArray:
    """Derive `name` from `source` (12 h accumulation = this 6 h + the previous 6 h)."""
    if (name, source) != ("total_precipitation_12hr", "total_precipitation_6hr"):
        raise ValueError(f"no derivation of {name} from {source}")
    previous = dataset[source].shift(time=1)
    contiguous = (dataset["time"] - dataset["time"].shift(time=1)) == np.timedelta64(6, "h")
    derived = (dataset[source] + previous).where(contiguous)
    derived.attrs = {**dataset[source].attrs, "long_name": "Total precipitation accumulated over 12 hours",
                     "comment": f"derived from {source} as x(t) + x(t - 6 h)"}
    return derived


def _select(raw: xr.Dataset, config: DataConfig, report: SchemaReport, keep: np.ndarray,
            derive: bool) -> xr.Dataset:
    """Configured variables and levels at the model time steps `keep` (derived ones only if `derive`)."""
    selected = xr.Dataset(coords={name: raw[name] for name in ("time", "latitude", "longitude")})
    for name in config.variables.time_varying:
        if name not in report.derived:
            selected[name] = raw[name]
        elif derive:
            selected[name] = _derive(raw, name, report.derived[name])
    if config.variables.atmospheric:
        selected = selected.sel(level=list(config.levels))
    return selected.isel(time=keep)


@dataclass
class DataSource:
    """A validated, selected, subsampled, lazy view of one store."""

    config: DataConfig
    dataset: xr.Dataset            # time-varying variables, model time axis, canonical dims
    static: xr.Dataset             # static variables (latitude, longitude), loaded
    report: SchemaReport
    layout: ChannelLayout
    direct: xr.Dataset             # stored (not derived) variables of `dataset`, read without dask

    @classmethod
    def open(cls, config: DataConfig) -> "DataSource":
        """Open, check and select `config.path` (raises UserInputError on bad input)."""
        raw = open_dataset(config.path)
        location = describe_location(config.path)
        report = check_dataset(raw, config, location)
        keep = subsample_times(pd.DatetimeIndex(raw["time"].values), config.step_hours)
        if keep.size == 0:
            raise UserInputError(f"{location}: no time is aligned to the {config.step_hours} h model step")
        variables = config.variables
        static = xr.Dataset({name: raw[name].isel(time=0) if "time" in raw[name].dims else raw[name]
                             for name in variables.static}).load()
        # The same selection without dask, for fast reads of particular frames.
        direct = _select(open_dataset(config.path, use_dask=False), config, report, keep, derive=False)
        return cls(config=config, dataset=_select(raw, config, report, keep, derive=True), static=static,
                   report=report, layout=ChannelLayout.from_config(config), direct=direct)

    @property
    def times(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.dataset["time"].values)

    @property
    def latitude(self) -> np.ndarray:
        return np.asarray(self.dataset["latitude"].values)

    @property
    def longitude(self) -> np.ndarray:
        return np.asarray(self.dataset["longitude"].values)

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(hours=self.config.step_hours)

    def time_range(self, split: SplitName) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Inclusive time range of a split (dates or fractions of the model time axis)."""
        return split_time_range(self.times, getattr(self.config.splits, split))

    def windows(self, split: SplitName, target_steps: int | None = None) -> WindowIndex:
        """Valid windows of a split; `target_steps` defaults to the config's."""
        return build_windows(self.times, self.step, self.config.input_frames,
                             target_steps or self.config.target_steps, self.time_range(split))

    def windows_at(self, init_times: list[pd.Timestamp] | pd.DatetimeIndex, target_steps: int) -> WindowIndex:
        """Windows at given initialisation times (any split); UserInputError if one is not available."""
        every = build_windows(self.times, self.step, self.config.input_frames, target_steps,
                              (self.times[0], self.times[-1]))
        valid = set(every.init_times)
        positions = []
        for init in pd.DatetimeIndex(init_times):
            if init not in valid:
                raise UserInputError(
                    f"init {init} has no complete window of {self.config.input_frames} input frames and "
                    f"{target_steps} target steps in {self.report.location} "
                    f"({self.times[0]} .. {self.times[-1]}, {self.config.step_hours}-hourly)")
            positions.append(self.times.get_loc(init))
        return WindowIndex(self.times, np.asarray(positions, dtype=np.int64), 0,
                           self.config.input_frames, target_steps)

    @cached_property
    def static_channels(self) -> np.ndarray:
        """Static fields as `[lat, lon, C_static]` float32 (NaN kept)."""
        if not self.layout.static:
            return np.zeros((len(self.latitude), len(self.longitude), 0), np.float32)
        return np.stack([self.static[name].transpose("latitude", "longitude").values
                         for name in self.layout.static], axis=-1).astype(np.float32)

    def load_frames(self, positions: np.ndarray) -> np.ndarray:
        """Read frames at time `positions` as `[n, lat, lon, C_frame]` float32 (target channel order)."""
        positions = np.asarray(positions, dtype=np.int64)
        unique, inverse = np.unique(positions, return_inverse=True)
        chunk = self.direct.isel(time=unique).load()
        if self.report.derived:
            chunk = chunk.merge(self.dataset[list(self.report.derived)].isel(time=unique).compute())
        return self._stack(chunk)[inverse]

    def _stack(self, chunk: xr.Dataset) -> np.ndarray:
        def values(name: str, *dims: str) -> np.ndarray:
            return chunk[name].transpose(*dims).values

        blocks = []
        for name in self.layout.surface:
            blocks.append(values(name, "time", "latitude", "longitude")[..., None])
        for name in self.layout.atmospheric:
            blocks.append(values(name, "time", "latitude", "longitude", "level"))
        for name in self.layout.target_only:
            blocks.append(values(name, "time", "latitude", "longitude")[..., None])
        return np.concatenate(blocks, axis=-1).astype(np.float32, copy=False)
