"""A pipeline config resolved into the validated configs of its stages (written to `DIR/configs/`).

`resolve(...)` turns the pipeline config (`pipelines.config`) into validated
data, teacher and distill configs: the pipeline's data section replaces the
teacher's, the statistics file of stage `stats` is the teacher's, and the
`distributed` settings go to every training stage. The resolved configs are
written into the work directory (`DIR/configs/`) and are what the stages run
with.

A distiller entry with `base: OTHER` is resolved on its pre-selection view:
OTHER's config file with the overrides of every entry down the `base` chain,
then its own (and a candidate's grid values). The config it trains can differ
from that view only where a choice made on validation sets a value (OTHER's
grid keys, or those of a grid entry up OTHER's chain), so every override and
grid key is checked before any stage runs. Its `DIR/configs/` files hold that
view, headed by a comment; its training stages run `selection/X.yaml` with the
overrides as `--set` (`pipelines.grid.BaseConfig`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gencast_rmmd.config import (REPO_ROOT, DataConfig, DataFileConfig, StrictModel, apply_overrides, config_to_dict,
                                 load_config, validate_config)
from gencast_rmmd.diffusion.config import SamplerConfig
from gencast_rmmd.errors import UserInputError
from pipelines.config import GATE_FILE, STATS_FILE, PipelineConfig, distill_order
from pipelines.grid import BaseConfig, BestOf, Row, expand_row, selection_config


class TeacherSamplerConfig(StrictModel):
    """The config of a teacher sampler candidate: the teacher's sampler with the row's overrides."""

    sampler: SamplerConfig


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
    for candidate in _candidates(reference, pipeline_file):
        if candidate.is_file():
            return candidate.resolve()
    raise UserInputError(f"{pipeline_file}: config file {reference} does not exist")


def _candidates(reference: str, pipeline_file: Path) -> list[Path]:
    """Where a referenced path may lie: itself when absolute, else under the pipeline file's folder, the
    current directory and the repository, in that order."""
    candidate = Path(reference).expanduser()
    bases = (Path("/"),) if candidate.is_absolute() else (pipeline_file.parent, Path.cwd(), REPO_ROOT)
    return [base / candidate for base in bases]


def find_weights(reference: str, pipeline_file: Path, owner: str = "teacher", kind: str = "teacher") -> Path:
    """`teacher.weights` (or `distill.NAME.weights`, `owner`): a package directory of `kind`, absolute or found
    as `find_config_file` finds a file."""
    from gencast_rmmd.training.packages import INFO, package_kind, read_info

    for candidate in _candidates(reference, pipeline_file):
        if (candidate / INFO).is_file():
            found = package_kind(read_info(candidate))    # a damaged or foreign package fails at load
            if found != kind:
                raise UserInputError(f"{pipeline_file}: {owner}.weights {reference} is a {found} package; "
                                     f"{owner} takes a {kind} package")
            return candidate.resolve()
    raise UserInputError(f"{pipeline_file}: {owner}.weights {reference} is not a weights package directory "
                         f"(no {INFO} there); write one with `gencast-rmmd weights export`")


def _student_weights(row: Row, reference: str, pipeline_file: Path) -> Row:
    """`distill.NAME.weights`: the row with its package (phase-1 for an `mmd` entry, installed from the teacher;
    phase-2 otherwise, installed on the phase-1 entry named by `from`), after checking that its config is the
    one the package was trained with (its `train` section aside)."""
    from gencast_rmmd.training.packages import first_difference, read_info

    owner = f"distill.{row.name}"
    config = row.candidates[0].config
    phase1 = config.distill.method == "mmd"
    if phase1 and row.from_entry is not None:
        raise UserInputError(f"{pipeline_file}: {owner}.weights installs a phase-1 student from the teacher; "
                             f"remove {owner}.from")
    if not phase1 and row.from_entry is None:
        raise UserInputError(f"{pipeline_file}: {owner}.weights installs a {config.distill.method} student on the "
                             f"phase-1 run it was distilled from; name that entry in {owner}.from")
    package = find_weights(reference, pipeline_file, owner, "phase1" if phase1 else "phase2")
    recorded = read_info(package)["payload"]["config"]
    mine = config_to_dict(config)
    for key in ("seed", "distill"):
        difference = first_difference(recorded.get(key), mine.get(key), key)
        if difference:
            raise UserInputError(f"{pipeline_file}: {owner}: the config's {difference} differs from the weights "
                                 f"package {package}'s; use the config the weights were trained with (its values "
                                 "are in weights.json under payload.config)")
    return dataclasses.replace(row, weights=package)


@dataclass(frozen=True)
class ResolvedGenCast:
    """`teacher.gencast` resolved: absolute local paths (or URLs) and their content digests."""

    checkpoint: str
    stats: str
    fingerprints: dict
    allow_other_grid: bool = False


def find_gencast(source, pipeline_file: Path, data: DataConfig) -> tuple[ResolvedGenCast, Any]:
    """`teacher.gencast`: the checkpoint and statistics located, fingerprinted, and the TeacherConfig the
    import writes (read from the checkpoint's configuration alone; its parameters are not read here)."""
    from gencast_rmmd.data.layout import ChannelLayout
    from gencast_rmmd.data.stores import is_local
    from gencast_rmmd.teacher.gencast_checkpoint import check_layout, read_gencast_checkpoint
    from gencast_rmmd.teacher.gencast_run import imported_teacher_config, source_fingerprints

    def locate(reference: str, is_wanted) -> str:
        if not is_local(reference):
            return reference
        found = next((path for path in _candidates(reference, pipeline_file) if is_wanted(path)), None)
        if found is None:
            raise UserInputError(f"{pipeline_file}: teacher.gencast {reference} does not exist")
        return str(found.resolve())

    checkpoint, stats = locate(source.checkpoint, Path.is_file), locate(source.stats, Path.is_dir)
    gencast = read_gencast_checkpoint(checkpoint, with_params=False)
    check_layout(gencast, ChannelLayout.from_config(data))          # refused before any stage runs
    config = imported_teacher_config(gencast, data, "teacher/stats.nc")
    return ResolvedGenCast(checkpoint, stats, source_fingerprints(checkpoint, stats), source.allow_other_grid), config


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
    distill: dict[str, Row]           # distiller rows, each after the entries it builds on (`base`, `from`)
    teacher_samplers: dict[str, Row] = field(default_factory=dict)
    teacher_weights: Path | None = None  # a weights package installed instead of training (`teacher.weights`)
    teacher_gencast: ResolvedGenCast | None = None  # a GenCast checkpoint imported instead (`teacher.gencast`)
    gate: Any = None                  # GateRules of `gate.rules`, written to DIR/configs/gate.yaml
    best_of: dict[str, BestOf] = field(default_factory=dict)   # extra seeds of the best of several rows

    @property
    def rows(self) -> list[Row]:
        return [*self.distill.values(), *self.teacher_samplers.values()]

    def files(self) -> dict[str, dict]:
        """File name (in DIR/configs/) -> content: data, teacher, every candidate and fixed-config seed row."""
        files = {"data.yaml": {"data": config_to_dict(self.data)}, "teacher.yaml": config_to_dict(self.teacher)}
        if self.gate is not None:
            files[GATE_FILE.removeprefix("configs/")] = self.gate.model_dump(mode="json", exclude_defaults=True)
        for row in self.rows:
            files.update({row.config_name(label): config_to_dict(config)
                          for label, config in row.label_configs.items()})
        return files

    def view_notes(self) -> dict[str, str]:
        """File name -> the comment lines heading it when it is a pre-selection view (a row that follows a choice)."""
        return {row.config_name(label): (
                    f"# Pre-selection view: distill.{label} trains {row.base_config.file} (chosen by "
                    f"select.{row.follows}) with --set overrides\n# (its command: logs/distill.{label}.log); "
                    "here the values that choice sets still hold their config-file values.\n")
                for row in self.distill.values() if row.follows for label in row.label_configs}


def _base_config(base: Row, overrides: list[str]) -> BaseConfig:
    """Where the config of an entry with `base: BASE` and these own overrides starts at run time."""
    if base.selected:
        return BaseConfig(base.name, selection_config(base.name), tuple(overrides), base.name)
    if base.follows:                                  # BASE itself starts from a choice further up
        upstream = base.base_config
        return BaseConfig(base.name, upstream.file, (*upstream.overrides, *overrides), upstream.chosen_by)
    return BaseConfig(base.name, f"configs/{base.config_name(base.name)}", tuple(overrides), None)


def _distill_rows(config: PipelineConfig, pipeline_file: Path, distributed: str) -> dict[str, Row]:
    """Every distiller entry's candidates (validated), in `distill_order`; checks overrides, seeds and `from`."""
    from gencast_rmmd.distill.config import DistillConfig

    rows: dict[str, Row] = {}
    views: dict[str, tuple[Path, list[str]]] = {}        # entry -> its (view's) config file and overrides on it
    for name in distill_order(config.distill):
        entry = config.distill[name]
        own = flatten_overrides(entry.overrides)
        if entry.base is None:
            config_file, overrides, base_config = find_config_file(entry.config, pipeline_file), own, None
        else:
            config_file, base_overrides = views[entry.base]
            overrides, base_config = [*base_overrides, *own], _base_config(rows[entry.base], own)
        views[name] = (config_file, overrides)

        def load(extra: list[str], config_file=config_file, overrides=overrides):
            return load_config(config_file, DistillConfig, [*overrides, distributed, *extra])

        try:
            load([])
        except UserInputError as error:
            where = f" (on {entry.base}'s config)" if entry.base else ""
            raise UserInputError(f"distill.{name}{where}: {error}") from None
        row = expand_row(name, "student", f"distill.{name}", entry.grid, load, seeds=entry.seeds,
                         from_entry=entry.from_entry, base_config=base_config)
        if entry.weights is not None:
            row = _student_weights(row, entry.weights, pipeline_file)
        for candidate in row.candidates:
            method = candidate.config.distill
            if method.is_sweep:
                raise UserInputError(f"distill.{candidate.label}: a reward-weight sweep ({list(method.reward_weight)})"
                                     " is one student per value; give one distiller entry per reward weight, "
                                     "or a grid over distill.reward_weight")
        if row.from_entry:
            source_methods = {c.config.distill.method for c in rows[row.from_entry].candidates}
            methods = {c.config.distill.method for c in row.candidates}
            continues = source_methods == methods and row.weights is None and methods != {"mmd"}
            if source_methods != {"mmd"} and not continues:
                raise UserInputError(f"distill.{name}.from: {row.from_entry} is a {', '.join(sorted(source_methods))}"
                                     " student; `from` takes a phase-1 (method mmd) entry, or one of the row's own "
                                     "phase-2 method to continue")
        own_seed = sorted({c.config.seed for c in row.candidates} & set(row.seeds))
        if own_seed:
            raise UserInputError(f"distill.{name}.seeds: {own_seed[0]} is the seed of the config itself; list only "
                                 "the extra seeds")
        rows[name] = row
    return rows


def _best_of(config: PipelineConfig, rows: dict[str, Row]) -> dict[str, BestOf]:
    """`best_of` entries; an extra seed must differ from the seed of every row it may repeat."""
    chosen = {}
    for name, entry in config.best_of.items():
        for row in entry.among:
            own = sorted({candidate.config.seed for candidate in rows[row].candidates} & set(entry.seeds))
            if own:
                raise UserInputError(f"best_of.{name}.seeds: {own[0]} is the seed of {row}'s config itself; list "
                                     "only extra seeds")
        chosen[name] = BestOf(name, entry.among, entry.seeds)
    return chosen


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
    gencast = None
    if config.teacher.gencast is not None:
        gencast, teacher = find_gencast(config.teacher.gencast, pipeline_file, data)
    else:
        teacher = load_config(find_config_file(config.teacher.config, pipeline_file), TeacherConfig,
                              [*flatten_overrides(config.teacher.overrides), *shared, f"stats={STATS_FILE}"])
    weights = None if config.teacher.weights is None else find_weights(config.teacher.weights, pipeline_file)
    gate = None
    if config.gate is not None:
        from evaluation.gates import load_rules

        gate = load_rules(find_config_file(config.gate.rules, pipeline_file))
    rows = _distill_rows(config, pipeline_file, shared[1])
    return ResolvedConfigs(data, teacher, rows, _teacher_sampler_rows(config, config_to_dict(teacher.sampler)),
                           weights, gencast, gate, _best_of(config, rows))
