"""The pipeline config file (`configs/pipelines/*.yaml`): its sections and their checks.

A pipeline config names the product configs each stage uses and overrides
some of their values; it never repeats them:

    data:     {config: configs/data/demo.yaml, simulate: true, overrides: {levels: [500, 850]}}
    teacher:  {config: configs/teacher/demo.yaml, overrides: {train: {steps: 1500}}}
              (or {config: ..., weights: DIR}: a shipped weights package installed instead of trained;
              or {gencast: {checkpoint: CKPT.npz, stats: DIR}}: a published GenCast checkpoint imported)
    distill:  {rmmd: {config: configs/distill/rmmd.yaml, overrides: {train: {steps: 300}}}}
    forecast: {steps: 10, members: 4, inits: {count: 12, every_hours: 48}}
    validation: {steps: 10, members: 4, inits: {count: 8, spacing: even}}      (optional)
    teacher_samplers: {teacher_7calls: {sampler: {num_noise_levels: 4}}}      (optional)
    best_of:  {strongest_baseline: {among: [crps_only, draft], seeds: [1, 2]}}   (optional)
    baselines, reference, evaluate, speed, scorecard, distributed, runtime (see the classes)

Choices are made on validation inits and test inits are scored once per
final config: a distiller entry may carry `grid:` (candidates trained,
forecast on the validation split and the one with the lowest fair-CRPS change
against the teacher chosen: `pipelines.grid`, `pipelines.selection`),
`seeds:` (extra training seeds of the chosen config), `from: OTHER` (its
`--teacher` is OTHER's chosen phase-1 run) and, instead of `config:`,
`base: OTHER` (OTHER's chosen config with this entry's overrides). Teacher
sampler rows forecast the teacher with other sampler settings (`grid:` over
them works the same way). A `best_of` entry trains extra seeds of whichever
of several distiller rows ranks best on validation.

`overrides` are nested mappings merged into the named config, so every value
is reachable with `--set`, e.g. `--set distill.rmmd.overrides.train.steps=50`.
`pipelines.resolution` turns this config into the validated configs of the
stages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gencast_rmmd.config import StrictModel, load_config
from gencast_rmmd.training.config import DistributedConfig
from pipelines.grid import Grid

STATS_FILE = "stats/stats.nc"          # written by stage `stats`, relative to the work directory
GATE_FILE = "configs/gate.yaml"        # the resolved `gate.rules`, beside the other resolved configs
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


class GenCastSource(StrictModel):
    """A published GenCast checkpoint and its statistics (`teacher.gencast`), local paths or gs:// URLs.

    Local paths are relative to the pipeline file, the current directory or the
    repository. `allow_other_grid`: import for a store whose grid spacing is not the
    resolution the checkpoint names (`import gencast --allow-other-grid`). The stage's
    identity holds their content digests
    (`gencast_rmmd.data.stores.file_fingerprint`): another file at the same path re-imports.
    """

    checkpoint: str                               # graphcast's .npz, e.g. gs://dm_graphcast/gencast/params/...
    stats: str                                    # folder of its four *_by_level.nc files
    allow_other_grid: bool = False                # import for a store on another grid than the one it names


class TeacherSection(ConfigSection):
    """The teacher: trained by stage `teacher` from its config, or, with `weights:`, a shipped weights package,
    or, with `gencast:`, a published GenCast checkpoint imported (`gencast-rmmd import gencast`).

    `weights` (a directory holding `weights.npz` and `weights.json`, written by
    `gencast-rmmd weights export`; relative to the pipeline file, the current
    directory or the repository) is checked against the config, the data and
    their statistics and installed as the teacher's run instead of training
    one (`gencast_rmmd.teacher.weights`). The config must then be the one the
    weights were trained with; its `train` section has no effect.

    `gencast` replaces `config`: the checkpoint carries its model, noise and
    sampler configs, and the pipeline's data config must hold exactly its task's
    variables and levels (the import refuses other data in one line).
    """

    config: str | None = None                     # a configs/teacher/*.yaml file; none with `gencast`
    weights: str | None = None
    gencast: GenCastSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherSection":
        if self.gencast is not None:
            given = [key for key in ("config", "weights") if getattr(self, key) is not None]
            given += ["overrides"] if self.overrides else []
            if given:
                raise ValueError(f"teacher.gencast brings its own model, noise and sampler configs; remove "
                                 f"teacher.{' and teacher.'.join(given)}")
        elif self.config is None:
            raise ValueError("teacher: give config: (a configs/teacher/*.yaml file) or gencast: {checkpoint: ..., "
                             "stats: ...}")
        if self.weights is not None and self.overrides.get("train"):
            raise ValueError("teacher.overrides.train has no effect with teacher.weights (the shipped weights are "
                             "already trained); remove one of them")
        return self


class DistillEntry(ConfigSection):
    """A distiller (`distill.NAME`): its config and overrides, and optionally how it is chosen.

    `grid`: dotted keys of the distill config and their candidate values
    (`pipelines.grid`: one training run per candidate, the one with the lowest
    validation fair-CRPS change against the teacher is chosen); `seeds`: extra
    training seeds of the chosen config (rows `NAME_seedS`); `from`: another
    distiller entry (a phase-1 `mmd` one) whose chosen run this entry starts
    from instead of the teacher: a phase-2 method fine-tunes it (no phase 1 of
    its own), an `mmd` entry continues its moment matching.

    `base: OTHER` replaces `config:` (give exactly one): the entry's config is
    OTHER's chosen config (`selection/OTHER.yaml` when OTHER has a grid,
    OTHER's resolved config otherwise) with this entry's `overrides` on top,
    e.g. an ablation of the chosen RMMD. Its own `grid` may repeat a key of
    OTHER's grid (its values win) and its `seeds` work as for any entry;
    `from` is not inherited. Overrides and grid keys are checked when the
    pipeline loads, on OTHER's config file with OTHER's overrides (the chosen
    config differs from that only in the values a choice sets).

    `weights: DIR`: a shipped weights package (`gencast-rmmd weights export`)
    is installed instead of training, after its hashes are checked
    (`gencast_rmmd.distill.weights`): on an `mmd` entry a phase-1 package, from
    the teacher; on a phase-2 entry a phase-2 package, on the phase-1 entry it
    was distilled from, which `from:` must name. `config:` must then be the
    config it was trained with (checked when the pipeline loads); `train`
    overrides, a grid, seeds and `base:` have no effect and are refused.
    `from:` may also name an entry of the row's own phase-2 method: the row
    then continues that entry's run (`distill --teacher` of a phase-2 run).
    """

    model_config = ConfigDict(serialize_by_alias=True)

    config: str | None = None                     # a configs/distill/*.yaml file, or `base:`
    base: str | None = None
    grid: Grid = {}
    seeds: tuple[int, ...] = ()
    from_entry: str | None = Field(None, alias="from")
    weights: str | None = None                    # a weights package installed instead of training

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {list(seeds)} repeat one another")
        return seeds

    @model_validator(mode="after")
    def _config_or_base(self) -> "DistillEntry":
        if (self.config is None) == (self.base is None):
            raise ValueError(f"{'config: and base: both given' if self.config else 'no config: or base:'}; give "
                             "one: a configs/distill/*.yaml file as config:, or another distill entry as base:")
        if self.weights is not None:
            ignored = [key for key, given in (("base", self.base), ("grid", self.grid), ("seeds", self.seeds),
                                              ("overrides.train", self.overrides.get("train"))) if given]
            if ignored:
                raise ValueError(f"weights: installs a trained student; {', '.join(ignored)} would have no "
                                 "effect: remove them or the weights")
        return self


class BestOfEntry(StrictModel):
    """`best_of.NAME`: extra training seeds of whichever of several distiller rows validation ranks best.

    `select.NAME` compares the rows in `among` by their chosen runs' validation
    forecasts (the criterion of every choice: the lowest mean fair-CRPS change
    against the teacher, `pipelines.selection`); `distill.NAME_seedS` then trains
    the winner's chosen config with seed S, from the run the winner starts from.
    E.g. three seeds of "the strongest baseline", without naming it before the
    validation forecasts exist. The seed rows join the winner's row in the table.
    """

    among: tuple[str, ...] = Field(min_length=2)  # distill entries
    seeds: tuple[int, ...] = Field(min_length=1)

    @field_validator("among", "seeds")
    @classmethod
    def _distinct(cls, values: tuple, info: ValidationInfo) -> tuple:
        if len(set(values)) != len(values):
            raise ValueError(f"{info.field_name} {list(values)} repeat one another")
        return values


class TeacherSamplerEntry(StrictModel):
    """A row of the teacher with other sampler settings (`teacher_samplers.LABEL`), e.g. fewer denoiser calls.

    `sampler` overrides keys of the teacher's sampler config
    (`gencast_rmmd.diffusion.config.SamplerConfig`: num_noise_levels, churn, ...);
    `grid` (keys `sampler.KEY`) chooses among candidates on validation as for a distiller.
    """

    sampler: dict[str, Any] = {}
    grid: Grid = {}


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
    format: Literal["netcdf", "zarr"] = "netcdf"  # every forecast file: LABEL.nc, or LABEL.zarr (zarr v2 stores)
    # processes per forecast, test and validation (`gencast-rmmd forecast --jobs`): the same file, sooner on
    # several cores; not part of any stage's identity
    jobs: int = Field(1, ge=1)


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


class GateSection(StrictModel):
    """A quality gate on the run's scores (`evaluation.gates`), stage `gate`, the last one.

    `rules`: a rules file (configs/eval/*.yaml), found as the other config files are; its rules name scores
    files by label (teacher, persistence, climatology, reference, a row). The verdict is gate/verdict.json and
    gate/verdict.md; a failed required rule fails the stage, after the landing page is written, and the run
    exits 3. `at_most` rules read `train_s`: the teacher stage's seconds when it trained in one attempt.
    """

    rules: str


class TableSection(StrictModel):
    """The generated comparison table of every test row against the teacher (`pipelines.table`), stage `table`.

    Off unless enabled (the RMMD table's pipeline enables it); `draws` of the moving-block bootstrap.
    """

    enabled: bool = False
    draws: int = Field(5000, ge=100)


class PipelineDistributed(DistributedConfig):
    """Where training runs: jax.distributed settings (multi-host) and, on CPU, a forced device count.

    `cpu_devices: N` runs training stages with N host-platform devices
    (XLA_FLAGS=--xla_force_host_platform_device_count=N), e.g. to check data
    parallelism on one CPU. Neither changes a stage's identity.
    """

    cpu_devices: int | None = Field(None, ge=1)


class RuntimeSection(StrictModel):
    """How stages run. `compilation_cache`: JAX's persistent compilation cache (null: off).

    `order`: `groups` runs the stages group by group (every training before any
    test forecast); `rows` moves each test forecast and its scoring up to just
    after the stages it reads, so every row is forecast and scored on test as
    soon as its run is chosen, and trains the extra seeds of chosen configs
    (`seeds`, `best_of`) after every other row, since no choice reads them.
    Results are the same either way (the stages and their identities do not
    change); with `rows` a long pipeline cut short holds finished, scored rows
    (every row's chosen run before any extra seed), and `pipeline task table`
    can tabulate them.
    """

    compilation_cache: str | None = "~/.cache/gencast_rmmd/jax"
    order: Literal["groups", "rows"] = "groups"


class PipelineConfig(StrictModel):
    """A `configs/pipelines/*.yaml` file."""

    name: str | None = None                       # default: the config file's stem
    data: DataSection
    teacher: TeacherSection
    distill: dict[str, DistillEntry] = {}
    teacher_samplers: dict[str, TeacherSamplerEntry] = {}
    best_of: dict[str, BestOfEntry] = {}
    forecast: ForecastSection = ForecastSection()
    validation: ValidationSection | None = None
    baselines: BaselinesSection = BaselinesSection()
    reference: ReferenceSection = ReferenceSection()
    evaluate: EvaluateSection = EvaluateSection()
    speed: SpeedSection = SpeedSection()
    scorecard: ScorecardSection = ScorecardSection()
    table: TableSection = TableSection()
    gate: GateSection | None = None
    distributed: PipelineDistributed = PipelineDistributed()
    runtime: RuntimeSection = RuntimeSection()

    @field_validator("distill", "teacher_samplers", "best_of")
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
        for name, entry in self.best_of.items():
            labels += [name, *(f"{name}_seed{seed}" for seed in entry.seeds)]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"the rows {', '.join(repeated)} have the same label; rename a distill, "
                             "teacher_samplers or best_of entry (seed rows are labelled NAME_seedS)")
        distill_order(self.distill)                   # `base` and `from` name entries, without a cycle
        if self.validation is None:
            for owner, entry in [*((f"distill.{n}", e) for n, e in self.distill.items()),
                                 *((f"teacher_samplers.{n}", e) for n, e in self.teacher_samplers.items())]:
                if entry.grid:
                    raise ValueError(f"{owner}.grid: candidates are chosen on validation inits; add a "
                                     "`validation:` section")
        for name, entry in self.best_of.items():
            unknown = [row for row in entry.among if row not in self.distill]
            if unknown:
                raise ValueError(f"best_of.{name}.among: no distiller entry {unknown[0]!r}; entries: "
                                 f"{', '.join(self.distill)}")
            installed = [row for row in entry.among if self.distill[row].weights is not None]
            if installed:
                raise ValueError(f"best_of.{name}.among: {installed[0]} installs shipped weights and has no "
                                 "training to repeat with another seed; compare trained entries")
            if self.validation is None:
                raise ValueError(f"best_of.{name}: the rows are ranked on validation inits; add a "
                                 "`validation:` section")
        return self


def distill_order(distill: dict[str, DistillEntry]) -> list[str]:
    """Distiller names in declaration order, except that an entry comes after the entries it builds on.

    Those are its `base` and the entry it starts `from`. Raises ValueError for
    a `base` or `from` that names no entry or closes a cycle (the chain named,
    e.g. `a -base-> b -from-> a`).
    """
    order: list[str] = []

    def place(name: str, chain: tuple[tuple[str, str], ...]) -> None:
        """`chain`: the (entry, link) pairs that led here."""
        if name in order:
            return
        entry = distill[name]
        for link, source in (("base", entry.base), ("from", entry.from_entry)):
            if source is None:
                continue
            if source not in distill:
                raise ValueError(f"distill.{name}.{link}: no distiller entry {source!r}; entries: "
                                 f"{', '.join(distill)}")
            links = (*chain, (name, link))
            if source in (earlier for earlier, _ in links):
                raise ValueError(f"distill.{name}.{link}: the entries build on one another in a cycle "
                                 f"({' '.join(f'{earlier} -{via}->' for earlier, via in links)} {source})")
            place(source, links)
        order.append(name)

    for name in distill:
        place(name, ())
    return order


def load_pipeline_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                         data: str | None = None) -> PipelineConfig:
    """Load a pipeline config with `--set` overrides; `--data URL` is `--set data.path=URL`."""
    return load_config(path, PipelineConfig, list(overrides), data)
