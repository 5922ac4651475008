"""The GenCast-style graph denoiser network F(x; sigma, cond).

Grid node features are the stacked channels of the normalised input frames,
the forcings at the target time, the static fields and the (c_in-scaled) noisy
targets, plus the structural features (sin lat, cos lon, sin lon). Then:
1. encoder: embed grid nodes, mesh nodes and grid->mesh edges, one
   interaction-network step onto the mesh (grid latents updated too);
2. processor: the k-hop sparse transformer over mesh nodes;
3. decoder: embed mesh->grid edges (each grid point reads the 3 vertices of its
   mesh triangle), one interaction-network step onto the grid, a linear map
   (or, `output_head: mlp`, a swish MLP) to the target channels.
All LayerNorms are FiLM-conditioned on the noise-level encoding. The network
is the raw F of EDM; preconditioning wraps it (`gencast_rmmd.diffusion`).
"""

from __future__ import annotations

from dataclasses import dataclass

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.models.graph_net import InteractionNetwork
from gencast_rmmd.models.layers import ConditionedMLP, NoiseLevelEncoder
from gencast_rmmd.models.transformer import AttentionLayout, MeshTransformer


class GraphDenoiserCore(hk.Module):
    """Encoder -> processor -> decoder on one example: [G, F_in] grid features -> [G, C_out]."""

    def __init__(self, config: ModelConfig, graphs, attention: AttentionLayout, n_outputs: int, name: str = "denoiser"):
        super().__init__(name=name)
        self._config, self._graphs, self._attention, self._n_outputs = config, graphs, attention, n_outputs

    def __call__(self, grid_features: jax.Array, conditioning: jax.Array) -> jax.Array:
        config, graphs = self._config, self._graphs
        latent, hidden = config.latent_size, config.hidden_layers
        embed = lambda name, x: ConditionedMLP(latent, latent, hidden, name=name)(x, conditioning)  # noqa: E731
        dtype = grid_features.dtype
        constant = lambda array: jnp.asarray(array, dtype=dtype)  # noqa: E731
        grid = embed("grid_node_embed", jnp.concatenate(
            [grid_features, constant(graphs.grid_node_features)], axis=-1))
        mesh = embed("mesh_node_embed", constant(graphs.mesh_node_features))
        grid2mesh = embed("grid2mesh_edge_embed", constant(graphs.grid2mesh_edge_features))
        aggregate = config.receiver_aggregate
        grid, mesh, _ = InteractionNetwork(latent, hidden, update_senders=True, aggregate=aggregate, name="encoder")(
            grid, mesh, grid2mesh, graphs.grid2mesh_senders, graphs.grid2mesh_receivers, conditioning)
        processor = config.processor
        mesh = MeshTransformer(processor.num_layers, processor.num_heads, processor.ffw_hidden,
                               final_norm=config.processor_final_norm, name="processor")(
            mesh, conditioning, self._attention)
        mesh2grid = embed("mesh2grid_edge_embed", constant(graphs.mesh2grid_edge_features))
        _, grid, _ = InteractionNetwork(latent, hidden, update_senders=False, aggregate=aggregate, name="decoder")(
            mesh, grid, mesh2grid, graphs.mesh2grid_senders, graphs.mesh2grid_receivers, conditioning)
        if config.output_head == "mlp":
            return hk.nets.MLP([latent] * hidden + [self._n_outputs], activation=jax.nn.swish,
                               name="output_mlp")(grid)
        return hk.Linear(self._n_outputs, name="output")(grid)


def grid_node_inputs(scaled_noisy_targets: jax.Array, conditioning: Conditioning) -> jax.Array:
    """Stack [inputs, forcings, static, noisy targets] channels: [B, lat, lon, F_in]."""
    batch = scaled_noisy_targets.shape[0]
    static = jnp.broadcast_to(conditioning.static, (batch, *conditioning.static.shape))
    return jnp.concatenate([conditioning.inputs, conditioning.forcings, static.astype(conditioning.inputs.dtype),
                            scaled_noisy_targets], axis=-1)


@dataclass(frozen=True)
class DenoiserNetwork:
    """A built network: `apply(params, scaled_noisy, noise_level, conditioning) -> F output`."""

    config: ModelConfig
    transformed: hk.Transformed

    def init(self, key: jax.Array, scaled_noisy: jax.Array, noise_level: jax.Array,
             conditioning: Conditioning) -> hk.Params:
        return self.transformed.init(key, scaled_noisy, noise_level, conditioning)

    def apply(self, params: hk.Params, scaled_noisy: jax.Array, noise_level: jax.Array,
              conditioning: Conditioning) -> jax.Array:
        return self.transformed.apply(params, scaled_noisy, noise_level, conditioning)


def build_network(config: ModelConfig, graphs, attention: AttentionLayout, n_outputs: int) -> DenoiserNetwork:
    """Haiku-transform the denoiser for fixed graphs (numpy constants) and attention structure."""

    def forward(scaled_noisy: jax.Array, noise_level: jax.Array, conditioning: Conditioning) -> jax.Array:
        batch, n_lat, n_lon, channels = scaled_noisy.shape
        features = grid_node_inputs(scaled_noisy, conditioning).reshape(batch, n_lat * n_lon, -1)
        encoder = config.noise_encoder
        noise_encoding = NoiseLevelEncoder(encoder.base_period, encoder.num_frequencies, encoder.output_sizes,
                                           name="noise_level_encoder")(noise_level)
        core = GraphDenoiserCore(config, graphs, attention, n_outputs)
        outputs = hk.vmap(core, split_rng=False)(features, noise_encoding.astype(features.dtype))
        return outputs.reshape(batch, n_lat, n_lon, n_outputs)

    return DenoiserNetwork(config, hk.without_apply_rng(hk.transform(forward)))


def parameter_count(params: hk.Params) -> int:
    """Total number of scalar parameters."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
