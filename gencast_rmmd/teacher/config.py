"""The teacher config file (`configs/teacher/*.yaml`): data, model, diffusion, sampler, training."""

from __future__ import annotations

from pydantic import Field, model_validator

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

    @model_validator(mode="after")
    def _loss_weights_name_targets(self) -> "TeacherConfig":
        """A weight for a variable the model does not predict is a typo: refuse it here, before any data are read.

        The loss itself only meets the names when it is first traced, after the
        statistics and the graphs have been built.
        """
        targets = self.data.variables.time_varying
        unknown = sorted(set(self.loss.variable_weights) - set(targets))
        if unknown:
            raise ValueError(f"loss.variable_weights names {', '.join(unknown)}, not a target variable of the data; "
                             f"use one of {', '.join(targets)}")
        return self
