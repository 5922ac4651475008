"""Import a published GenCast checkpoint (google-deepmind/graphcast 0.2 format) as one of our teachers.

The checkpoint is read and its configuration mapped by `gencast_checkpoint`, its
statistics by `gencast_stats`; this module maps the parameters. The model becomes our
denoiser with `GENCAST_VARIANT` (graphcast's graphs and three block differences).
Everything else is an exact reparametrisation of the first or last layers, so one code
path serves imported and home-trained models alike:
- FiLM: graphcast's one Linear [C, 2W] -> (scale - 1 | offset) is our film_scale, film_offset;
- Fourier noise features: graphcast's [cos, sin] rows are reordered to our [sin, cos];
- the mesh-node embedding: graphcast feeds zeros in all but the 3 structural rows of a
  grid-feature-wide input; only those 3 rows act, and they are kept;
- grid-node channels: graphcast stacks variables sorted by name with (time, level) inside
  each, and the noisy targets among the forcings; rows are permuted to our layout;
- forcings: graphcast feeds its (normalised) year/day progress forcings at both input times
  and the target time; ours are the raw sin/cos at the target time. At t - k 12 h each is a
  fixed rotation of the target-time pair (day progress turns by k pi, year progress by
  2 pi k 12 h / 365.24219 d), so those rows, their normalisation and its offset fold into
  the target-time rows and the bias: sum_k w_k^T (R_k f - m) / s = (sum_k R_k^T diag(1/s) w_k)^T f
  - sum_k w_k^T m / s;
- outputs: graphcast's columns (targets sorted by name, levels inside) are permuted to ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from gencast_rmmd.data.forcings import AVERAGE_SECONDS_PER_YEAR, SECONDS_PER_DAY
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.data.variables import FORCING_NAMES
from gencast_rmmd.diffusion.config import NoiseConfig, SamplerConfig
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.teacher.gencast_checkpoint import (STEP_HOURS, GenCastCheckpoint, check_layout, model_config,
                                                     noise_config, sampler_config, task_variables)
from gencast_rmmd.teacher.gencast_stats import read_statistics


def _film(params: dict, module: str) -> dict[str, dict[str, np.ndarray]]:
    """graphcast LinearNormConditioning [C, 2W] -> our film_scale / film_offset."""
    linear = params[f"{module}/linear"]
    width = linear["w"].shape[1] // 2
    return {"film_scale": {"w": linear["w"][:, :width], "b": linear["b"][:width]},
            "film_offset": {"w": linear["w"][:, width:], "b": linear["b"][width:]}}


def _mlp(params: dict, module: str, layers: int) -> dict[str, dict[str, np.ndarray]]:
    return {f"mlp/~/linear_{index}": dict(params[f"{module}/~/linear_{index}"]) for index in range(layers)}


def _conditioned_mlp(params: dict, ours: str, mlp: str, norm: str, layers: int) -> dict:
    """A graphcast MLP + LayerNorm + LinearNormConditioning as our ConditionedMLP `ours`."""
    tree = {f"{ours}/{key}": value for key, value in _mlp(params, mlp, layers).items()}
    tree.update({f"{ours}/norm/{key}": value for key, value in _film(params, norm).items()})
    return tree


def graphcast_input_channels(checkpoint: GenCastCheckpoint, layout: ChannelLayout) -> list[tuple]:
    """graphcast's grid-node channels: (group, variable, frame, level), as `dataset_to_stacked` orders them.

    Inputs (every input variable, sorted; time-varying ones at each input frame, then level), then
    forcings with the noisy targets (sorted together; one frame). frame None: static.
    """
    task = task_variables(checkpoint)
    static = set(layout.static)
    levels = list(layout.levels)
    atmospheric = set(layout.atmospheric)
    channels = []
    for name in sorted(task["inputs"]):
        frames = [None] if name in static else range(layout.input_frames)
        for frame in frames:
            for level in (levels if name in atmospheric else [None]):
                channels.append(("input", name, frame, level))
    for name in sorted(set(task["forcings"]) | set(task["targets"])):
        for level in (levels if name in atmospheric else [None]):
            channels.append(("forcing" if name in task["forcings"] else "noisy", name, None, level))
    return channels


def _forcing_rotation(name: str, frames_before_target: int) -> tuple[str, np.ndarray]:
    """(pair, R): the value of forcing `name` at target - k 12 h as a row of R @ [sin, cos] at the target."""
    kind = name.rsplit("_", 1)[0]
    period = SECONDS_PER_DAY if kind == "day_progress" else AVERAGE_SECONDS_PER_YEAR
    angle = 2.0 * np.pi * frames_before_target * STEP_HOURS * 3600.0 / period
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    # sin(x - a) = sin x cos a - cos x sin a;  cos(x - a) = cos x cos a + sin x sin a
    row = np.array([cos_a, -sin_a]) if name.endswith("_sin") else np.array([sin_a, cos_a])
    return kind, row


def grid_embedding(checkpoint: GenCastCheckpoint, layout: ChannelLayout, normalizer_stats: xr.Dataset,
                   weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """graphcast's grid-node embedding first layer -> ours (rows in our grid-feature order, bias folded)."""
    theirs = graphcast_input_channels(checkpoint, layout)
    if weight.shape[0] != len(theirs) + 3:
        raise UserInputError(f"GenCast checkpoint: the grid-node embedding takes {weight.shape[0] - 3} channels, "
                             f"its task {len(theirs)}; the checkpoint is inconsistent")
    input_index = {(channel.variable, channel.level): i for i, channel in enumerate(layout.input_channels)}
    target_index = {(channel.variable, channel.level): i for i, channel in enumerate(layout.target_channels)}
    n_in, n_forcing, n_static = layout.n_input_channels, len(layout.forcings), len(layout.static)
    forcing_offset = layout.input_frames * n_in
    static_offset = forcing_offset + n_forcing
    noisy_offset = static_offset + n_static
    rows = np.zeros((noisy_offset + layout.n_target_channels + 3, weight.shape[1]), np.float64)
    bias = bias.astype(np.float64).copy()
    for row, (group, name, frame, level) in zip(weight.astype(np.float64), theirs):
        if name in FORCING_NAMES:
            mean = float(normalizer_stats[name].sel(statistic="mean"))
            std = float(normalizer_stats[name].sel(statistic="std"))
            before = 0 if group == "forcing" else layout.input_frames - frame
            kind, rotation = _forcing_rotation(name, before)
            pair = [layout.forcings.index(f"{kind}_sin"), layout.forcings.index(f"{kind}_cos")]
            rows[forcing_offset + pair[0]] += rotation[0] * row / std
            rows[forcing_offset + pair[1]] += rotation[1] * row / std
            bias -= row * mean / std
        elif group == "input" and frame is None:
            rows[static_offset + layout.static.index(name)] += row
        elif group == "input":
            rows[frame * n_in + input_index[(name, level)]] += row
        else:
            rows[noisy_offset + target_index[(name, level)]] += row
    rows[-3:] = weight[-3:]
    return rows.astype(np.float32), bias.astype(np.float32)


