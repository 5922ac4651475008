"""GenCast's residual normalisation, and NaN filling, as pure per-channel maps.

With per-channel statistics from `gencast_rmmd.data.stats`:
- inputs (every frame) and static fields: x_n = (x - mean) / std;
- a target channel that is also an input: y_n = (y - x_last) / diffs_std, where
  x_last is the same channel in the most recent input frame (the model
  predicts the 12 h change, so sigma_data = 1 holds for y_n);
- a target-only channel (precipitation): y_n = (y - mean) / std.
NaNs (SST over land) are filled with the channel's training minimum before
normalising; `restore_nan` puts them back in outputs where the latest input
was NaN. Works on numpy and JAX arrays alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from gencast_rmmd.data.layout import Channel, ChannelLayout
from gencast_rmmd.errors import UserInputError


def _xp(array):
    """numpy for numpy arrays, jax.numpy for JAX arrays (and tracers)."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return np
    import jax.numpy as jnp
    return jnp


def _channel_stat(stats: xr.Dataset, channel: Channel, statistic: str) -> float:
    if channel.variable not in stats:
        raise UserInputError(f"statistics have no entry for {channel.variable}; recompute them with "
                             "`gencast-rmmd data stats` for this data config")
    field = stats[channel.variable].sel(statistic=statistic)
    if channel.level is not None:
        if "level" not in field.dims or channel.level not in field["level"].values:
            raise UserInputError(f"statistics have no level {channel.level} for {channel.variable}")
        field = field.sel(level=channel.level)
    return float(field.values)


def _safe_scale(values: np.ndarray) -> np.ndarray:
    """Replace zero or non-finite scales (a constant field) by 1."""
    values = np.asarray(values, dtype=np.float32)
    return np.where(np.isfinite(values) & (values > 0), values, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel normalisation constants for one `ChannelLayout`."""

    input_mean: np.ndarray          # [C_in]
    input_std: np.ndarray           # [C_in]
    input_fill: np.ndarray          # [C_in]  value for NaN (training minimum)
    target_center: np.ndarray       # [C_target]  mean for target-only channels, 0 for residual ones
    target_scale: np.ndarray        # [C_target]  diffs_std (residual) or std (target-only)
    target_fill: np.ndarray         # [C_target]
    target_input_index: np.ndarray  # [C_target]  channel in the last input frame, or -1
    static_mean: np.ndarray         # [C_static]
    static_std: np.ndarray          # [C_static]
    static_fill: np.ndarray         # [C_static]
    input_frames: int

    @classmethod
    def from_stats(cls, stats: xr.Dataset, layout: ChannelLayout) -> "Normalizer":
        """Build from a statistics Dataset (see `gencast_rmmd.data.stats`)."""
        def vector(channels, statistic):
            return np.array([_channel_stat(stats, channel, statistic) for channel in channels], np.float32)

        inputs, targets = layout.input_channels, layout.target_channels
        statics = [Channel(name) for name in layout.static]
        index = layout.target_in_inputs()
        residual = index >= 0
        return cls(
            input_mean=vector(inputs, "mean"),
            input_std=_safe_scale(vector(inputs, "std")),
            input_fill=vector(inputs, "minimum"),
            target_center=np.where(residual, 0.0, vector(targets, "mean")).astype(np.float32),
            target_scale=_safe_scale(np.where(residual, vector(targets, "diffs_std"), vector(targets, "std"))),
            target_fill=vector(targets, "minimum"),
            target_input_index=index,
            static_mean=vector(statics, "mean"),
            static_std=_safe_scale(vector(statics, "std")),
            static_fill=vector(statics, "minimum"),
            input_frames=layout.input_frames,
        )

    # -- helpers --------------------------------------------------------------------------------
    def _last_input_for_targets(self, last_input):
        """The latest input frame gathered into target channel order (0 where not an input)."""
        xp = _xp(last_input)
        index = np.maximum(self.target_input_index, 0)
        gathered = xp.take(last_input, index, axis=-1)
        return xp.where(self.target_input_index >= 0, gathered, 0.0)

    def last_frame(self, inputs):
        """The most recent input frame `[..., C_in]` of stacked inputs `[..., F * C_in]`."""
        n = self.input_mean.shape[0]
        return inputs[..., (self.input_frames - 1) * n:]

    def input_change_scale(self) -> np.ndarray:
        """The 12 h-change standard deviation (`diffs_std`) of every input channel [C_in]; 0 where not a target."""
        scale = np.zeros_like(self.input_mean)
        residual = self.target_input_index >= 0
        scale[self.target_input_index[residual]] = self.target_scale[residual]
        return scale

    @staticmethod
    def fill_nan(values, fill):
        """Replace NaN by the per-channel `fill` value."""
        xp = _xp(values)
        return xp.where(xp.isnan(values), fill, values)

    # -- maps -----------------------------------------------------------------------------------
    def normalize_inputs(self, inputs):
        """Stacked input frames `[..., F * C_in]` -> (x - mean) / std, NaN filled first."""
        xp = _xp(inputs)
        mean = xp.tile(self.input_mean, self.input_frames)
        std = xp.tile(self.input_std, self.input_frames)
        fill = xp.tile(self.input_fill, self.input_frames)
        return (self.fill_nan(inputs, fill) - mean) / std

    def normalize_static(self, static):
        """Static fields `[..., C_static]` -> (x - mean) / std."""
        return (self.fill_nan(static, self.static_fill) - self.static_mean) / self.static_std

    def normalize_targets(self, targets, last_input):
        """Targets `[..., C_target]` -> residual-normalised form, given the latest input `[..., C_in]`."""
        base = self._last_input_for_targets(self.fill_nan(last_input, self.input_fill))
        return (self.fill_nan(targets, self.target_fill) - base - self.target_center) / self.target_scale

    def denormalize_targets(self, normalized, last_input):
        """Inverse of `normalize_targets` (NaN-filled points come back as their fill value)."""
        base = self._last_input_for_targets(self.fill_nan(last_input, self.input_fill))
        return normalized * self.target_scale + self.target_center + base

    def restore_nan(self, outputs, last_input):
        """Put NaN back in target channels wherever the same channel of `last_input` is NaN."""
        xp = _xp(outputs)
        index = np.maximum(self.target_input_index, 0)
        was_nan = xp.isnan(xp.take(last_input, index, axis=-1)) & (self.target_input_index >= 0)
        return xp.where(was_nan, np.nan, outputs)

    def to_dict(self) -> dict:
        """JSON-friendly form (for checkpoints)."""
        return {key: (value.tolist() if isinstance(value, np.ndarray) else value)
                for key, value in self.__dict__.items()}

    @classmethod
    def from_dict(cls, payload: dict) -> "Normalizer":
        values = {key: (np.asarray(value, dtype=np.int64 if key == "target_input_index" else np.float32)
                        if isinstance(value, list) else value) for key, value in payload.items()}
        return cls(**values)
