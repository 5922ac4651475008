"""Group 4: train every row's candidates, forecast them on validation, choose, train the extra seeds.

For a distiller row NAME (`pipelines.grid.Row`), in order:

    distill.NAME            students/NAME           (no grid: the row's one config)
    distill.NAME.cK         students/NAME/cK        (grid: candidate K, `pipelines.grid` order)
    validation.forecast.L   validation/forecasts/L.nc for every candidate L (with a `validation:` section)
    select.NAME             selection/NAME.json, selection/NAME.yaml (grid: the chosen candidate)
    distill.NAME_seedS      students/NAME_seedS     (an extra seed of the chosen config), then its
                            validation forecast validation.forecast.NAME_seedS

After every distiller row, each `best_of` entry NAME (`pipelines.grid.BestOf`):

    select.NAME             selection/NAME.json     (its rows' chosen runs ranked on validation)
    distill.NAME_seedS      students/NAME_seedS     (the best row's chosen config with seed S, from the run
                            that row starts from), then validation.forecast.NAME_seedS

A teacher sampler row LABEL has no training: its candidates' validation
forecasts run the teacher with their `--sampler` overrides, then `select.LABEL`.
The validation inits (`validation.inits`) and the teacher's validation forecast
(`validation.forecast.teacher`, every selection's baseline) come first.

Every row of the test table (a label without a dot) is trained by
`distill.LABEL` into `students/LABEL` and forecast by `forecast.LABEL`; a grid
row's test forecast reads `selection/NAME.json` when its command is built.
A row with `from: OTHER` trains from OTHER's chosen run instead of the teacher.
A row with `base: OTHER` trains `--config selection/OTHER.yaml` with its
overrides and grid values as `--set` (when OTHER has no grid: the file OTHER's
own config starts from, or OTHER's resolved `configs/` file; see
`pipelines.grid.BaseConfig`); the chosen config it reads is one of its
inputs, so a changed choice trains it again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from gencast_rmmd.config import apply_overrides, config_to_dict
from pipelines.digests import model_settings
from pipelines.forecasts import Model, Split, forecast_stage, inits_stage
from pipelines.graph import Command, Output, Stage, StageContext, TrainingSetup, task
from pipelines.grid import BestOf, Candidate, Row, selection_config, selection_file, value_overrides
from pipelines.resolution import ResolvedConfigs

TEACHER = Model("teacher")


def candidate_model(row: Row, candidate: Candidate) -> Model:
    """The run (and sampler overrides) a candidate's forecasts use."""
    if row.kind == "teacher_sampler":
        return Model(TEACHER.checkpoint, candidate.sampler)
    return Model(f"students/{row.name}/c{candidate.index}" if row.selected else f"students/{row.name}")


def candidate_run(row: Row, candidate: Candidate) -> str:
    """The output reference of the run a candidate's forecasts use."""
    return "teacher.run" if row.kind == "teacher_sampler" else f"distill.{candidate.label}.run"


def chosen_candidate(row: Row, context: StageContext) -> Candidate:
    """The row's one candidate, or the one `select.NAME` chose (read when a command is built)."""
    if not row.selected:
        return row.candidates[0]
    return row.candidates[context.read_json(selection_file(row.name))["chosen"]["index"]]


def chosen_model(row: Row, context: StageContext) -> Model:
    return candidate_model(row, chosen_candidate(row, context))


def chosen_inputs(row: Row) -> tuple[str, ...]:
    """The outputs that decide a row's chosen model: its runs and, for a grid, the selection."""
    runs = tuple(dict.fromkeys(candidate_run(row, candidate) for candidate in row.candidates))
    return (f"select.{row.name}.config", *runs) if row.selected else runs


def seed_model(row: Row, seed: int) -> Model:
    return Model(f"students/{row.seed_label(seed)}")


def model_description(row: Row) -> str:
    if row.kind == "teacher_sampler":
        settings = " ".join(row.candidates[0].sampler) if not row.selected else f"the sampler chosen in {row.name}"
        return f"the teacher ({settings})"
    return f"student {row.name}" + (" (the chosen candidate)" if row.selected else "")


