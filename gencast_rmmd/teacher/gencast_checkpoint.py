"""Read a published GenCast checkpoint (google-deepmind/graphcast 0.2 format) and map its configuration.

graphcast's `checkpoint.dump` writes one npz of flattened keys:
`params:<haiku module path>:<name>`, `task_config:...`, `denoiser_architecture_config:...`,
`sampler_config:...`, `noise_config:...`, `noise_encoder_config:...`, `description`, `license`.
The npz is read member by member, so the configuration of a remote checkpoint is read
without downloading its parameters (`read_gencast_checkpoint(..., with_params=False)`).
Its configuration becomes ours: `ModelConfig` with `GENCAST_VARIANT` (graphcast's graphs
and block conventions), `SamplerConfig`, `NoiseConfig`, and the task's variables and levels,
which a data layout must hold exactly (`check_layout`).
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.stores import open_file
from gencast_rmmd.data.variables import FORCING_NAMES
from gencast_rmmd.diffusion.config import NoiseConfig, SamplerConfig
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.models.config import GENCAST_VARIANT, ModelConfig

STEP_HOURS = 12
PUBLISHED = "gs://dm_graphcast/gencast/params/"
_REQUIRED_SECTIONS = ("task_config", "denoiser_architecture_config")
# The `denoiser_architecture_config` keys `model_config` reads, for "GenCast 1p0deg Mini <2019.npz" as
# graphcast's demo describes it (a 4 times refined mesh; the widths of configs/model/gencast_1p0_mini.yaml),
# to size that model without its checkpoint (benchmarks/bench_gencast_1p0.py). Not read from the file:
# the published one (~230 MB of float32) may hold ~1 % more parameters than these give.
MINI_1P0_ARCHITECTURE = {
    "mesh_size": 4, "latent_size": 512, "hidden_layers": 1, "radius_query_fraction_edge_length": 0.6,
    "sparse_transformer_config": {"attention_k_hop": 16, "d_model": 512, "num_layers": 16, "num_heads": 4,
                                  "ffw_hidden": 2048},
}


@dataclass(frozen=True)
class GenCastCheckpoint:
    """A graphcast GenCast checkpoint, unflattened: params {module: {name: array}} and config sections."""

    params: dict[str, dict[str, np.ndarray]]
    config: dict
    description: str

    @property
    def task(self) -> dict:
        return self.config["task_config"]


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(":")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _plain(value):
    """npz leaves -> Python values; index-keyed dicts (graphcast's tuples) -> lists."""
    if isinstance(value, dict):
        if value and all(key.isdigit() for key in value):
            return [_plain(value[key]) for key in sorted(value, key=int)]
        return {key: _plain(item) for key, item in value.items()}
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value


def _read_npz(location: str, with_params: bool) -> dict[str, np.ndarray]:
    """The npz's arrays by key (without `params:` ones unless `with_params`); one-line errors."""
    not_ours = (f"{location} is not a graphcast GenCast checkpoint (not an .npz archive of arrays); give one "
                f"of the .npz files of {PUBLISHED}")
    try:
        with open_file(location) as handle, np.load(handle, allow_pickle=False) as stored:
            if not hasattr(stored, "files"):                  # a single .npy array
                raise UserInputError(not_ours)
            return {key: stored[key] for key in stored.files if with_params or not key.startswith("params:")}
    except (FileNotFoundError, IsADirectoryError) as error:
        what = "a directory" if isinstance(error, IsADirectoryError) else "no such file"
        raise UserInputError(f"no GenCast checkpoint at {location} ({what}); give the path of its .npz file "
                             f"(or a gs:// URL under {PUBLISHED})") from None
    # numpy calls any file that is not an npz or npy "pickled data"; a truncated zip is a BadZipFile.
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise UserInputError(not_ours) from None
    except OSError as error:
        raise UserInputError(f"cannot read {location}: {error}") from None


def read_gencast_checkpoint(location: str | os.PathLike, with_params: bool = True) -> GenCastCheckpoint:
    """Read and check a graphcast GenCast checkpoint (.npz), local or gs:// (anonymous).

    `with_params=False` reads the configuration only (`params` is then empty).
    """
    location = str(location)
    tree = _unflatten(_read_npz(location, with_params))
    missing = [section for section in (*(("params",) if with_params else ()), *_REQUIRED_SECTIONS)
               if section not in tree]
    if missing:
        raise UserInputError(f"{location} is not a graphcast GenCast checkpoint (no {', '.join(missing)} keys); "
                             f"give one of the .npz files of {PUBLISHED}")
    config = {key: _plain(value) for key, value in tree.items() if key not in ("params", "description", "license")}
    if "sparse_transformer_config" not in config["denoiser_architecture_config"]:
        raise UserInputError(f"{location} is a graphcast checkpoint but not GenCast's (no sparse transformer); "
                             "only GenCast checkpoints can be imported")
    return GenCastCheckpoint(params=tree.get("params", {}), config=config,
                             description=str(_plain(tree.get("description", ""))))


# "1deg", "1.0 deg", "1p0deg", "0.25deg", "0p25deg" (graphcast's descriptions and file names).
_RESOLUTION = re.compile(r"(?<![\d.])(\d+)(?:[p.](\d+))?\s*deg", re.IGNORECASE)


def trained_resolution(checkpoint: GenCastCheckpoint, location: str) -> float | None:
    """The grid spacing in degrees the checkpoint says it was trained at: from its description, else its
    file name ("GenCast 1p0deg Mini <2019.npz" -> 1.0); None when neither names one (graphcast's task
    config carries no grid: the network runs on any, its weights expect their training grid)."""
    for text in (checkpoint.description, str(location).rsplit("/", 1)[-1]):
        found = _RESOLUTION.search(text)
        if found:
            return float(f"{found.group(1)}.{found.group(2) or 0}")
    return None


def check_grid(checkpoint: GenCastCheckpoint, location: str, longitude: np.ndarray, where: str) -> None:
    """UserInputError when the checkpoint names a training resolution and the data's longitude spacing
    (`longitude`, of the store `where`) is another one."""
    trained = trained_resolution(checkpoint, location)
    spacing = 360.0 / len(longitude)
    if trained is not None and not np.isclose(spacing, trained, rtol=1e-3):
        raise UserInputError(f"{where} is on a {spacing:g}-degree grid; the GenCast checkpoint was trained at "
                             f"{trained:g} degree: regrid the store (gencast-rmmd data regrid --resolution {trained:g}), or "
                             "pass --allow-other-grid to run the weights on this grid anyway")


def model_config(checkpoint: GenCastCheckpoint) -> ModelConfig:
    """Our `ModelConfig` for a GenCast architecture (processor attention: dense over the k-hop mask)."""
    arch = checkpoint.config["denoiser_architecture_config"]
    transformer = arch["sparse_transformer_config"]
    encoder = checkpoint.config.get("noise_encoder_config", {})
    if int(transformer["d_model"]) != int(arch["latent_size"]):
        raise UserInputError(f"GenCast checkpoint: d_model {transformer['d_model']} differs from latent_size "
                             f"{arch['latent_size']}, which this importer does not support")
    return ModelConfig(
        mesh_refinement=int(arch["mesh_size"]), radius_fraction=float(arch["radius_query_fraction_edge_length"]),
        latent_size=int(arch["latent_size"]), hidden_layers=int(arch["hidden_layers"]),
        processor={"num_layers": int(transformer["num_layers"]), "num_heads": int(transformer["num_heads"]),
                   "ffw_hidden": int(transformer["ffw_hidden"]), "k_hop": int(transformer["attention_k_hop"]),
                   "attention": "dense"},
        noise_encoder={"base_period": float(encoder.get("base_period", 16.0)),
                       "num_frequencies": int(encoder.get("num_frequencies", 32)),
                       "output_sizes": [int(size) for size in encoder.get("output_sizes", (32, 16))]},
        **GENCAST_VARIANT)


def sampler_config(checkpoint: GenCastCheckpoint) -> SamplerConfig:
    """graphcast's `SamplerConfig` as ours (defaults where the checkpoint has none)."""
    given = checkpoint.config.get("sampler_config", {})
    churn_max = float(given.get("churn_max_noise_level", np.inf))
    return SamplerConfig(
        num_noise_levels=int(given.get("num_noise_levels", 20)),
        max_noise_level=float(given.get("max_noise_level", 80.0)),
        min_noise_level=float(given.get("min_noise_level", 0.03)), rho=float(given.get("rho", 7.0)),
        churn=float(given.get("stochastic_churn_rate", 2.5)),
        churn_min_noise_level=float(given.get("churn_min_noise_level", 0.75)),
        churn_max_noise_level=None if np.isinf(churn_max) else churn_max,
        noise_inflation=float(given.get("noise_level_inflation_factor", 1.05)))


def noise_config(checkpoint: GenCastCheckpoint) -> NoiseConfig:
    """graphcast's training `NoiseConfig` as ours."""
    given = checkpoint.config.get("noise_config", {})
    return NoiseConfig(min_noise_level=float(given.get("training_min_noise_level", 0.02)),
                       max_noise_level=float(given.get("training_max_noise_level", 88.0)),
                       rho=float(given.get("training_noise_level_rho", 7.0)))


def task_variables(checkpoint: GenCastCheckpoint) -> dict:
    """The task as our data config's `variables` and `levels` (order: graphcast's task order)."""
    task = checkpoint.task
    inputs, targets = list(task["input_variables"]), list(task["target_variables"])
    forcings = list(task.get("forcing_variables", []))
    unknown = sorted(set(forcings) - set(FORCING_NAMES))
    if unknown:
        raise UserInputError(f"the GenCast task has forcings {', '.join(unknown)} that gencast-rmmd does not "
                             f"compute (only {', '.join(FORCING_NAMES)})")
    levels = sorted(int(level) for level in task["pressure_levels"])
    return {"inputs": inputs, "targets": targets, "forcings": forcings, "levels": levels,
            "input_duration": str(task["input_duration"])}


def check_layout(checkpoint: GenCastCheckpoint, layout: ChannelLayout) -> None:
    """UserInputError unless `layout` (a data config's) holds exactly the checkpoint's task."""
    task = task_variables(checkpoint)
    time_varying = set(task["inputs"]) - set(task["forcings"]) - set(layout.static)
    expected = {"inputs (time-varying)": sorted(time_varying), "targets": sorted(task["targets"]),
                "static": sorted(set(task["inputs"]) & set(layout.static)), "levels": task["levels"]}
    found = {"inputs (time-varying)": sorted((*layout.surface, *layout.atmospheric)),
             "targets": sorted(layout.time_varying), "static": sorted(layout.static), "levels": list(layout.levels)}
    for key in expected:
        if expected[key] != found[key]:
            raise UserInputError(f"the data config's {key} are {', '.join(map(str, found[key])) or 'none'}; the "
                                 f"GenCast checkpoint needs {', '.join(map(str, expected[key]))}: select those in "
                                 "the data config")
    frames = int(np.timedelta64(_parse_duration(task["input_duration"]), "h") // np.timedelta64(STEP_HOURS, "h"))
    if layout.input_frames != frames:
        raise UserInputError(f"the data config has input_frames {layout.input_frames}; the GenCast checkpoint "
                             f"takes {frames} ({task['input_duration']} at {STEP_HOURS} h)")


def _parse_duration(text: str) -> np.timedelta64:
    import pandas as pd
    return np.timedelta64(pd.Timedelta(text).to_timedelta64(), "h")


def perturbed_params(params, rng: np.random.Generator):
    """Every weight matrix + N(0, (0.25/sqrt(fan_in))^2), every other leaf + N(0, 0.05^2), as float32.

    For the parity fixtures against graphcast's GenCast and their benchmark
    (tools/make_gencast_fixture.py, benchmarks/bench_vs_graphcast.py): no
    zero-initialised path (output projections, biases) stays zero, so a
    comparison exercises every parameter. Leaves in `tree_map` order: one seed,
    one result.
    """
    import jax

    def one(leaf):
        leaf = np.asarray(leaf, np.float32)
        scale = 0.25 / np.sqrt(leaf.shape[0]) if leaf.ndim == 2 else 0.05
        return (leaf + scale * rng.standard_normal(leaf.shape)).astype(np.float32)
    return jax.tree_util.tree_map(one, params)
