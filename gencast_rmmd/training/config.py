"""Config sections of the training loop: `train:` and `distributed:`.

The top-level teacher / distillation files are assembled elsewhere from these
sections plus `seed`, `data`, `model`, ... Keys the rest of the project relies
on: `seed`, `train.steps`, `train.checkpoint_every`, `train.batch_size`,
`train.learning_rate`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gencast_rmmd.config import StrictModel


class OptimizerConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay to zero, after global-norm gradient clipping.

    With c the number of updates applied so far (skipped non-finite steps do
    not count), W = warmup_steps and T = train.steps, the learning rate is
    `learning_rate * c / W` for c < W, then
    `learning_rate * (1 + cos(pi * (c - W) / (T - W))) / 2` (optax
    `warmup_cosine_decay_schedule`, end value 0).
    """

    learning_rate: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    b1: float = Field(0.9, ge=0.0, lt=1.0)
    b2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip_norm: float = Field(1.0, gt=0.0)


class TrainConfig(OptimizerConfig):
    """The `train:` section: optimiser (inherited fields), schedule of steps, checkpoints, logging.

    Every `*_every` is in optimiser steps; 0 disables validation.
    """

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1)                 # global batch, split over all devices
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # ema <- d * ema + (1 - d) * params, d = min(decay, (1+n)/(10+n))
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)           # the newest N are kept, plus the best on validation
    validate_every: int = Field(0, ge=0)
    validation_batches: int = Field(4, ge=1)
    log_every: int = Field(10, ge=1)
    max_consecutive_nonfinite: int = Field(10, ge=1)
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    progress: bool = True

    @model_validator(mode="after")
    def _warmup_within_run(self) -> "TrainConfig":
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        return self

    @property
    def optimizer(self) -> OptimizerConfig:
        """The optimiser part of this section (the default for every update rule)."""
        return OptimizerConfig(**{name: getattr(self, name) for name in OptimizerConfig.model_fields})


class DistributedConfig(StrictModel):
    """The `distributed:` section: multi-host data parallelism through `jax.distributed.initialize`.

    Leave `coordinator_address` unset for a single process (all local devices
    are still used). When set, every process runs the same command with its own
    `process_id`; process 0 writes checkpoints and logs.
    """

    coordinator_address: str | None = None   # "host:port" of process 0
    num_processes: int | None = Field(None, ge=1)
    process_id: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> "DistributedConfig":
        given = [value is not None for value in (self.coordinator_address, self.num_processes, self.process_id)]
        if any(given) and not all(given):
            raise ValueError("give coordinator_address, num_processes and process_id together (or none of them)")
        if all(given) and self.process_id >= self.num_processes:
            raise ValueError(f"process_id {self.process_id} must be smaller than num_processes {self.num_processes}")
        return self

    @property
    def enabled(self) -> bool:
        return self.coordinator_address is not None