def row_stages(resolved: ResolvedConfigs, setup: TrainingSetup, validation: Split | None,
               region: str = "global") -> list[Stage]:
    """Group 4 in order: validation inits and teacher, each teacher sampler row, then each distiller row.

    The teacher's few-call samplers come first: they train nothing (minutes, where a distiller row takes
    hours), and they are the baseline every distiller must beat, so a run cut short still holds them.
    `region` is the one the selections score.
    """
    stages = []
    if validation is not None:
        stages += [inits_stage(validation, resolved.data.input_frames),
                   forecast_stage(validation, "teacher", "the teacher", ("teacher.run",), lambda _: TEACHER)]
    for row in resolved.teacher_samplers.values():
        if validation is not None:
            stages += [forecast_stage(validation, c.label, f"the teacher ({' '.join(c.sampler)})", ("teacher.run",),
                                      lambda _, row=row, c=c: candidate_model(row, c), c.sampler)
                       for c in row.candidates]
        if row.selected:
            stages.append(_select_stage(row, validation, region))
    training = _Distilling(setup, resolved.data.path)
    for row in resolved.distill.values():
        stages += _student_stages(row, resolved, training, validation, region)
    for best in resolved.best_of.values():
        stages += _best_of_stages(best, resolved, training, validation, region)
    return stages


@dataclass(frozen=True)
class _TrainingConfig:
    """What a training stage trains: its `--config`/`--set` arguments and what of them makes its identity.

    A config known before any stage runs is in the identity as it is; one that
    starts from a chosen config is in it as that file's name and the overrides,
    with the selection's chosen config among the stage's inputs.
    """

    arguments: list[str]
    settings: dict
    inputs: tuple[str, ...] = ()

    @classmethod
    def of(cls, file: str, overrides: tuple[str, ...], resolved: Any = None,
           chosen_by: str | None = None) -> "_TrainingConfig":
        """`--config FILE --set ...`: `resolved` is the config it makes, or `chosen_by` the row choosing FILE."""
        arguments = ["--config", file, *_set_arguments(overrides)]
        if chosen_by is None:
            return cls(arguments, model_settings(config_to_dict(resolved)))
        changes = model_settings(apply_overrides({}, overrides))      # a section left empty changes nothing
        return cls(arguments, {"config": file, **{key: value for key, value in changes.items() if value != {}}},
                   (f"select.{chosen_by}.config",))


def _set_arguments(overrides: tuple[str, ...]) -> list[str]:
    return [argument for override in overrides for argument in ("--set", override)]


def _training_config(row: Row, label: str, extra: list[str], resolved: Any) -> _TrainingConfig:
    """The config of `distill.LABEL`, a candidate of `row` or a seed row of a row without a grid.

    `extra`: its grid values or seed as `--set` overrides; `resolved`: its
    config in `DIR/configs/` (a pre-selection view when the row follows a choice).
    """
    base = row.base_config
    if base is None:
        return _TrainingConfig.of(f"configs/{row.config_name(label)}", (), resolved)
    return _TrainingConfig.of(base.file, (*base.overrides, *extra), resolved, base.chosen_by)


@dataclass(frozen=True)
class _Distilling:
    """Builds the training stages of students: `gencast-rmmd distill` into a run directory."""

    setup: TrainingSetup
    store: str

    def stage(self, name: str, description: str, config: _TrainingConfig, inputs: tuple[str, ...], run_dir: str,
              teacher: Callable[[StageContext], str]) -> Stage:
        """`teacher(context)`: the `--teacher` run (the teacher, or a `from` entry's chosen run)."""
        return self.chosen_stage(name, description, config.settings, (*inputs, *config.inputs), run_dir,
                                 lambda _: config.arguments, teacher)

    def chosen_stage(self, name: str, description: str, settings: dict, inputs: tuple[str, ...], run_dir: str,
                     arguments: Callable[[StageContext], list[str]], teacher: Callable[[StageContext], str]) -> Stage:
        """A training stage whose `--config`/`--set` arguments may depend on a choice made before it runs."""
        return Stage(
            name, 4, description, settings, (*inputs, "data.train", "data.validation"),
            {"run": Output("run", run_dir)},
            lambda context: [*self.setup.preamble, Command((
                "distill", *arguments(context), "--teacher", teacher(context), "--data", self.store, "--out",
                run_dir, *(["--resume"] if context.resume_run else [])))],
            training=True, environment=self.setup.environment)


def _source(row: Row, resolved: ResolvedConfigs) -> tuple[tuple[str, ...], Callable[[StageContext], str]]:
    """The inputs that decide the run a row's students start from, and that run (its `--teacher`)."""
    if row.from_entry is None:
        return ("teacher.run",), (lambda _: TEACHER.checkpoint)
    source = resolved.distill[row.from_entry]
    return chosen_inputs(source), (lambda context: chosen_model(source, context).checkpoint)


