"""Rebuild a `Predictor` from a checkpoint's self-describing payload.

Every checkpoint (teacher or student) stores, under `meta["task"]`, the model
config, the channel layout, the normalisation constants, the grid and the
sampler (name + config). Samplers are looked up in `SAMPLER_BUILDERS`, one
mapping in one place: a new sampler kind adds its builder there.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pydantic import ValidationError

from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.base import Sampler
from gencast_rmmd.diffusion.config import SamplerConfig
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.diffusion.samplers import DPMSolverPlusPlus2S
from gencast_rmmd.errors import UserInputError, validation_message
from gencast_rmmd.forecast.predictor import Predictor
from gencast_rmmd.models.builder import network_for_grid
from gencast_rmmd.models.config import ModelConfig


def _dpm_solver(config: dict, latitude: np.ndarray, longitude: np.ndarray, noise: dict | None = None) -> Sampler:
    return DPMSolverPlusPlus2S(SamplerConfig(**config), SphericalNoise.from_spec(latitude, longitude, noise))


def _student_sampler(config: dict, latitude: np.ndarray, longitude: np.ndarray, noise: dict | None = None) -> Sampler:
    from gencast_rmmd.distill.sampler import build_student_sampler
    return build_student_sampler(config, latitude, longitude, noise)


# (sampler config, latitudes, longitudes, noise spec (`SphericalNoise.spec`; None = GenCast's)) -> Sampler
SamplerBuilder = Callable[..., Sampler]
SAMPLER_BUILDERS: dict[str, SamplerBuilder] = {
    "dpm_solver_pp_2s": _dpm_solver,
    "student_kstep": _student_sampler,
}


def sampler_payload(name: str, config, nfe_per_step: int) -> dict:
    """The checkpoint entry describing a sampler."""
    return {"name": name, "config": config.model_dump(mode="json"), "nfe_per_step": int(nfe_per_step)}


def predictor_from_payload(payload: dict) -> Predictor:
    """The `Predictor` a checkpoint describes (network, sampler, normalisation)."""
    try:
        layout = ChannelLayout.from_dict(payload["layout"])
        latitude = np.asarray(payload["grid"]["latitude"], dtype=np.float64)
        longitude = np.asarray(payload["grid"]["longitude"], dtype=np.float64)
        model = ModelConfig(**payload["model"])
        sampler_entry = payload["sampler"]
        builder = SAMPLER_BUILDERS[sampler_entry["name"]]
        normalizer = Normalizer.from_dict(payload["normalizer"])
    except KeyError as missing:
        raise UserInputError(f"the checkpoint does not describe its model completely (no {missing}); "
                             "it was not written by gencast-rmmd train or distill") from None
    try:
        # checkpoints without a noise spec used GenCast's noise for the grid
        sampler = builder(sampler_entry["config"], latitude, longitude, payload["grid"].get("noise"))
    except ValidationError as error:
        raise UserInputError(validation_message(f"sampler {sampler_entry['name']}", error)) from None
    network = network_for_grid(model, latitude, longitude, layout.n_target_channels)
    return Predictor(network, sampler, normalizer)
