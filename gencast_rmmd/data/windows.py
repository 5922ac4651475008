"""Training windows: which initialisation times have every frame they need.

A window at initialisation t needs input frames t - step*(F-1) .. t and targets
t + step*k for k = 1..K (F = `input_frames`, K = `target_steps`, step = 12 h).
A window belongs to a split when all its frames lie inside the split's time
range, so train and validation never share a frame. Windows that would need a
missing time (a gap in the store) are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gencast_rmmd.config import SplitRange
from gencast_rmmd.errors import UserInputError


def subsample_times(times: pd.DatetimeIndex, step_hours: int) -> np.ndarray:
    """Positions of the times aligned to `step_hours` after midnight (e.g. 00 and 12 UTC)."""
    since_midnight = times - times.normalize()
    step = pd.Timedelta(hours=step_hours)
    return np.nonzero((since_midnight % step) == pd.Timedelta(0))[0]


def split_time_range(times: pd.DatetimeIndex, split: SplitRange) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The inclusive time range of a split on a time axis.

    Date ranges are taken as given (`end` as a date covers that whole day);
    fractions `[lo, hi]` select positions `floor(lo*N) .. floor(hi*N)-1` of `times`.
    """
    if split.fraction is not None:
        low, high = split.fraction
        first, stop = int(np.floor(low * len(times))), int(np.floor(high * len(times)))
        if stop <= first:
            raise UserInputError(
                f"split fraction {list(split.fraction)} selects no time of a {len(times)}-step axis")
        return times[first], times[stop - 1]
    start = pd.Timestamp(split.start) if split.start else times[0]
    end = pd.Timestamp(split.end) if split.end else times[-1]
    if split.end and end == end.normalize() and len(str(split.end)) <= 10:
        end = end + pd.Timedelta(days=1) - pd.Timedelta(seconds=1)
    return start, end


@dataclass(frozen=True)
class WindowIndex:
    """Valid windows of one split, as positions into the (subsampled) time axis."""

    times: pd.DatetimeIndex         # the model time axis (12-hourly)
    init_positions: np.ndarray      # positions of valid initialisation times, ascending
    skipped_for_gaps: int           # windows inside the split that a gap made invalid
    input_frames: int
    target_steps: int

    @property
    def init_times(self) -> pd.DatetimeIndex:
        return self.times[self.init_positions]

    def __len__(self) -> int:
        return len(self.init_positions)

    def frame_offsets(self) -> np.ndarray:
        """Offsets of every frame of a window relative to its initialisation position."""
        return np.arange(-(self.input_frames - 1), self.target_steps + 1)

    def evenly_spaced(self, count: int) -> pd.DatetimeIndex:
        """`count` init times at evenly spaced positions among the windows, the first and the last included.

        The held-out inits of the measurement scripts (benchmarks/): spread over the whole split, every
        window complete inside it. UserInputError when the split has fewer than `count` windows.
        """
        if count > len(self):
            raise UserInputError(f"the split has only {len(self)} init(s) with {self.target_steps} target steps "
                                 f"and {self.input_frames} input frames inside it; {count} were asked for")
        return self.init_times[np.linspace(0, len(self) - 1, count).round().astype(int)]


def build_windows(times: pd.DatetimeIndex, step: pd.Timedelta, input_frames: int, target_steps: int,
                  time_range: tuple[pd.Timestamp, pd.Timestamp]) -> WindowIndex:
    """Find every initialisation whose whole window lies in `time_range` with no missing frame."""
    offsets = np.arange(-(input_frames - 1), target_steps + 1)
    start, end = time_range
    values = times.values
    first_frame = values + offsets[0] * step.to_timedelta64()
    last_frame = values + offsets[-1] * step.to_timedelta64()
    inside = (first_frame >= start.to_datetime64()) & (last_frame <= end.to_datetime64())
    candidates = np.nonzero(inside)[0]
    complete = np.ones(candidates.shape, dtype=bool)
    for offset in offsets:
        positions = candidates + offset
        in_axis = (positions >= 0) & (positions < len(values))
        clipped = np.clip(positions, 0, len(values) - 1)
        complete &= in_axis & (values[clipped] == values[candidates] + offset * step.to_timedelta64())
    return WindowIndex(
        times=times,
        init_positions=candidates[complete],
        skipped_for_gaps=int((~complete).sum()),
        input_frames=input_frames,
        target_steps=target_steps,
    )