def _seed_config(row: Row, seed: int) -> _TrainingConfig:
    """What an extra seed of the row trains: its chosen config (a grid row's selection) with `seed=SEED`."""
    if row.selected:
        return _TrainingConfig.of(selection_config(row.name), (f"seed={seed}",), chosen_by=row.name)
    return _training_config(row, row.seed_label(seed), [f"seed={seed}"], row.seed_config(seed))


def _best_seed_config(row: Row, seed: int) -> _TrainingConfig:
    """`_seed_config` for a `best_of` seed: a row with a fixed config of its own trains its `configs/` file with
    `--set seed=SEED` (the row's own seed rows have files of their own; these do not)."""
    if row.selected or row.base_config is not None:
        return _seed_config(row, seed)
    return _TrainingConfig.of(f"configs/{row.config_name(row.name)}", (f"seed={seed}",), row.seed_config(seed))


def _student_stages(row: Row, resolved: ResolvedConfigs, training: _Distilling, validation: Split | None,
                    region: str) -> list[Stage]:
    source_inputs, teacher = _source(row, resolved)
    method = row.candidates[0].config.distill
    base = row.base_config
    on_base = f", on {base.base}'s {'chosen ' if row.follows else ''}config" if base else ""
    what = (f"{method.method}, {method.student.steps} steps per 12 h, {row.candidates[0].config.train.steps} updates"
            f"{on_base}{', from ' + row.from_entry if row.from_entry else ''}")
    if row.weights is not None:
        stages = [_install_stage(row, source_inputs, teacher)]
    else:
        stages = [training.stage(f"distill.{c.label}", f"distill student {c.label} ({what})"
                                 + (f": {_values(c)}" if row.selected else ""),
                                 _training_config(row, c.label, value_overrides(c.values), c.config), source_inputs,
                                 candidate_model(row, c).checkpoint, teacher)
                  for c in row.candidates]
    if validation is not None:
        stages += [forecast_stage(validation, c.label, f"student {c.label}", (candidate_run(row, c),),
                                  lambda _, c=c: candidate_model(row, c)) for c in row.candidates]
    if row.selected:
        stages.append(_select_stage(row, validation, region))
    for seed in row.seeds:
        label = row.seed_label(seed)
        stages.append(replace(training.stage(f"distill.{label}",
                                             f"distill student {label}: {row.name}'s config with seed {seed}",
                                             _seed_config(row, seed), source_inputs,
                                             seed_model(row, seed).checkpoint, teacher), extra_seed=True))
        if validation is not None:
            stages.append(forecast_stage(validation, label, f"student {label}", (f"distill.{label}.run",),
                                         lambda _, seed=seed: seed_model(row, seed)))
    return stages


def best_row(best: BestOf, context: StageContext) -> str:
    """The row `select.NAME` of a `best_of` entry ranked best (read when a command is built)."""
    return context.read_json(selection_file(best.name))["chosen"]["row"]


def best_seed_model(best: BestOf, seed: int) -> Model:
    return Model(f"students/{best.seed_label(seed)}")


def _best_of_stages(best: BestOf, resolved: ResolvedConfigs, training: _Distilling, validation: Split,
                    region: str) -> list[Stage]:
    """`select.NAME` (rank the rows' chosen runs on validation), then `distill.NAME_seedS` and its validation
    forecast for every seed: the winner's chosen config with that seed, from the run the winner starts from.

    A seed stage's identity holds every candidate row's seed config and inputs, and the ranking's selection
    file: a changed ranking, or a changed choice inside the winning row, trains it again.
    """
    rows = [resolved.distill[name] for name in best.among]
    forecasts = {row.name: tuple(f"{validation.prefix}.{c.label}.forecast" for c in row.candidates) for row in rows}

    def rank(context: StageContext) -> list[Command]:
        chosen = {row.name: validation.out(chosen_candidate(row, context).label) for row in rows}
        return [task("select-best", "--name", best.name, "--truth", validation.store, "--baseline",
                     validation.out("teacher"), "--inits", validation.inits_file,
                     *(a for name, forecast in chosen.items() for a in ("--row", name, "--forecast", forecast)),
                     "--region", region, "--out", selection_file(best.name))]

    stages = [Stage(
        f"select.{best.name}", validation.group,
        f"rank {', '.join(best.among)} by their chosen runs' validation fair-CRPS change vs the teacher",
        {"among": list(best.among), "region": region},
        (*(reference for row in rows for reference in (*chosen_inputs(row), *forecasts[row.name])),
         f"{validation.prefix}.teacher.forecast", *validation.inputs),
        {"selection": Output("file", selection_file(best.name))}, rank)]
    sources = {row.name: _source(row, resolved) for row in rows}
    for seed in best.seeds:
        label = best.seed_label(seed)
        configs = {row.name: _best_seed_config(row, seed) for row in rows}
        inputs = dict.fromkeys([f"select.{best.name}.selection",
                                *(reference for row in rows for reference in (*configs[row.name].inputs,
                                                                               *sources[row.name][0]))])
        stages.append(replace(training.chosen_stage(
            f"distill.{label}", f"distill student {label}: the config of the best of {', '.join(best.among)} on "
                                f"validation, with seed {seed}",
            {"best_of": list(best.among), "seed": seed,
             "configs": {name: config.settings for name, config in configs.items()}},
            tuple(inputs), best_seed_model(best, seed).checkpoint,
            lambda context, configs=configs: configs[best_row(best, context)].arguments,
            lambda context: sources[best_row(best, context)][1](context)), extra_seed=True))
        stages.append(forecast_stage(validation, label, f"student {label}", (f"distill.{label}.run",),
                                     lambda _, seed=seed: best_seed_model(best, seed)))
    return stages


