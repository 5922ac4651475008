"""The samplers a model card may name: `SAMPLER_BUILDERS[name](config, latitude, longitude, noise_spec)`.

One mapping in one place. A card's sampler entry (`training.card.sampler_payload`)
holds the name, the config as a dict and the calls per step; the builder
validates the config and puts the sampler on the grid's diffusion noise
(`SphericalNoise.spec`; None = GenCast's noise for that grid).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gencast_rmmd.diffusion.base import Sampler
from gencast_rmmd.diffusion.config import SamplerConfig
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.diffusion.samplers import DPMSolverPlusPlus2S
from gencast_rmmd.diffusion.student_sampler import build_student_sampler


def _dpm_solver(config: dict, latitude: np.ndarray, longitude: np.ndarray, noise: dict | None = None) -> Sampler:
    return DPMSolverPlusPlus2S(SamplerConfig(**config), SphericalNoise.from_spec(latitude, longitude, noise))


# (sampler config, latitudes, longitudes, noise spec (`SphericalNoise.spec`; None = GenCast's)) -> Sampler
SamplerBuilder = Callable[..., Sampler]
SAMPLER_BUILDERS: dict[str, SamplerBuilder] = {
    "dpm_solver_pp_2s": _dpm_solver,          # the teacher's (trained or imported GenCast)
    "student_kstep": build_student_sampler,   # every distilled student's
}
