"""Write an imported GenCast checkpoint as a teacher run that forecast, distill, inspect and evaluate accept.

The run holds one checkpoint whose payload is the one `train` writes (config, model,
layout, normaliser, grid, sampler), built for a data config whose variables and
levels are the GenCast task's; the grid is the store's (graphcast builds its graphs
for any grid), which must have the spacing the checkpoint names as its training
resolution (`gencast_checkpoint.check_grid`; the published weights: 1 or 0.25 degree)
unless the user allows another.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from gencast_rmmd.config import DataConfig, config_to_dict
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.stats import save_stats
from gencast_rmmd.data.stores import describe_location, file_fingerprint
from gencast_rmmd.diffusion.config import LossConfig
from gencast_rmmd.diffusion.samplers import DPMSolverPlusPlus2S
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.teacher.config import TeacherConfig
from gencast_rmmd.teacher.gencast_checkpoint import (GenCastCheckpoint, check_grid, model_config, noise_config,
                                                     read_gencast_checkpoint, sampler_config)
from gencast_rmmd.teacher.gencast_import import import_gencast
from gencast_rmmd.teacher.gencast_stats import stats_locations
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training import params_sha256
from gencast_rmmd.training.card import checked_card, sampler_payload

# GenCast's per-variable loss weights (graphcast gencast.py; 1 for the others), kept so the teacher can be
# fine-tuned and distilled with its own weighting.
GENCAST_VARIABLE_WEIGHTS = {
    "10m_u_component_of_wind": 0.1, "10m_v_component_of_wind": 0.1, "mean_sea_level_pressure": 0.1,
    "sea_surface_temperature": 0.1, "total_precipitation_12hr": 0.1}
GROUP = "denoiser"


def imported_teacher_config(checkpoint: GenCastCheckpoint, data: DataConfig, stats: str) -> TeacherConfig:
    """The TeacherConfig an imported checkpoint runs as: its model, noise and sampler, GenCast's loss
    weights for the targets the task has, the data config `data` and the statistics file `stats`
    (graphcast's, converted)."""
    targets = set(ChannelLayout.from_config(data).time_varying)
    loss = LossConfig(variable_weights={name: weight for name, weight in GENCAST_VARIABLE_WEIGHTS.items()
                                        if name in targets})
    return TeacherConfig(data=data, model=model_config(checkpoint), noise=noise_config(checkpoint),
                         sampler=sampler_config(checkpoint), loss=loss, stats=stats)


def source_fingerprints(location: str, stats_dir: str | os.PathLike) -> dict:
    """Content digests of a checkpoint and its four statistics files (`stores.file_fingerprint`): what an
    import depends on besides the data's layout and grid."""
    return {"checkpoint": file_fingerprint(str(location)),
            "statistics": {statistic: file_fingerprint(path)
                           for statistic, path in stats_locations(stats_dir).items()}}


def write_imported_teacher(location: str, stats_dir: str | os.PathLike, data: DataConfig,
                           out: str | os.PathLike, log=print, allow_other_grid: bool = False) -> Path:
    """Import the GenCast checkpoint at `location` for the store of `data`; write it as run `out`.

    Refused (UserInputError, nothing written) when `out` holds checkpoints, the checkpoint or its
    statistics are not graphcast's, the data config's variables or levels are not the task's, or
    (unless `allow_other_grid`) the store's grid spacing is not the resolution the checkpoint names.
    """
    from gencast_rmmd.teacher.train import diffusion_noise, grid_payload

    out = Path(out)
    if checkpoints.list_checkpoints(out):
        raise UserInputError(f"{out} already holds checkpoints; import into an empty run directory")
    gencast = read_gencast_checkpoint(location)
    source = DataSource.open(data)
    if not allow_other_grid:
        check_grid(gencast, str(location), source.longitude, source.report.location)
    imported = import_gencast(gencast, stats_dir, source.layout)
    config = imported_teacher_config(gencast, data, str(out / "stats.nc"))
    noise = diffusion_noise(config, source)
    sampler = DPMSolverPlusPlus2S(config.sampler, noise)
    payload = checked_card({
        "kind": "teacher", "config": config_to_dict(config), "model": config_to_dict(config.model),
        "layout": source.layout.to_dict(), "normalizer": imported.normalizer.to_dict(),
        "grid": grid_payload(source, noise),
        "sampler": sampler_payload("dpm_solver_pp_2s", config.sampler, sampler.nfe_per_step),
        "data_source": source.report.location,
    })
    params = {GROUP: imported.params}
    digest = params_sha256(params)
    out.mkdir(parents=True, exist_ok=True)
    save_stats(imported.stats, out / "stats.nc")
    written = checkpoints.save_checkpoint(out, {"params": params, "ema_params": params}, {
        "step": 0, "seed": None, "task": payload, "params_sha256": digest, "ema_params_sha256": digest,
        "imported_from": {"location": describe_location(str(location)), "description": gencast.description,
                          "statistics": describe_location(str(stats_dir)), **source_fingerprints(location, stats_dir)},
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    log(f"imported {location} ({gencast.description}) for {source.report.location} -> {written}")
    return written
