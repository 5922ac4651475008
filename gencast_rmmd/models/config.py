"""Model configuration schema: every size of the denoiser is configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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


class ModelConfig(StrictModel):
    """The GenCast-style graph denoiser: encoder (grid->mesh), processor (mesh), decoder (mesh->grid)."""

    mesh_refinement: int = Field(..., ge=0, le=7)
    radius_fraction: float = Field(0.6, gt=0.0)   # grid->mesh radius / longest mesh edge
    latent_size: int = Field(512, ge=1)            # d_model of the processor too
    hidden_layers: int = Field(1, ge=1)            # hidden layers of every MLP
    processor: ProcessorConfig = ProcessorConfig()
    noise_encoder: NoiseEncoderConfig = NoiseEncoderConfig()

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.latent_size % self.processor.num_heads:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by "
                             f"processor.num_heads {self.processor.num_heads}")
        return self
