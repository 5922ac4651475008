"""`gencast-rmmd inspect`: describe a checkpoint, a run directory, or a config's model size."""

from __future__ import annotations

import os
from pathlib import Path

from gencast_rmmd.errors import UserInputError


def _count(tree) -> int:
    import jax
    import numpy as np
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def describe_config(path: Path) -> dict:
    """Model size and NFE of a teacher config, without data or training (abstract init only)."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.data.layout import ChannelLayout
    from gencast_rmmd.data.variables import FORCING_NAMES
    from gencast_rmmd.models.builder import count_parameters
    from gencast_rmmd.teacher.config import TeacherConfig

    config = load_config(path, TeacherConfig)
    layout = ChannelLayout.from_config(config.data)
    features = (layout.input_frames * layout.n_input_channels + len(FORCING_NAMES) + len(layout.static)
                + layout.n_target_channels)
    return {
        "path": str(path), "kind": "config",
        "param_count": count_parameters(config.model, features, layout.n_target_channels),
        "nfe_per_step": 2 * config.sampler.num_noise_levels - 1,
        "sampler": "dpm_solver_pp_2s",
        "model": config.model.model_dump(mode="json"),
        "data_source": config.data.path,
    }


def describe(target: str | os.PathLike) -> dict:
    """A JSON-able summary: step, param_count, params_sha256, nfe_per_step, configs."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        return describe_config(path)
    if not path.exists():
        raise UserInputError(f"{path} does not exist; give a checkpoint, a run directory or a config YAML")
    from gencast_rmmd.training import load_checkpoint, params_sha256

    loaded = load_checkpoint(path)
    payload = loaded.meta.get("task", {})
    group = payload.get("params_group", "denoiser")
    params = loaded.params.get(group, loaded.params)
    sampler = payload.get("sampler", {})
    return {
        "path": str(loaded.path), "kind": payload.get("kind", "unknown"), "step": loaded.step,
        "param_count": _count(params),
        "params_sha256": params_sha256(loaded.params),
        "nfe_per_step": sampler.get("nfe_per_step"),
        "sampler": sampler.get("name"),
        "sampler_config": sampler.get("config"),
        "model": payload.get("model"),
        "config": payload.get("config"),
        "data_source": payload.get("data_source"),
        "seed": loaded.meta.get("seed"),
        **({"imported_from": loaded.meta["imported_from"]} if "imported_from" in loaded.meta else {}),
    }
