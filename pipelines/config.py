"""The pipeline config file (`configs/pipelines/*.yaml`) and the per-stage configs it resolves to.

A pipeline config names the product configs each stage uses and overrides
some of their values; it never repeats them:

    data:     {config: configs/data/demo.yaml, simulate: true, overrides: {levels: [500, 850]}}
    teacher:  {config: configs/teacher/demo.yaml, overrides: {train: {steps: 1500}}}
    distill:  {rmmd: {config: configs/distill/rmmd.yaml, overrides: {train: {steps: 300}}}}
    forecast: {steps: 10, members: 4, inits: {count: 12, every_hours: 48}}
    baselines, reference, evaluate, speed, scorecard, distributed, runtime (see the classes)

`overrides` are nested mappings merged into the named config, so every value
is reachable with `--set`, e.g. `--set distill.rmmd.overrides.train.steps=50`.
`resolve(...)` turns the pipeline config into validated data, teacher and
distill configs: the pipeline's data section replaces the teacher's, the
statistics file of stage `stats` is the teacher's, and the `distributed`
settings go to every training stage. The resolved configs are written into
the work directory (`DIR/configs/`) and are what the stages run with.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from gencast_rmmd.config import REPO_ROOT, DataConfig, DataFileConfig, StrictModel, config_to_dict, load_config
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training.config import DistributedConfig

STATS_FILE = "stats/stats.nc"          # written by stage `stats`, relative to the work directory
RESERVED_LABELS = ("teacher", "reference", "persistence", "climatology")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class DataSection(StrictModel):
    """Stage 1: which data config, which store, and whether the store is the simulated embedded dataset.

    `simulate: true`: write the store with `gencast-rmmd data simulate` when it
    is missing (or reuse it when the simulator made it); a store from elsewhere
    at `path` (e.g. ERA5 given with `--data`) is opened as it is. Remote stores
    (`gs://...`) are never simulated.
    """

    config: str                                   # a configs/data/*.yaml file
    path: str | None = None                       # the store; default: the data config's data.path
    simulate: bool = False
    overrides: dict[str, Any] = {}                # merged into the data config's `data:` section


class ConfigSection(StrictModel):
    """A product config file (teacher or distiller) and values overriding it."""

    config: str
    overrides: dict[str, Any] = {}


class InitsSection(StrictModel):
    """Forecast initialisation times: explicit `times`, else every `every_hours` through the test split.

    An init qualifies when its input frames and all its lead times are in the
    store and its last lead is inside the test split; `count` keeps the first N.
    """

    count: int | None = Field(None, ge=1)
    every_hours: int = Field(24, ge=1)
    times: tuple[str, ...] = ()


class ForecastSection(StrictModel):
    steps: int = Field(10, ge=1)                  # lead steps (data.step_hours each)
    members: int = Field(4, ge=1)
    seed: int = 0
    inits: InitsSection = InitsSection()


class BaselinesSection(StrictModel):
    """Forecasts from the truth alone. Persistence is the baseline of the teacher's scorecard."""

    climatology: bool = True
    climatology_members: int | None = Field(None, ge=1)   # default: forecast.members


class ReferenceSection(StrictModel):
    """The perfect-model reference: simulator members from the same inits (simulated data only)."""

    enabled: bool = True
    members: int = Field(8, ge=1)


class EvaluateSection(StrictModel):
    """Stage 6. With `dask_scheduler` ("tcp://host:8786") scoring runs on that dask.distributed cluster."""

    dask_scheduler: str | None = None
    regions: tuple[str, ...] = ()                 # default: every region
    variables: tuple[str, ...] = ()               # default: every variable of the forecast


class SpeedSection(StrictModel):
    """Step timings of teacher and students for the scorecard's speed table (medians of `repeats`)."""

    enabled: bool = True
    members: int = Field(2, ge=1)
    inits: int = Field(1, ge=1)
    repeats: int = Field(3, ge=1)


class ScorecardSection(StrictModel):
    region: str = "global"


class PipelineDistributed(DistributedConfig):
    """Where training runs: jax.distributed settings (multi-host) and, on CPU, a forced device count.

    `cpu_devices: N` runs training stages with N host-platform devices
    (XLA_FLAGS=--xla_force_host_platform_device_count=N), e.g. to check data
    parallelism on one CPU. Neither changes a stage's identity.
    """

    cpu_devices: int | None = Field(None, ge=1)


class RuntimeSection(StrictModel):
    """How stages run. `compilation_cache`: JAX's persistent compilation cache (null: off)."""

    compilation_cache: str | None = "~/.cache/gencast_rmmd/jax"