def _install_stage(row: Row, source_inputs: tuple[str, ...], source: Callable[[StageContext], str]) -> Stage:
    """`distill.NAME` of an entry with `weights:`: the package installed (its hashes checked by `weights
    install`) from `source`: the teacher run for a phase-1 package, the `from` entry's run for a phase-2 one.
    Its identity: the entry's config, less `train` (the weights are trained), and the package's hashes."""
    from gencast_rmmd.training.packages import package_kind, read_info

    info = read_info(row.weights)
    kind = package_kind(info)
    candidate = row.candidates[0]
    settings = {key: value for key, value in model_settings(config_to_dict(candidate.config)).items()
                if key != "train"}
    hashes = {key: info[key] for key in ("teacher_sha256", "phase1_sha256", "anchors_sha256") if key in info}
    run_dir = candidate_model(row, candidate).checkpoint
    return Stage(f"distill.{row.name}", 4, f"install the {kind} student weights {row.weights.name} "
                 f"({candidate.config.distill.method}, step {info['source']['checkpoint_step']}, sha256 "
                 f"{info['params_sha256'][:12]}…{', on ' + row.from_entry if row.from_entry else ''})",
                 {**settings, "weights_sha256": info["params_sha256"], **hashes},
                 source_inputs, {"run": Output("run", run_dir)},
                 lambda context: [Command(("weights", "install", str(row.weights), "--teacher", source(context),
                                           "--out", run_dir))],
                 training=True)


def _values(candidate: Candidate) -> str:
    return ", ".join(f"{key}={value}" for key, value in candidate.values.items())


def _select_stage(row: Row, validation: Split, region: str) -> Stage:
    """`select.NAME`: score every candidate's validation forecast against the teacher's and keep the best.

    For a row that follows a choice the chosen config written is its `BaseConfig`'s
    file with its overrides and the chosen candidate's values (`--base`, `--set`).
    """
    forecasts = [validation.out(candidate.label) for candidate in row.candidates]
    base = row.base_config if row.follows else None
    on_base = {"base": {"config": base.file, "overrides": list(base.overrides)}} if base else {}
    base_inputs = (f"select.{row.follows}.config",) if base else ()
    base_arguments = ["--base", base.file, *_set_arguments(base.overrides)] if base else []
    return Stage(
        f"select.{row.name}", validation.group,
        f"choose {row.name} among {len(row.candidates)} candidates ({', '.join(row.grid)}): lowest validation "
        f"fair-CRPS change vs the teacher",
        {"grid": list(row.grid), "candidates": [config_to_dict(c.config) for c in row.candidates], "region": region,
         **on_base},
        (*(f"{validation.prefix}.{c.label}.forecast" for c in row.candidates),
         f"{validation.prefix}.teacher.forecast", *validation.inputs, *base_inputs),
        {"selection": Output("file", selection_file(row.name)), "config": Output("config", selection_config(row.name))},
        lambda _: [task("select", "--name", row.name, "--truth", validation.store,
                        "--baseline", validation.out("teacher"), "--inits", validation.inits_file,
                        *(a for c, forecast in zip(row.candidates, forecasts)
                          for a in ("--candidate", forecast, "--config", f"configs/{row.config_name(c.label)}")),
                        *(a for key in row.grid for a in ("--key", key)), "--region", region,
                        *base_arguments,
                        "--out", selection_file(row.name), "--config-out", selection_config(row.name))])
