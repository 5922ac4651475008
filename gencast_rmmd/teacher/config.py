"""The teacher config file (`configs/teacher/*.yaml`): data, model, diffusion, sampler, training."""

from __future__ import annotations

from gencast_rmmd.config import DataConfig, StrictModel
from gencast_rmmd.diffusion.config import LossConfig, NoiseConfig, SamplerConfig
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.training.config import DistributedConfig, TrainConfig


class TeacherConfig(StrictModel):
    """Everything needed to train the teacher and to rebuild it from a checkpoint.

    `data` and `model` may be written as paths to `configs/data/*.yaml` and
    `configs/model/*.yaml`; `--set` overrides apply after they are read.
    `stats` names a statistics NetCDF; unset, statistics are computed from the
    training split and saved in the run directory.
    """

    seed: int = 0
    data: DataConfig
    model: ModelConfig
    noise: NoiseConfig = NoiseConfig()
    loss: LossConfig = LossConfig()
    sampler: SamplerConfig = SamplerConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    stats: str | None = None
