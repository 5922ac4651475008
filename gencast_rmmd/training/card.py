"""The model card every checkpoint carries under `meta["task"]`, typed, and the entries its writers share.

A teacher (`teacher.train`, `teacher.gencast_run`, `teacher.weights`) and a
student (`distill.run`) each write a self-describing record: model config,
channel layout, normaliser, grid with its noise spec, sampler, the run's
resolved config (its `data` and `loss` sections), provenance. `ModelCard`
reads one (`read_card`), checks it, and owns what every reader needs from it:
the data config (re-pointed with `--data`), the store opened with the grid
check, and the network rebuilt for its grid. `forecast.build.load_model` adds
the sampler and normaliser: a ready predictor.

Migration on read. Cards carry no version up to `CARD_VERSION` 1; fields
that older checkpoints lack get the meaning they had then: no `params_group`
is a teacher's `denoiser` group, no `grid.noise` is GenCast's noise for the
grid. A card from a newer schema is refused with what to do.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gencast_rmmd.config import DataConfig
from gencast_rmmd.data.grid import check_same_grid
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.diffusion.config import LossConfig
from gencast_rmmd.diffusion.model_space import ModelSpace
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.errors import UserInputError, validation_message
from gencast_rmmd.models.builder import network_for_grid
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.models.denoiser import DenoiserNetwork

CARD_VERSION = 1
DEFAULT_PARAMS_GROUP = "denoiser"      # a teacher's (and an imported GenCast's) parameter group


class GridSpec(BaseModel):
    """The grid the model was trained on (degrees, latitude ascending) and its diffusion noise spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latitude: tuple[float, ...]
    longitude: tuple[float, ...]
    noise: dict[str, Any] | None = None           # `SphericalNoise.spec`; None: GenCast's noise for the grid

    @cached_property
    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """(latitude, longitude) as float64 arrays."""
        return np.asarray(self.latitude, np.float64), np.asarray(self.longitude, np.float64)


class SamplerSpec(BaseModel):
    """The sampler: a name of `diffusion.registry.SAMPLER_BUILDERS`, its config, its denoiser calls per step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    config: dict[str, Any]
    nfe_per_step: int = Field(ge=1)


class ModelCard(BaseModel):
    """`meta["task"]` of a checkpoint, typed; provenance entries beyond these fields are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: int = CARD_VERSION
    kind: Literal["teacher", "student"]
    method: str | None = None                    # a student's distiller
    params_group: str = DEFAULT_PARAMS_GROUP
    config: dict[str, Any]                       # the run's resolved config: `data`, `loss`, ...
    model: dict[str, Any]
    layout: dict[str, Any]
    normalizer: dict[str, Any]
    grid: GridSpec
    sampler: SamplerSpec
    data_source: str | None = None

    @cached_property
    def network_config(self) -> ModelConfig:
        """The network's config (validated)."""
        return ModelConfig(**self.model)

    @cached_property
    def channel_layout(self) -> ChannelLayout:
        return ChannelLayout.from_dict(self.layout)

    @cached_property
    def normalization(self) -> Normalizer:
        return Normalizer.from_dict(self.normalizer)

    def data_config(self, data: str | None = None) -> DataConfig:
        """The data config the model was trained with, pointed at `data` when given."""
        config = dict(self.config["data"])
        if data is not None:
            config["path"] = data
        return DataConfig(**config)

    def open_data(self, data: str | None = None, what: str = "the checkpoint") -> DataSource:
        """The store (`data` or the card's), refused unless its grid is the card's (before anything compiles)."""
        source = DataSource.open(self.data_config(data))
        check_same_grid((source.latitude, source.longitude), self.grid.axes, source.report.location, what)
        return source

    def network(self) -> DenoiserNetwork:
        """The denoiser network on the card's grid."""
        latitude, longitude = self.grid.axes
        return network_for_grid(self.network_config, latitude, longitude, self.channel_layout.n_target_channels)

    def model_space(self) -> ModelSpace:
        """The card's model space: normaliser, layout, grid, diffusion noise and the teacher loss's norm."""
        latitude, longitude = self.grid.axes
        return ModelSpace(self.normalization, self.channel_layout, latitude, longitude,
                          SphericalNoise.from_spec(latitude, longitude, self.grid.noise),
                          LossConfig(**self.config.get("loss", {})))

    def params(self, groups: dict) -> Any:
        """The model's parameters out of a checkpoint's parameter groups."""
        return groups[self.params_group]


def read_card(meta: dict, path: str = "the checkpoint") -> ModelCard:
    """The typed card of a checkpoint's `meta` (migrated on read); `UserInputError` naming what is wrong."""
    payload = meta.get("task")
    if not isinstance(payload, dict) or "kind" not in payload:
        raise UserInputError(f"{path} carries no model card (meta.json has no task record); it was not written "
                             "by gencast-rmmd train, distill, weights install or import gencast")
    version = payload.get("version", CARD_VERSION)
    if not isinstance(version, int) or version > CARD_VERSION:
        raise UserInputError(f"{path}: model card version {version!r} is newer than this gencast-rmmd reads "
                             f"({CARD_VERSION}); upgrade gencast-rmmd")
    try:
        return ModelCard.model_validate(payload)
    except ValidationError as error:
        raise UserInputError(validation_message(f"{path}: model card", error)) from None


def checked_card(payload: dict) -> dict:
    """`payload` as written, after checking it is a card `read_card` accepts (a writer's bug is internal: exit 1)."""
    try:
        ModelCard.model_validate(payload)
    except ValidationError as error:
        raise ValueError(validation_message("the model card being written", error)) from None
    return payload


def sampler_payload(name: str, config: BaseModel, nfe_per_step: int) -> dict:
    """The card's sampler entry: its registered name (`diffusion.registry.SAMPLER_BUILDERS`), config, calls."""
    return {"name": name, "config": config.model_dump(mode="json"), "nfe_per_step": int(nfe_per_step)}