class PipelineConfig(StrictModel):
    """A `configs/pipelines/*.yaml` file."""

    name: str | None = None                       # default: the config file's stem
    data: DataSection
    teacher: ConfigSection
    distill: dict[str, ConfigSection] = {}
    forecast: ForecastSection = ForecastSection()
    baselines: BaselinesSection = BaselinesSection()
    reference: ReferenceSection = ReferenceSection()
    evaluate: EvaluateSection = EvaluateSection()
    speed: SpeedSection = SpeedSection()
    scorecard: ScorecardSection = ScorecardSection()
    distributed: PipelineDistributed = PipelineDistributed()
    runtime: RuntimeSection = RuntimeSection()

    @field_validator("distill")
    @classmethod
    def _distiller_names(cls, distill: dict[str, ConfigSection]) -> dict[str, ConfigSection]:
        for name in distill:
            if not _NAME.match(name) or name in RESERVED_LABELS:
                raise ValueError(f"distiller name {name!r} must be lower-case letters, digits and _ "
                                 f"and not one of {', '.join(RESERVED_LABELS)}")
        return distill

    @model_validator(mode="after")
    def _overrides_stay_in_their_lane(self) -> "PipelineConfig":
        for owner, section in [("teacher", self.teacher), *((f"distill.{n}", s) for n, s in self.distill.items())]:
            for key in ("data", "stats", "distributed"):
                if key in section.overrides:
                    raise ValueError(f"{owner}.overrides.{key}: set {key} in the pipeline's own "
                                     f"{'data' if key != 'distributed' else 'distributed'} section")
        return self


def load_pipeline_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                         data: str | None = None) -> PipelineConfig:
    """Load a pipeline config with `--set` overrides; `--data URL` is `--set data.path=URL`."""
    return load_config(path, PipelineConfig, list(overrides), data)


# --------------------------------------------------------------------------- resolution


def flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """`{train: {steps: 5}}` -> `["train.steps=5"]` (values as JSON, which `--set` reads as YAML)."""
    flat = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat += flatten_overrides(value, f"{dotted}.")
        else:
            flat.append(f"{dotted}={json.dumps(value)}")
    return flat


def find_config_file(reference: str, pipeline_file: Path) -> Path:
    """A referenced config: absolute, or relative to the pipeline file, the current directory or the repo."""
    candidate = Path(reference).expanduser()
    bases = (Path("/"),) if candidate.is_absolute() else (pipeline_file.parent, Path.cwd(), REPO_ROOT)
    for base in bases:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    raise UserInputError(f"{pipeline_file}: config file {reference} does not exist")


def absolute_store(path: str) -> str:
    """Local store paths made absolute (stages run inside the work directory); URLs unchanged."""
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class ResolvedConfigs:
    """Validated configs of every stage, as written to `DIR/configs/`."""

    data: DataConfig
    teacher: Any                      # TeacherConfig
    distill: dict[str, Any]           # name -> DistillConfig

    def files(self) -> dict[str, dict]:
        """File name (in DIR/configs/) -> content."""
        files = {"data.yaml": {"data": config_to_dict(self.data)}, "teacher.yaml": config_to_dict(self.teacher)}
        files.update({f"distill.{name}.yaml": config_to_dict(config) for name, config in self.distill.items()})
        return files


def resolve(config: PipelineConfig, pipeline_file: str | Path) -> ResolvedConfigs:
    """The data, teacher and distill configs the pipeline's stages run with (UserInputError naming a bad value)."""
    from gencast_rmmd.distill.config import DistillConfig
    from gencast_rmmd.teacher.config import TeacherConfig

    pipeline_file = Path(pipeline_file)
    data_file = find_config_file(config.data.config, pipeline_file)
    data = load_config(data_file, DataFileConfig, flatten_overrides(config.data.overrides, "data."),
                       config.data.path).data
    data = data.model_copy(update={"path": absolute_store(data.path)})
    distributed = config.distributed.model_dump(mode="json", exclude={"cpu_devices"})
    shared = [f"data={json.dumps(config_to_dict(data))}", f"distributed={json.dumps(distributed)}"]
    teacher = load_config(find_config_file(config.teacher.config, pipeline_file), TeacherConfig,
                          [*flatten_overrides(config.teacher.overrides), *shared, f"stats={STATS_FILE}"])
    distill = {}
    for name, section in config.distill.items():
        distill_config = load_config(find_config_file(section.config, pipeline_file), DistillConfig,
                                     [*flatten_overrides(section.overrides), shared[1]])
        if distill_config.distill.is_sweep:
            raise UserInputError(f"distill.{name}: a reward-weight sweep ({list(distill_config.distill.reward_weight)})"
                                 " is one student per value; give one distiller entry per reward weight")
        distill[name] = distill_config
    return ResolvedConfigs(data, teacher, distill)
