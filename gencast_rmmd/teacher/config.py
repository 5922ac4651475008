"""The teacher config file (`configs/teacher/*.yaml`): data, model, diffusion, sampler, training."""

from __future__ import annotations

from pydantic import Field

from gencast_rmmd.config import DataConfig, StrictModel
from gencast_rmmd.diffusion.config import LossConfig, NoiseConfig, SamplerConfig
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.training.config import DistributedConfig, TrainConfig


class TeacherConfig(StrictModel):
    """Everything needed to train the teacher and to rebuild it from a checkpoint.

    `data` and `model` may be written as paths to `configs/data/*.yaml` and
    `configs/model/*.yaml`; `--set` overrides apply after they are read.
    `stats` names a statistics NetCDF; unset, statistics are computed from the
    training split and saved in the run directory. `input_perturbation` > 0
    perturbs the input frames during training (not validation) with spherical
    noise of that many 12 h-change standard deviations (`diffs_std`) per
    channel; 0 is GenCast's training (see `gencast_rmmd.teacher.task`).
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
    input_perturbation: float = Field(0.0, ge=0.0)
