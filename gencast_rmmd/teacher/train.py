"""Train the teacher: open data, statistics, build the network and task, run the generic loop."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from gencast_rmmd.config import config_to_dict
from gencast_rmmd.data.batches import batch_stream
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.stats import compute_stats, load_stats, save_stats
from gencast_rmmd.diffusion.model_space import ModelSpace
from gencast_rmmd.diffusion.noise import SphericalNoise, resolvable_wavenumber
from gencast_rmmd.diffusion.samplers import DPMSolverPlusPlus2S
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.models.builder import network_for_grid
from gencast_rmmd.teacher.config import TeacherConfig
from gencast_rmmd.teacher.task import TeacherTask
from gencast_rmmd.training import TrainResult, initialize_distributed, train
from gencast_rmmd.training.card import checked_card, sampler_payload
from gencast_rmmd.training.checkpoint import fall_back_to_verified
from gencast_rmmd.training.run_config import check_resume_config, check_run_dir, run_config

STATS_FILE = "stats.nc"


def run_statistics(source: DataSource, config: TeacherConfig, run_dir: Path):
    """Statistics for a run: the configured file, the run's own copy, or computed from the training split."""
    if config.stats:
        return load_stats(config.stats)
    own = run_dir / STATS_FILE
    if own.exists():
        return load_stats(own)
    stats = compute_stats(source, "train")
    save_stats(stats, own)
    return stats


def grid_payload(source: DataSource, noise: SphericalNoise) -> dict:
    """The checkpoint's grid: coordinates and the diffusion noise's spec on it."""
    return {"latitude": source.latitude.tolist(), "longitude": source.longitude.tolist(),
            "noise": noise.spec}


def diffusion_noise(config: TeacherConfig, source: DataSource) -> SphericalNoise:
    """The spherical noise of `config.noise` on the grid of `source` (UserInputError if L does not fit)."""
    resolvable = resolvable_wavenumber(len(source.latitude), len(source.longitude))
    wavenumber = config.noise.max_wavenumber
    if wavenumber is not None and wavenumber > resolvable:
        raise UserInputError(f"noise.max_wavenumber {wavenumber} is above {resolvable}, the largest wavenumber the "
                             f"{len(source.longitude)}x{len(source.latitude)} grid of {source.report.location} "
                             "resolves; lower it or leave it unset")
    return SphericalNoise.for_grid(source.latitude, source.longitude, wavenumber, config.noise.spectral_exponent)


def teacher_task(config: TeacherConfig, source: DataSource, normalizer: Normalizer) -> TeacherTask:
    """The training task of `config` on `source`, with the checkpoint payload that rebuilds its model."""
    network = network_for_grid(config.model, source.latitude, source.longitude, source.layout.n_target_channels)
    noise = diffusion_noise(config, source)
    sampler = DPMSolverPlusPlus2S(config.sampler, noise)
    payload = checked_card({
        "kind": "teacher",
        "config": config_to_dict(config),
        "model": config_to_dict(config.model),
        "layout": source.layout.to_dict(),
        "normalizer": normalizer.to_dict(),
        "grid": grid_payload(source, noise),
        "sampler": sampler_payload("dpm_solver_pp_2s", config.sampler, sampler.nfe_per_step),
        "data_source": source.report.location,
    })
    space = ModelSpace(normalizer, source.layout, np.asarray(source.latitude), np.asarray(source.longitude), noise,
                       config.loss)
    return TeacherTask(config, network, space, payload)


def train_teacher(config: TeacherConfig, run_dir: str | Path, resume: bool = False,
                  log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) the teacher of `config` in `run_dir`.

    A resume under a config other than the run's recorded one is refused
    before the data are opened or statistics written (`training.run_config`).
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    settings = config_to_dict(config)
    if resume:
        fall_back_to_verified(run_dir, log)
        check_resume_config(run_dir, run_config(config.seed, config.train, settings))
    initialize_distributed(config.distributed)
    source = DataSource.open(config.data)
    diffusion_noise(config, source)  # a bad truncation fails before statistics are computed
    run_dir.mkdir(parents=True, exist_ok=True)
    normalizer = Normalizer.from_stats(run_statistics(source, config, run_dir), source.layout)
    task = teacher_task(config, source, normalizer)
    validation = (batch_stream(source, "validation", config.train.batch_size)
                  if config.train.validate_every else None)
    return train(task, config.train, seed=config.seed, batches=batch_stream(source, "train", config.train.batch_size),
                 run_dir=run_dir, validation_batches=validation, distributed=config.distributed,
                 settings=settings, log=log)
