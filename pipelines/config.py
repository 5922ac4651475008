"""The pipeline config file (`configs/pipelines/*.yaml`) and the per-stage configs it resolves to.

A pipeline config names the product configs each stage uses and overrides
some of their values; it never repeats them:

    data:     {config: configs/data/demo.yaml, simulate: true, overrides: {levels: [500, 850]}}
    teacher:  {config: configs/teacher/demo.yaml, overrides: {train: {steps: 1500}}}
    distill:  {rmmd: {config: configs/distill/rmmd.yaml, overrides: {train: {steps: 300}}}}
    forecast: {steps: 10, members: 4, inits: {count: 12, every_hours: 48}}
    validation: {steps: 10, members: 4, inits: {count: 8, spacing: even}}      (optional)
    teacher_samplers: {teacher_7calls: {sampler: {num_noise_levels: 4}}}      (optional)
    baselines, reference, evaluate, speed, scorecard, distributed, runtime (see the classes)

Choices are made on validation inits and test inits are scored once per
final config: a distiller entry may carry `grid:` (candidates trained,
forecast on the validation split and the one with the lowest fair-CRPS change
against the teacher chosen: `pipelines.grid`, `pipelines.selection`),
`seeds:` (extra training seeds of the chosen config) and `from: OTHER` (its
`--teacher` is OTHER's chosen phase-1 run). Teacher sampler rows forecast the
teacher with other sampler settings (`grid:` over them works the same way).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gencast_rmmd.config import (REPO_ROOT, DataConfig, DataFileConfig, StrictModel, apply_overrides, config_to_dict,
                                 load_config, validate_config)
from gencast_rmmd.diffusion.config import SamplerConfig
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training.config import DistributedConfig
from pipelines.grid import Grid, Row, expand_row

STATS_FILE = "stats/stats.nc"          # written by stage `stats`, relative to the work directory
RESERVED_LABELS = ("teacher", "reference", "persistence", "climatology", "inits")
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


class DistillEntry(ConfigSection):
    """A distiller (`distill.NAME`): its config and overrides, and optionally how it is chosen.

    `grid`: dotted keys of the distill config and their candidate values
    (`pipelines.grid`: one training run per candidate, the one with the lowest
    validation fair-CRPS change against the teacher is chosen); `seeds`: extra
    training seeds of the chosen config (rows `NAME_seedS`); `from`: another
    distiller entry (a phase-1 `mmd` one) whose chosen run this entry starts
    from instead of the teacher: a phase-2 method fine-tunes it (no phase 1 of
    its own), an `mmd` entry continues its moment matching.
    """

    model_config = ConfigDict(serialize_by_alias=True)

    grid: Grid = {}
    seeds: tuple[int, ...] = ()
    from_entry: str | None = Field(None, alias="from")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {list(seeds)} repeat one another")
        return seeds


class TeacherSamplerEntry(StrictModel):
    """A row of the teacher with other sampler settings (`teacher_samplers.LABEL`), e.g. fewer denoiser calls.

    `sampler` overrides keys of the teacher's sampler config
    (`gencast_rmmd.diffusion.config.SamplerConfig`: num_noise_levels, churn, ...);
    `grid` (keys `sampler.KEY`) chooses among candidates on validation as for a distiller.
    """

    sampler: dict[str, Any] = {}
    grid: Grid = {}


class TeacherSamplerConfig(StrictModel):
    """The config of a teacher sampler candidate: the teacher's sampler with the row's overrides."""

    sampler: SamplerConfig


class InitsSection(StrictModel):
    """Forecast initialisation times: explicit `times`, else every `every_hours` through the split.

    An init qualifies when its input frames and all its lead times are in the
    store and its last lead is inside the split. `spacing: first` keeps the first
    `count` qualifying inits at least `every_hours` apart; `even` picks `count` of
    those (all of the split, not only its start) at evenly spaced positions.
    """

    count: int | None = Field(None, ge=1)
    every_hours: int = Field(24, ge=1)
    times: tuple[str, ...] = ()
    spacing: Literal["first", "even"] = "first"


class ForecastSection(StrictModel):
    steps: int = Field(10, ge=1)                  # lead steps (data.step_hours each)
    members: int = Field(4, ge=1)
    seed: int = 0
    inits: InitsSection = InitsSection()


class ValidationSection(StrictModel):
    """Forecasts on the validation split, on which every choice is made (absent: no validation forecasts).

    `steps` and `members` default to the test forecasts'; `region` is the one
    the selection scores (its mean fair-CRPS change against the teacher).
    """

    steps: int | None = Field(None, ge=1)
    members: int | None = Field(None, ge=1)
    seed: int = 0
    inits: InitsSection = InitsSection()
    region: str = "global"


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
    distill: dict[str, DistillEntry] = {}
    teacher_samplers: dict[str, TeacherSamplerEntry] = {}
    forecast: ForecastSection = ForecastSection()
    validation: ValidationSection | None = None
    baselines: BaselinesSection = BaselinesSection()
    reference: ReferenceSection = ReferenceSection()
    evaluate: EvaluateSection = EvaluateSection()
    speed: SpeedSection = SpeedSection()
    scorecard: ScorecardSection = ScorecardSection()
    distributed: PipelineDistributed = PipelineDistributed()
    runtime: RuntimeSection = RuntimeSection()

    @field_validator("distill", "teacher_samplers")
    @classmethod
    def _row_names(cls, rows: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for name in rows:
            if not _NAME.match(name) or name in RESERVED_LABELS:
                raise ValueError(f"{info.field_name} entry {name!r} must be lower-case letters, digits and _ "
                                 f"and not one of {', '.join(RESERVED_LABELS)}")
        return rows

    @model_validator(mode="after")
    def _overrides_stay_in_their_lane(self) -> "PipelineConfig":
        for owner, section in [("teacher", self.teacher), *((f"distill.{n}", s) for n, s in self.distill.items())]:
            grid_sections = {key.split(".", 1)[0] for key in getattr(section, "grid", {})}
            for where, keys in (("overrides", set(section.overrides)), ("grid", grid_sections)):
                for key in ("data", "stats", "distributed"):
                    if key in keys:
                        raise ValueError(f"{owner}.{where}.{key}: set {key} in the pipeline's own "
                                         f"{'data' if key != 'distributed' else 'distributed'} section")
        return self

    @model_validator(mode="after")
    def _rows_are_consistent(self) -> "PipelineConfig":
        labels = list(RESERVED_LABELS)
        for name, entry in self.distill.items():
            labels += [name, *(f"{name}_seed{seed}" for seed in entry.seeds)]
        labels += list(self.teacher_samplers)
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"the rows {', '.join(repeated)} have the same label; rename a distill or "
                             "teacher_samplers entry (seed rows are labelled NAME_seedS)")
        distill_order(self.distill)                   # `from` names an entry, without a cycle
        if self.validation is None:
            for owner, entry in [*((f"distill.{n}", e) for n, e in self.distill.items()),
                                 *((f"teacher_samplers.{n}", e) for n, e in self.teacher_samplers.items())]:
                if entry.grid:
                    raise ValueError(f"{owner}.grid: candidates are chosen on validation inits; add a "
                                     "`validation:` section")
        return self


def distill_order(distill: dict[str, DistillEntry]) -> list[str]:
    """Distiller names in declaration order, except that an entry comes after the entry it starts `from`.

    Raises ValueError for a `from` that names no entry or closes a cycle.
    """
    order: list[str] = []

    def place(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        source = distill[name].from_entry
        if source is not None:
            if source not in distill:
                raise ValueError(f"distill.{name}.from: no distiller entry {source!r}; entries: "
                                 f"{', '.join(distill)}")
            if source in (*chain, name):
                raise ValueError(f"distill.{name}.from: the entries start from one another in a cycle "
                                 f"({' -> '.join((*chain, name, source))})")
            place(source, (*chain, name))
        order.append(name)

    for name in distill:
        place(name, ())
    return order


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
    distill: dict[str, Row]           # distiller rows, each after the entry it starts `from`
    teacher_samplers: dict[str, Row] = field(default_factory=dict)

    @property
    def rows(self) -> list[Row]:
        return [*self.distill.values(), *self.teacher_samplers.values()]

    def files(self) -> dict[str, dict]:
        """File name (in DIR/configs/) -> content: data, teacher, every candidate and fixed-config seed row."""
        files = {"data.yaml": {"data": config_to_dict(self.data)}, "teacher.yaml": config_to_dict(self.teacher)}
        for row in self.rows:
            files.update({row.config_name(c.label): config_to_dict(c.config) for c in row.candidates})
            if not row.selected:
                files.update({row.config_name(row.seed_label(seed)): config_to_dict(row.seed_config(seed))
                              for seed in row.seeds})
        return files


def _distill_rows(config: PipelineConfig, pipeline_file: Path, distributed: str) -> dict[str, Row]:
    """Every distiller entry's candidates (validated), in `distill_order`; checks seeds and `from`."""
    from gencast_rmmd.distill.config import DistillConfig

    rows: dict[str, Row] = {}
    for name in distill_order(config.distill):
        entry = config.distill[name]
        config_file = find_config_file(entry.config, pipeline_file)
        base = [*flatten_overrides(entry.overrides), distributed]
        row = expand_row(name, "student", f"distill.{name}", entry.grid,
                         lambda extra: load_config(config_file, DistillConfig, [*base, *extra]),
                         seeds=entry.seeds, from_entry=entry.from_entry)
        for candidate in row.candidates:
            method = candidate.config.distill
            if method.is_sweep:
                raise UserInputError(f"distill.{candidate.label}: a reward-weight sweep ({list(method.reward_weight)})"
                                     " is one student per value; give one distiller entry per reward weight, "
                                     "or a grid over distill.reward_weight")
        if row.from_entry:
            source_methods = {c.config.distill.method for c in rows[row.from_entry].candidates}
            if source_methods != {"mmd"}:
                raise UserInputError(f"distill.{name}.from: {row.from_entry} is a {', '.join(sorted(source_methods))}"
                                     " student; `from` takes a phase-1 (method mmd) entry")
        own = sorted({c.config.seed for c in row.candidates} & set(row.seeds))
        if own:
            raise UserInputError(f"distill.{name}.seeds: {own[0]} is the seed of the config itself; list only "
                                 "the extra seeds")
        rows[name] = row
    return rows


