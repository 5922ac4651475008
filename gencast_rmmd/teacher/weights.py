"""Teacher weights packages: a trained teacher shipped without its training state, verified when installed.

A package (`gencast_rmmd.training.packages`, kind `teacher`) is a directory of two files:

    weights.npz    the teacher's EMA denoiser parameters, one plain array per leaf (nothing executable)
    weights.json   format, the parameters' sha256, the checkpoint payload that rebuilds the model (config,
                   layout, normaliser, grid, sampler), and where it came from (run, step, config hash, and
                   the command that reproduces it)

The normalisation statistics travel inside the payload, as GenCast's do with
its weights. `export_weights` writes a package from a teacher checkpoint;
`install_weights` checks it (hash, model config, grid, variables, and that
the data's own statistics agree with the package's) and writes it as an
ordinary teacher run (`RUN/checkpoints/step_N/`, params and EMA params both
the shipped weights), so distillation, forecasts and the pipeline use it like
a teacher trained in place. Its training cannot be resumed: there is no
optimiser state.

The hash is `params_sha256({"denoiser": params})`: the `ema_params_sha256`
the exporting checkpoint recorded, so a package can be traced to its run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

from gencast_rmmd.config import config_to_dict
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training.card import checked_card
from gencast_rmmd.training.packages import INFO, first_difference, installed_already, read_package, write_package

GROUP = "denoiser"
# Teacher config sections that describe where and how a run trained, not the model it gives.
LOCAL_SECTIONS = ("data", "stats", "train", "seed", "distributed")
# Largest relative difference of a channel's mean (in units of its std) or std between the data's
# statistics and the package's before installing is refused: beyond it the data are not the ones the
# weights were trained on (e.g. another dataset or other units).
STATS_TOLERANCE = 0.05


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, reproduce: str | None = None) -> dict:
    """Write the EMA denoiser of a teacher checkpoint (or run's latest) as a package in `out`; return its info."""
    loaded = checkpoints.load_checkpoint(checkpoint)
    payload = loaded.meta.get("task") or {}
    if payload.get("kind") != "teacher":
        raise UserInputError(f"{loaded.path} is not a teacher checkpoint (kind {payload.get('kind')!r}); export "
                             "a run of `gencast-rmmd train`")
    group = payload.get("params_group", GROUP)
    params = loaded.ema_params[group]
    payload = json.loads(json.dumps(payload))
    payload["config"] = {key: value for key, value in payload["config"].items() if key not in LOCAL_SECTIONS}
    payload.pop("data_source", None)
    return write_package(out, params, {
        "kind": "teacher", "payload": payload,
        "source": {"checkpoint_step": loaded.step, "run_config_sha256": loaded.meta.get("run_config_sha256"),
                   "seed": loaded.meta.get("seed"), "train": loaded.meta.get("train"),
                   "data": loaded.meta["task"]["config"].get("data", {}).get("simulation"),
                   "versions": loaded.meta.get("versions"), "reproduce": reproduce},
    })


def load_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """`(params, info)` of a teacher package, after checking the parameters against the recorded hash."""
    return read_package(path, "teacher")


def _statistics_gap(package: dict, data: dict) -> float:
    """Largest relative difference of the normalisers' means (in stds) and stds over every channel."""
    gaps = [0.0]
    for mean, std in (("input_mean", "input_std"), ("target_mean", "target_std")):
        if mean in package and std in package:
            scale = np.abs(np.asarray(package[std], np.float64))
            gaps.append(float(np.max(np.abs(np.asarray(data[mean]) - np.asarray(package[mean])) / scale)))
            gaps.append(float(np.max(np.abs(np.asarray(data[std]) - scale) / scale)))
    return max(gaps)


def install_weights(path: str | os.PathLike, config, out: str | os.PathLike, stats: str | os.PathLike | None = None,
                    log=print) -> Path:
    """Install a package as the teacher run `out` for the TeacherConfig `config`; return the checkpoint path.

    Refused (UserInputError, nothing written) when the parameters do not match
    their hash, when `config`'s model, noise, sampler or loss differ from the
    package's, when the data's variables, levels or grid differ, or when the
    data's statistics (`stats`, else `config.stats`) are further than
    STATS_TOLERANCE from the package's.
    """
    from gencast_rmmd.data.normalization import Normalizer
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.data.stats import load_stats

    path, out = Path(path), Path(out)
    params, info = load_weights(path)
    payload = json.loads(json.dumps(info["payload"]))
    settings = config_to_dict(config)
    mine = {key: value for key, value in settings.items() if key not in LOCAL_SECTIONS}
    difference = first_difference(payload["config"], mine)
    if difference:
        raise UserInputError(f"the teacher config's {difference} differs from the weights package {path}'s; "
                             "use the config the weights were trained with (its values are in "
                             f"{path / INFO} under payload.config)")
    source = DataSource.open(config.data)
    layout = source.layout.to_dict()
    difference = first_difference(payload["layout"], layout)
    if difference:
        raise UserInputError(f"the data {config.data.path} do not have the variables and levels the weights were "
                             f"trained on (layout.{difference} differs); select them in the data config")
    for axis in ("latitude", "longitude"):
        shipped, found = np.asarray(payload["grid"][axis]), np.asarray(getattr(source, axis))
        if shipped.shape != found.shape or not np.allclose(shipped, found, atol=1e-6):
            raise UserInputError(f"the data {config.data.path} are on a {len(found)}-point {axis} grid, not the "
                                 f"{len(shipped)}-point grid the weights were trained on; regrid the data "
                                 "(gencast-rmmd data regrid)")
    stats = stats or config.stats
    if stats:
        gap = _statistics_gap(payload["normalizer"], Normalizer.from_stats(load_stats(stats), source.layout).to_dict())
        if gap > STATS_TOLERANCE:
            raise UserInputError(f"the statistics of {config.data.path} ({stats}) differ from the weights "
                                 f"package's by {gap:.3g} (relative, at most {STATS_TOLERANCE} allowed): these are "
                                 "not the data the weights were trained on; train a teacher on them instead")
        log(f"data statistics agree with the package's to {gap:.2e} (relative)")
    existing = installed_already(out, {"params_sha256": info["params_sha256"]}, log)
    if existing is not None:
        return existing
    payload["config"] = settings
    payload["data_source"] = source.report.location
    step = int(info["source"]["checkpoint_step"])
    state = {"params": {GROUP: params}, "ema_params": {GROUP: params}}
    out.mkdir(parents=True, exist_ok=True)
    written = checkpoints.save_checkpoint(out, state, {
        "step": step, "seed": info["source"].get("seed"), "train": info["source"].get("train"),
        "task": checked_card(payload),
        "params_sha256": info["params_sha256"], "ema_params_sha256": info["params_sha256"],
        "installed_from": {"path": str(path.resolve()), "params_sha256": info["params_sha256"],
                           "source": info["source"]},
        "versions": info["source"].get("versions"),
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    log(f"installed {path} ({info['param_count']} parameters, sha256 {info['params_sha256'][:16]}…, step {step}) "
        f"-> {written}")
    return written