def output_permutation(checkpoint: GenCastCheckpoint, layout: ChannelLayout) -> np.ndarray:
    """For each of our target channels, its column in graphcast's output (targets sorted, levels inside)."""
    levels = list(layout.levels)
    atmospheric = set(layout.atmospheric)
    theirs = [(name, level) for name in sorted(task_variables(checkpoint)["targets"])
              for level in (levels if name in atmospheric else [None])]
    return np.array([theirs.index((channel.variable, channel.level)) for channel in layout.target_channels])


def convert_params(checkpoint: GenCastCheckpoint, layout: ChannelLayout, stats: xr.Dataset) -> dict:
    """graphcast's parameters as our denoiser's (haiku module path -> {name: array})."""
    p = checkpoint.params
    layers = int(checkpoint.config["denoiser_architecture_config"]["hidden_layers"]) + 1
    g2m, m2g = "grid2mesh_gnn/~_networks_builder", "mesh2grid_gnn/~_networks_builder"
    tree: dict = {}
    try:
        encoder = p["fourier_features_mlp/~/mlp/~/linear_0"]
        half = encoder["w"].shape[0] // 2
        tree["noise_level_encoder/mlp/~/linear_0"] = {"w": np.concatenate([encoder["w"][half:], encoder["w"][:half]]),
                                                      "b": encoder["b"]}
        tree["noise_level_encoder/mlp/~/linear_1"] = dict(p["fourier_features_mlp/~/mlp/~/linear_1"])
        pairs = [("grid_node_embed", g2m, "encoder_nodes_grid_nodes"), ("mesh_node_embed", g2m, "encoder_nodes_mesh_nodes"),
                 ("grid2mesh_edge_embed", g2m, "encoder_edges_grid2mesh"),
                 ("encoder/edge_mlp", g2m, "processor_edges_0_grid2mesh"),
                 ("encoder/receiver_mlp", g2m, "processor_nodes_0_mesh_nodes"),
                 ("encoder/sender_mlp", g2m, "processor_nodes_0_grid_nodes"),
                 ("mesh2grid_edge_embed", m2g, "encoder_edges_mesh2grid"),
                 ("decoder/edge_mlp", m2g, "processor_edges_0_mesh2grid"),
                 ("decoder/receiver_mlp", m2g, "processor_nodes_0_grid_nodes")]
        for ours, prefix, theirs in pairs:
            tree.update(_conditioned_mlp(p, f"denoiser/{ours}", f"{prefix}/{theirs}_mlp",
                                         f"{prefix}/{theirs}_norm_conditioning", layers))
        first = tree["denoiser/grid_node_embed/mlp/~/linear_0"]
        first["w"], first["b"] = grid_embedding(checkpoint, layout, stats, first["w"], first["b"])
        mesh_first = tree["denoiser/mesh_node_embed/mlp/~/linear_0"]
        mesh_first["w"] = mesh_first["w"][-3:]
        order = output_permutation(checkpoint, layout)
        for index in range(layers):
            layer = dict(p[f"{m2g}/decoder_nodes_grid_nodes_mlp/~/linear_{index}"])
            if index == layers - 1:
                layer = {"w": layer["w"][:, order], "b": layer["b"][order]}
            tree[f"denoiser/output_mlp/~/linear_{index}"] = layer
        transformer = "mesh_transformer/~/transformer"
        n_layers = int(checkpoint.config["denoiser_architecture_config"]["sparse_transformer_config"]["num_layers"])
        for index in range(n_layers):
            block, ours = f"{transformer}/block_{index:02d}", f"denoiser/processor/layer_{index}"
            for norm, suffix in (("attention_norm", ""), ("ffw_norm", "_1")):
                for key, value in _film(p, f"{block}/block_{index:02d}_norm_conditioning{suffix}").items():
                    tree[f"{ours}/{norm}/{key}"] = value
            for theirs, mine in (("mha_proj_q", "attention/query"), ("mha_proj_k", "attention/key"),
                                 ("mha_proj_v", "attention/value"), ("mha_final", "attention/output"),
                                 ("ffw_up", "ffw_hidden"), ("ffw_down", "ffw_output")):
                tree[f"{ours}/{mine}"] = dict(p[f"{block}/{theirs}"])
        for key, value in _film(p, f"{transformer}/transformer_final_norm_conditioning").items():
            tree[f"denoiser/processor/final_norm/{key}"] = value
    except KeyError as missing:
        raise UserInputError(f"the GenCast checkpoint has no parameter {missing}; it is not graphcast 0.2's "
                             "GenCast architecture") from None
    return {module: {name: np.asarray(value, np.float32) for name, value in leaves.items()}
            for module, leaves in tree.items()}


@dataclass(frozen=True)
class ImportedTeacher:
    """What a GenCast checkpoint becomes: our configs, normaliser and parameters for one data layout."""

    model: ModelConfig
    sampler: SamplerConfig
    noise: NoiseConfig
    normalizer: Normalizer
    stats: xr.Dataset
    params: dict


def import_gencast(checkpoint: GenCastCheckpoint, stats_dir: str | os.PathLike,
                   layout: ChannelLayout) -> ImportedTeacher:
    """Convert a read checkpoint and its statistics for the data layout `layout` (checked against the task)."""
    check_layout(checkpoint, layout)
    stats = read_statistics(stats_dir, layout, list(checkpoint.task.get("forcing_variables", [])))
    normalizer = Normalizer.from_stats(stats, layout)
    return ImportedTeacher(model=model_config(checkpoint), sampler=sampler_config(checkpoint),
                           noise=noise_config(checkpoint), normalizer=normalizer, stats=stats,
                           params=convert_params(checkpoint, layout, stats))
