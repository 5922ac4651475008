"""Channel layout: how named variables and levels map to model channels and back.

Inside `jit` the model sees plain arrays with channels last. The layout records
which (variable, level) each channel holds, so outputs can be turned back into
named fields (and then into xarray). It is plain data and serialises to JSON,
so checkpoints carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gencast_rmmd.config import DataConfig
from gencast_rmmd.data.variables import FORCING_NAMES


@dataclass(frozen=True)
class Channel:
    """One model channel: a variable at a level (None for single-level fields)."""

    variable: str
    level: int | None = None

    @property
    def label(self) -> str:
        return self.variable if self.level is None else f"{self.variable}@{self.level}"


def _channels(surface: tuple[str, ...], atmospheric: tuple[str, ...], levels: tuple[int, ...]) -> tuple[Channel, ...]:
    return (*(Channel(name) for name in surface),
            *(Channel(name, level) for name in atmospheric for level in levels))


@dataclass(frozen=True)
class ChannelLayout:
    """Channel order of every array in a `Batch`.

    - frame channels (one stored time): surface, then atmospheric x levels, then
      target-only variables; `inputs` hold the first `n_input_channels` of
      each of `input_frames` frames, oldest first;
    - targets hold all frame channels;
    - forcings hold `FORCING_NAMES`; static holds the static variables.
    """

    surface: tuple[str, ...]
    atmospheric: tuple[str, ...]
    target_only: tuple[str, ...]
    static: tuple[str, ...]
    levels: tuple[int, ...]
    input_frames: int
    forcings: tuple[str, ...] = FORCING_NAMES

    @classmethod
    def from_config(cls, config: DataConfig) -> "ChannelLayout":
        variables = config.variables
        return cls(surface=tuple(variables.surface), atmospheric=tuple(variables.atmospheric),
                   target_only=tuple(variables.target_only), static=tuple(variables.static),
                   levels=tuple(config.levels) if variables.atmospheric else (),
                   input_frames=config.input_frames)

    @property
    def input_channels(self) -> tuple[Channel, ...]:
        """Channels of one input frame (no target-only variables)."""
        return _channels(self.surface, self.atmospheric, self.levels)

    @property
    def target_channels(self) -> tuple[Channel, ...]:
        """Channels of a target frame: inputs' channels, then target-only ones."""
        return (*self.input_channels, *(Channel(name) for name in self.target_only))

    @property
    def n_input_channels(self) -> int:
        return len(self.input_channels)

    @property
    def n_target_channels(self) -> int:
        return len(self.target_channels)

    @property
    def time_varying(self) -> tuple[str, ...]:
        return (*self.surface, *self.atmospheric, *self.target_only)

    def target_in_inputs(self) -> np.ndarray:
        """For each target channel, the index of the same channel in an input frame, or -1."""
        index = {channel: position for position, channel in enumerate(self.input_channels)}
        return np.array([index.get(channel, -1) for channel in self.target_channels], dtype=np.int64)

    def split_targets(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """Split `[..., lat, lon, C_target]` into named fields; atmospheric ones get a level axis.

        Single-level fields come back as `[..., lat, lon]`, pressure-level ones as
        `[..., level, lat, lon]`.
        """
        array = np.asarray(array)
        fields: dict[str, np.ndarray] = {}
        position = 0
        for name in self.surface:
            fields[name] = array[..., position]
            position += 1
        for name in self.atmospheric:
            block = array[..., position:position + len(self.levels)]
            fields[name] = np.moveaxis(block, -1, -3)
            position += len(self.levels)
        for name in self.target_only:
            fields[name] = array[..., position]
            position += 1
        return fields

    def to_dict(self) -> dict:
        """JSON-friendly form (for checkpoints)."""
        return {"surface": list(self.surface), "atmospheric": list(self.atmospheric),
                "target_only": list(self.target_only), "static": list(self.static),
                "levels": list(self.levels), "input_frames": self.input_frames,
                "forcings": list(self.forcings)}

    @classmethod
    def from_dict(cls, payload: dict) -> "ChannelLayout":
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in payload.items()})
