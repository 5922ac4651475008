"""The GenCast-style graph denoiser network F(x; sigma, cond), as haiku modules (docs/DESIGN.md §4).

- `config`: `ModelConfig`, every size of the network (and `GENCAST_VARIANT`, DeepMind's GenCast exactly);
- `builder`: `network_for_grid`, the entry point: graphs and attention structure for a lat/lon grid, then
  the transformed network (`DenoiserNetwork`); `count_parameters` sizes a config without building graphs;
- `denoiser`: `DenoiserNetwork` and the encoder -> processor -> decoder core;
- `graph_net`: the interaction-network step of the encoder and decoder;
- `transformer`: the k-hop restricted mesh transformer (dense, banded or block-sparse attention);
- `layers`: FiLM-conditioned LayerNorm, MLPs and the noise-level encoder.

The network is the raw F of EDM; `gencast_rmmd.diffusion.preconditioning` turns
it into a `Denoiser`. Graphs come from `gencast_rmmd.geometry` (numpy, no JAX).
"""
