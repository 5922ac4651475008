"""Rebuild a model from its checkpoint's card: `load_model`, the one way every reader does it.

Every checkpoint (teacher or student) carries a model card under
`meta["task"]` (`training.card.ModelCard`: model config, channel layout,
normalisation constants, grid with its noise spec, sampler name and config,
data config). `load_model(path)` reads it (migrating older cards), opens the
store with the grid check, rebuilds the network and the sampler
(`gencast_rmmd.diffusion.registry.SAMPLER_BUILDERS`, one mapping in one place)
and returns a ready `Predictor` with the parameters it samples with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gencast_rmmd.config import apply_overrides
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.diffusion.registry import SAMPLER_BUILDERS
from gencast_rmmd.errors import UserInputError, validation_message
from gencast_rmmd.forecast.predictor import Predictor
from gencast_rmmd.training import Checkpoint, load_checkpoint
from gencast_rmmd.training.card import ModelCard, read_card


def predictor_from_card(card: ModelCard) -> Predictor:
    """The `Predictor` a card describes (network, sampler, normalisation)."""
    name = card.sampler.name
    if name not in SAMPLER_BUILDERS:
        raise UserInputError(f"the checkpoint's sampler {name!r} is not one this gencast-rmmd builds "
                             f"({', '.join(SAMPLER_BUILDERS)}); upgrade gencast-rmmd")
    latitude, longitude = card.grid.axes
    try:
        sampler = SAMPLER_BUILDERS[name](card.sampler.config, latitude, longitude, card.grid.noise)
    except ValidationError as error:
        raise UserInputError(validation_message(f"sampler {name}", error)) from None
    return Predictor(card.network(), sampler, card.normalization)


def with_sampler_overrides(card: ModelCard, overrides: list[str] | tuple[str, ...]) -> ModelCard:
    """`card` with `key=value` overrides of its sampler's config (validated when the sampler is built)."""
    if not overrides:
        return card
    for override in overrides:
        if "=" not in override or "." in override.split("=", 1)[0]:
            raise UserInputError(f"--sampler {override!r}: expected key=value of the checkpoint's sampler config, "
                                 f"one of {', '.join(sorted(card.sampler.config))}")
    config = apply_overrides(card.sampler.config, list(overrides))
    return card.model_copy(update={"sampler": card.sampler.model_copy(update={"config": config})})


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A checkpoint ready to sample: its card, the parameters used, the predictor and the opened store."""

    checkpoint: Checkpoint
    card: ModelCard
    params: Any
    predictor: Predictor
    source: DataSource


def load_model(path: str | Path, data: str | None = None, sampler_overrides: list[str] | tuple[str, ...] = (),
               use_ema: bool = True) -> LoadedModel:
    """Read a checkpoint (or a run's latest), rebuild its predictor and open its store (`data`: another one).

    The store's grid must be the card's (checked before anything compiles); `sampler_overrides`
    (`key=value`) change the sampler for this use only; `use_ema` picks the EMA parameters when the
    checkpoint has them.
    """
    loaded = load_checkpoint(path)
    card = with_sampler_overrides(read_card(loaded.meta, str(loaded.path)), sampler_overrides)
    predictor = predictor_from_card(card)
    source = card.open_data(data)
    groups = loaded.ema_params if use_ema and loaded.ema_params is not None else loaded.params
    return LoadedModel(loaded, card, card.params(groups), predictor, source)