def _teacher_sampler_rows(config: PipelineConfig, teacher_sampler: dict) -> dict[str, Row]:
    """Every teacher sampler row's candidates: the teacher's sampler config with the row's values."""
    rows = {}
    for label, entry in config.teacher_samplers.items():
        fixed = [f"sampler.{key}={json.dumps(value)}" for key, value in entry.sampler.items()]

        def load(extra: list[str], fixed=fixed, label=label) -> TeacherSamplerConfig:
            raw = apply_overrides({"sampler": teacher_sampler}, [*fixed, *extra])
            return validate_config(raw, TeacherSamplerConfig, f"teacher_samplers.{label}")

        def overrides(values: dict[str, Any], entry=entry) -> tuple[str, ...]:
            chosen = {**entry.sampler, **{key.split(".", 1)[1]: value for key, value in values.items()}}
            return tuple(f"{key}={json.dumps(value)}" for key, value in chosen.items())

        rows[label] = expand_row(label, "teacher_sampler", f"teacher_samplers.{label}", entry.grid, load, overrides)
    return rows


def resolve(config: PipelineConfig, pipeline_file: str | Path) -> ResolvedConfigs:
    """The data, teacher, distill and teacher sampler configs of the stages (UserInputError naming a bad value)."""
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
    return ResolvedConfigs(data, teacher, _distill_rows(config, pipeline_file, shared[1]),
                           _teacher_sampler_rows(config, config_to_dict(teacher.sampler)))
