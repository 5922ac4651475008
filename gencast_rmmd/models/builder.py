"""Build the denoiser network for a grid: graphs, attention structure, haiku transform.

The geometry (numpy) is computed once per (grid, refinement) and cached by
`gencast_rmmd.geometry`; the attention structure follows
`model.processor.attention` (a dense mask or banded key windows for small
meshes, block-sparse banded blocks for big ones).
"""

from __future__ import annotations

import numpy as np

from gencast_rmmd.geometry import build_graphs, khop_band_layout, khop_block_layout, khop_mask
from gencast_rmmd.geometry.graphcast_graphs import build_graphcast_graphs
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.models.denoiser import DenoiserNetwork, build_network
from gencast_rmmd.models.transformer import AttentionLayout, BandedAttention, BlockSparseAttention, DenseAttention


def _dense(graphs, k_hop: int, block_size: int) -> DenseAttention:
    return DenseAttention(khop_mask(graphs, k_hop))


def _banded(graphs, k_hop: int, block_size: int) -> BandedAttention:
    bands = khop_band_layout(graphs, k_hop, block_size)
    return BandedAttention(bands.windows, bands.masks)


def _block_sparse(graphs, k_hop: int, block_size: int) -> BlockSparseAttention:
    layout = khop_block_layout(graphs, k_hop, block_size)
    return BlockSparseAttention(layout.key_blocks, layout.block_masks, layout.block_size,
                                layout.n_blocks * layout.block_size)


# `model.processor.attention` -> (graphs, k_hop, block_size) -> the layout's constants
ATTENTION_LAYOUTS = {"dense": _dense, "banded": _banded, "block_sparse": _block_sparse}


def attention_structure(config: ModelConfig, graphs) -> AttentionLayout:
    """The processor's k-hop attention on these graphs, as `config.processor.attention` names it."""
    processor = config.processor
    return ATTENTION_LAYOUTS[processor.attention](graphs, processor.k_hop, processor.block_size)


# `model.graphs` -> (latitude, longitude, refinement, radius_fraction) -> MeshGraphs
GRAPH_BUILDERS = {
    "rmmd": build_graphs,
    "graphcast": build_graphcast_graphs,
}


def graphs_for_grid(config: ModelConfig, latitude: np.ndarray, longitude: np.ndarray):
    """The model's three graphs on a lat/lon grid (latitude ascending), built as `config.graphs` says."""
    return GRAPH_BUILDERS[config.graphs](np.asarray(latitude), np.asarray(longitude), config.mesh_refinement,
                                         radius_fraction=config.radius_fraction)


def network_for_grid(config: ModelConfig, latitude: np.ndarray, longitude: np.ndarray,
                     n_outputs: int) -> DenoiserNetwork:
    """The denoiser network on a lat/lon grid (latitude ascending), `n_outputs` target channels."""
    graphs = graphs_for_grid(config, latitude, longitude)
    return build_network(config, graphs, attention_structure(config, graphs), n_outputs)


def count_parameters(config: ModelConfig, n_grid_features: int, n_outputs: int) -> int:
    """Parameter count of the denoiser, without building its (possibly huge) graphs.

    Every parameter belongs to a per-node or per-edge MLP, the noise encoder or
    the processor, so shapes do not depend on the grid or mesh size: the count
    is taken from an abstract init (`jax.eval_shape`) on a small stand-in grid
    and mesh with the same widths.
    """
    import jax
    import jax.numpy as jnp

    from gencast_rmmd.diffusion.base import Conditioning
    from gencast_rmmd.models.denoiser import parameter_count

    small = config.model_copy(update={"mesh_refinement": 1,
                                      "processor": config.processor.model_copy(update={"attention": "dense"})})
    latitude, longitude = np.linspace(-67.5, 67.5, 4), np.arange(8) * 45.0
    network = network_for_grid(small, latitude, longitude, n_outputs)
    shape = (1, len(latitude), len(longitude))
    conditioning = Conditioning(jnp.zeros((*shape, n_grid_features - n_outputs)), jnp.zeros((*shape, 0)),
                                jnp.zeros((*shape[1:], 0)))
    abstract = jax.eval_shape(network.init, jax.random.PRNGKey(0), jnp.zeros((*shape, n_outputs)),
                              jnp.ones((1,)), conditioning)
    return parameter_count(abstract)
