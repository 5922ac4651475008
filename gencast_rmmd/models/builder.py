"""Build the denoiser network for a grid: graphs, attention structure, haiku transform.

The geometry (numpy) is computed once per (grid, refinement) and cached by
`gencast_rmmd.geometry`; the attention structure follows
`model.processor.attention` (dense mask for small meshes, block-sparse banded
blocks for big ones).
"""

from __future__ import annotations

import numpy as np

from gencast_rmmd.geometry import build_graphs, khop_block_layout, khop_mask
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.models.denoiser import DenoiserNetwork, build_network


def attention_structure(config: ModelConfig, graphs) -> dict:
    """The processor's k-hop attention as constants: {'mask'} or block-sparse arrays."""
    processor = config.processor
    if processor.attention == "dense":
        return {"mask": khop_mask(graphs, processor.k_hop)}
    layout = khop_block_layout(graphs, processor.k_hop, processor.block_size)
    return {"key_blocks": layout.key_blocks, "block_masks": layout.block_masks,
            "block_size": layout.block_size, "padded_nodes": layout.n_blocks * layout.block_size}


def network_for_grid(config: ModelConfig, latitude: np.ndarray, longitude: np.ndarray,
                     n_outputs: int) -> DenoiserNetwork:
    """The denoiser network on a lat/lon grid (latitude ascending), `n_outputs` target channels."""
    graphs = build_graphs(np.asarray(latitude), np.asarray(longitude), config.mesh_refinement,
                          radius_fraction=config.radius_fraction)
    return build_network(config, graphs, attention_structure(config, graphs), n_outputs)
