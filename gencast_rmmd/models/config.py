"""Model configuration schema: every size of the denoiser is configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_serializer, model_validator

from gencast_rmmd.config import StrictModel


class NoiseEncoderConfig(StrictModel):
    """log(sigma) -> Fourier features (k / base_period, k = 1..num_frequencies) -> MLP."""

    base_period: float = Field(16.0, gt=0.0)
    num_frequencies: int = Field(32, ge=1)
    output_sizes: tuple[int, ...] = (32, 16)


class ProcessorConfig(StrictModel):
    """Pre-LN transformer over mesh nodes, attention restricted to the k-hop neighbourhood."""

    num_layers: int = Field(16, ge=1)
    num_heads: int = Field(4, ge=1)
    ffw_hidden: int = Field(2048, ge=1)
    k_hop: int = Field(16, ge=1)
    # dense: an [N, N] mask; banded: one contiguous key window per block of `block_size` queries
    # (small meshes, fastest on CPU); block_sparse: gathered key blocks (big meshes). Same function.
    attention: Literal["dense", "banded", "block_sparse"] = "dense"
    block_size: int = Field(128, ge=8)


# The keys where DeepMind's GenCast (graphcast 0.2) differs from this package's original denoiser, with the
# original as default. A config that leaves them at their defaults serialises without them, so the hashes
# of existing runs and pipeline stages, and shipped weights packages, are unchanged.
GENCAST_VARIANT: dict[str, object] = {
    "graphs": "graphcast",
    "receiver_aggregate": "edge_mlp_outputs",
    "processor_final_norm": True,
    "output_head": "mlp",
}


class ModelConfig(StrictModel):
    """The GenCast-style graph denoiser: encoder (grid->mesh), processor (mesh), decoder (mesh->grid).

    The last four keys select where DeepMind's GenCast differs (`GENCAST_VARIANT` sets all of them):
    - `graphs`: `rmmd` (a vertex on each pole, every mesh node fed by the grid) or `graphcast`
      (graphcast's mesh with a face at each pole and its grid<->mesh edges, `geometry.graphcast_graphs`);
    - `receiver_aggregate`: what a receiver sums over its incoming edges in the encoder and decoder,
      `updated_edge_latents` (e + MLP_e(...)) or `edge_mlp_outputs` (MLP_e(...) alone, graphcast);
    - `processor_final_norm`: a FiLM-conditioned LayerNorm after the last transformer block (graphcast);
    - `output_head`: `linear` (one linear map to the targets) or `mlp` (`hidden_layers` swish layers of
      `latent_size`, then the linear map: graphcast's grid-node decoder MLP).
    """

    mesh_refinement: int = Field(..., ge=0, le=7)
    radius_fraction: float = Field(0.6, gt=0.0)   # grid->mesh radius / longest mesh edge
    latent_size: int = Field(512, ge=1)            # d_model of the processor too
    hidden_layers: int = Field(1, ge=1)            # hidden layers of every MLP
    processor: ProcessorConfig = ProcessorConfig()
    noise_encoder: NoiseEncoderConfig = NoiseEncoderConfig()
    graphs: Literal["rmmd", "graphcast"] = "rmmd"
    receiver_aggregate: Literal["updated_edge_latents", "edge_mlp_outputs"] = "updated_edge_latents"
    processor_final_norm: bool = False
    output_head: Literal["linear", "mlp"] = "linear"

    @model_serializer(mode="wrap")
    def _without_original_defaults(self, handler):
        """Leave out the GenCast-variant keys that hold this package's original behaviour."""
        dumped = handler(self)
        for key in GENCAST_VARIANT:
            if key in dumped and getattr(self, key) == type(self).model_fields[key].default:
                del dumped[key]
        return dumped

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.latent_size % self.processor.num_heads:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by "
                             f"processor.num_heads {self.processor.num_heads}")
        return self
