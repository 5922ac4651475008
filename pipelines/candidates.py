"""Group 4: train every row's candidates, forecast them on validation, choose, train the extra seeds.

For a distiller row NAME (`pipelines.grid.Row`), in order:

    distill.NAME            students/NAME           (no grid: the row's one config)
    distill.NAME.cK         students/NAME/cK        (grid: candidate K, `pipelines.grid` order)
    validation.forecast.L   validation/forecasts/L.nc for every candidate L (with a `validation:` section)
    select.NAME             selection/NAME.json, selection/NAME.yaml (grid: the chosen candidate)
    distill.NAME_seedS      students/NAME_seedS     (an extra seed of the chosen config), then its
                            validation forecast validation.forecast.NAME_seedS

A teacher sampler row LABEL has no training: its candidates' validation
forecasts run the teacher with their `--sampler` overrides, then `select.LABEL`.
The validation inits (`validation.inits`) and the teacher's validation forecast
(`validation.forecast.teacher`, every selection's baseline) come first.

Every row of the test table (a label without a dot) is trained by
`distill.LABEL` into `students/LABEL` and forecast by `forecast.LABEL`; a grid
row's test forecast reads `selection/NAME.json` when its command is built.
A row with `from: OTHER` trains from OTHER's chosen run instead of the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gencast_rmmd.config import config_to_dict
from pipelines.config import ResolvedConfigs
from pipelines.digests import model_settings
from pipelines.forecasts import Model, Split, forecast_stage, inits_stage
from pipelines.graph import Command, Output, Stage, StageContext, TrainingSetup, task
from pipelines.grid import Candidate, Row

TEACHER = Model("teacher")


def selection_file(name: str) -> str:
    return f"selection/{name}.json"


def selection_config(name: str) -> str:
    """The chosen candidate's full config, which a grid row's extra seeds train."""
    return f"selection/{name}.yaml"


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
    """Group 4 in order: validation inits and teacher, then each distiller row, then each teacher sampler row.

    `region` is the one the selections score.
    """
    stages = []
    if validation is not None:
        stages += [inits_stage(validation, resolved.data.input_frames),
                   forecast_stage(validation, "teacher", "the teacher", ("teacher.run",), lambda _: TEACHER)]
    for row in resolved.distill.values():
        stages += _student_stages(row, resolved, _Distilling(setup, resolved.data.path), validation, region)
    for row in resolved.teacher_samplers.values():
        if validation is not None:
            stages += [forecast_stage(validation, c.label, f"the teacher ({' '.join(c.sampler)})", ("teacher.run",),
                                      lambda _, row=row, c=c: candidate_model(row, c), c.sampler)
                       for c in row.candidates]
        if row.selected:
            stages.append(_select_stage(row, validation, region))
    return stages


@dataclass(frozen=True)
class _Distilling:
    """Builds the training stages of students: `gencast-rmmd distill` into a run directory."""

    setup: TrainingSetup
    store: str

    def stage(self, name: str, description: str, settings: dict, inputs: tuple[str, ...], run_dir: str,
              config_arguments: list[str], teacher: Callable[[StageContext], str]) -> Stage:
        """`teacher(context)`: the `--teacher` run (the teacher, or a `from` entry's chosen run)."""
        return Stage(
            name, 4, description, settings, (*inputs, "data.train", "data.validation"),
            {"run": Output("run", run_dir)},
            lambda context: [*self.setup.preamble, Command((
                "distill", *config_arguments, "--teacher", teacher(context), "--data", self.store, "--out", run_dir,
                *(["--resume"] if context.resume_run else [])))],
            training=True, environment=self.setup.environment)


def _student_stages(row: Row, resolved: ResolvedConfigs, training: _Distilling, validation: Split | None,
                    region: str) -> list[Stage]:
    if row.from_entry is None:
        source_inputs, teacher = ("teacher.run",), (lambda _: TEACHER.checkpoint)
    else:
        source = resolved.distill[row.from_entry]
        source_inputs, teacher = chosen_inputs(source), (lambda context: chosen_model(source, context).checkpoint)
    method = row.candidates[0].config.distill
    what = (f"{method.method}, {method.student.steps} steps per 12 h, {row.candidates[0].config.train.steps} updates"
            f"{', from ' + row.from_entry if row.from_entry else ''}")
    stages = [training.stage(f"distill.{c.label}", f"distill student {c.label} ({what})"
                       + (f": {_values(c)}" if row.selected else ""),
                       model_settings(config_to_dict(c.config)), source_inputs, candidate_model(row, c).checkpoint,
                       ["--config", f"configs/{row.config_name(c.label)}"], teacher)
              for c in row.candidates]
    if validation is not None:
        stages += [forecast_stage(validation, c.label, f"student {c.label}", (candidate_run(row, c),),
                                  lambda _, c=c: candidate_model(row, c)) for c in row.candidates]
    if row.selected:
        stages.append(_select_stage(row, validation, region))
    for seed in row.seeds:
        label = row.seed_label(seed)
        if row.selected:
            settings, inputs = {"seed": seed, "config": selection_config(row.name)}, (f"select.{row.name}.config",)
            arguments = ["--config", selection_config(row.name), "--set", f"seed={seed}"]
        else:
            settings, inputs = model_settings(config_to_dict(row.seed_config(seed))), ()
            arguments = ["--config", f"configs/{row.config_name(label)}"]
        stages.append(training.stage(f"distill.{label}",
                                     f"distill student {label}: {row.name}'s config with seed {seed}",
                               settings, (*source_inputs, *inputs), seed_model(row, seed).checkpoint,
                               arguments, teacher))
        if validation is not None:
            stages.append(forecast_stage(validation, label, f"student {label}", (f"distill.{label}.run",),
                                         lambda _, seed=seed: seed_model(row, seed)))
    return stages


def _values(candidate: Candidate) -> str:
    return ", ".join(f"{key}={value}" for key, value in candidate.values.items())


def _select_stage(row: Row, validation: Split, region: str) -> Stage:
    """`select.NAME`: score every candidate's validation forecast against the teacher's and keep the best."""
    forecasts = [validation.out(candidate.label) for candidate in row.candidates]
    return Stage(
        f"select.{row.name}", validation.group,
        f"choose {row.name} among {len(row.candidates)} candidates ({', '.join(row.grid)}): lowest validation "
        f"fair-CRPS change vs the teacher",
        {"grid": list(row.grid), "candidates": [config_to_dict(c.config) for c in row.candidates], "region": region},
        (*(f"{validation.prefix}.{c.label}.forecast" for c in row.candidates),
         f"{validation.prefix}.teacher.forecast", *validation.inputs),
        {"selection": Output("file", selection_file(row.name)), "config": Output("config", selection_config(row.name))},
        lambda _: [task("select", "--name", row.name, "--truth", validation.store,
                        "--baseline", validation.out("teacher"), "--inits", validation.inits_file,
                        *(a for c, forecast in zip(row.candidates, forecasts)
                          for a in ("--candidate", forecast, "--config", f"configs/{row.config_name(c.label)}")),
                        *(a for key in row.grid for a in ("--key", key)), "--region", region,
                        "--out", selection_file(row.name), "--config-out", selection_config(row.name))])
