"""The stage graph: which commands each stage runs, what it reads and what it writes.

A `Stage` is data: its `settings` (hashed into its identity), its `inputs`
(`"stage.output"` references whose digests also go into the identity), its
`outputs` (paths relative to the work directory, with a digest kind) and a
function that builds its commands once the stages before it are done (the
forecast commands need the chosen init times). Every command runs with the
work directory as its current directory, so identities and logs never
depend on where the work directory lies.

Work directory layout:

    configs/      the resolved configs every stage ran with (data, teacher, distill.NAME, pipeline)
    data/         summary.json: store, splits and their fingerprints
    stats/        stats.nc
    teacher/      the teacher's training run (checkpoints/, metrics.jsonl)
    students/N/   one distillation run per distiller
    forecasts/    inits.json and LABEL.nc for teacher, students, reference, persistence, climatology
    scores/       LABEL.nc from `gencast-rmmd evaluate`
    scorecard/    index.html (start here), students_vs_teacher/, vs_persistence/, speed.json, timing.json
    logs/         STAGE.log, one per stage
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gencast_rmmd.config import config_to_dict
from pipelines.config import STATS_FILE, PipelineConfig, ResolvedConfigs

GROUP_TITLES = {1: "data", 2: "stats", 3: "teacher", 4: "distill", 5: "forecast", 6: "evaluate", 7: "scorecard"}
INITS_FILE = "forecasts/inits.json"
SCORECARD_HTML = "scorecard/index.html"


@dataclass(frozen=True)
class Command:
    """One process of a stage: `gencast-rmmd ARGS...`, run with this interpreter."""

    args: tuple[str, ...]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gencast_rmmd.cli", *self.args]

    def display(self) -> str:
        """The command as a user would type it."""
        return f"gencast-rmmd {shlex.join(self.args)}"


def task(*args: str) -> Command:
    """A pipeline step that is not a product command: `gencast-rmmd pipeline task ...` (pipelines/tasks.py)."""
    return Command(("pipeline", "task", *args))


@dataclass(frozen=True)
class Output:
    """An output path relative to the work directory and how to digest it (see `digests.output_record`)."""

    kind: str
    path: str


@dataclass(frozen=True)
class StageContext:
    """What a stage's command builder may look at: the work directory and earlier stages' states."""

    workdir: Path
    resume_run: bool                       # a training stage continues its run (--resume)
    states: dict[str, str]                 # stage name -> state

    def read_json(self, relative: str) -> dict:
        return json.loads((self.workdir / relative).read_text())

    def applies(self, stage: str) -> bool:
        return self.states.get(stage) not in (None, "not_applicable")


@dataclass(frozen=True)
class Stage:
    name: str
    group: int                                            # 1..7, see GROUP_TITLES
    description: str
    settings: dict                                        # what the stage runs with (hashed)
    inputs: tuple[str, ...]                               # "stage.output" references
    outputs: dict[str, Output]
    commands: Callable[[StageContext], list[Command]]
    training: bool = False                                # outputs["run"] resumes from its last checkpoint
    applies: Callable[[StageContext], bool] | None = None
    environment: dict[str, str] = field(default_factory=dict)


def _inits(context: StageContext) -> list[str]:
    return [argument for time in context.read_json(INITS_FILE)["inits"] for argument in ("--init", time)]


def _training_settings(config) -> dict:
    """A training config without what cannot change the trained model.

    Left out: where it runs (`distributed`), progress bars and the test split
    (a nightly run with a rolling test window must not retrain).
    """
    settings = config_to_dict(config)
    settings.pop("distributed", None)
    settings["train"].pop("progress", None)
    if "data" in settings:
        settings["data"]["splits"].pop("test", None)
    return settings


def build_stages(config: PipelineConfig, resolved: ResolvedConfigs) -> list[Stage]:
    """The stages of `config` in execution order."""
    data = resolved.data
    store = data.path
    data_file, forecast = "configs/data.yaml", config.forecast
    training_environment = ({"XLA_FLAGS": f"--xla_force_host_platform_device_count={config.distributed.cpu_devices}"}
                            if config.distributed.cpu_devices else {})
    # With a forced device count the log first says which devices training sees.
    show_devices = [task("devices")] if config.distributed.cpu_devices else []
    stages = [
        Stage("data", 1, "open the store, or simulate the embedded dataset; fingerprint each split",
              {"data": config_to_dict(data), "simulate": config.data.simulate}, (),
              {"summary": Output("file", "data/summary.json"), **{
                  split: Output(f"split:{split}", "data/summary.json") for split in ("train", "validation", "test")}},
              lambda _: [task("data", "--config", data_file, "--out", "data/summary.json",
                              *(["--simulate"] if config.data.simulate else []))]),
        Stage("stats", 2, "mean, std and 12 h-difference std per variable and level over the training split",
              {"variables": config_to_dict(data.variables), "levels": list(data.levels), "step_hours": data.step_hours},
              ("data.train",), {"stats": Output("netcdf", STATS_FILE)},
              lambda _: [Command(("data", "stats", "--data", store, "--config", data_file, "--out", STATS_FILE))]),
        Stage("teacher", 3, f"train the teacher ({resolved.teacher.train.steps} steps)",
              _training_settings(resolved.teacher), ("data.train", "data.validation", "stats.stats"),
              {"run": Output("run", "teacher")},
              lambda context: [*show_devices, Command(("train", "--config", "configs/teacher.yaml", "--out", "teacher",
                                        *(["--resume"] if context.resume_run else [])))],
              training=True, environment=training_environment),
    ]
    for name, distill in resolved.distill.items():
        stages.append(Stage(
            f"distill.{name}", 4, f"distill student {name} ({distill.distill.method}, "
                                  f"{distill.distill.student.steps} steps per 12 h, {distill.train.steps} updates)",
            _training_settings(distill), ("teacher.run", "data.train", "data.validation"),
            {"run": Output("run", f"students/{name}")},
            lambda context, name=name: [*show_devices, Command(("distill", "--config", f"configs/distill.{name}.yaml",
                                                 "--teacher", "teacher", "--data", store, "--out", f"students/{name}",
                                                 *(["--resume"] if context.resume_run else [])))],
            training=True, environment=training_environment))
    stages += _forecast_stages(config, resolved)
    stages += _evaluation_stages(config, resolved, [stage.name.split(".", 1)[1] for stage in stages
                                                    if stage.group == 5 and stage.name != "forecast.inits"])
    return stages


def _forecast_stages(config: PipelineConfig, resolved: ResolvedConfigs) -> list[Stage]:
    store, forecast, data_file = resolved.data.path, config.forecast, "configs/data.yaml"
    lead = {"steps": forecast.steps}
    inits = config.forecast.inits
    stages = [Stage(
        "forecast.inits", 5, "choose the initialisation times in the test split",
        {**config_to_dict(inits), **lead, "input_frames": resolved.data.input_frames}, ("data.test",),
        {"inits": Output("file", INITS_FILE)},
        lambda _: [task("inits", "--config", data_file, "--steps", str(forecast.steps),
                        "--every-hours", str(inits.every_hours), "--out", INITS_FILE,
                        *(["--count", str(inits.count)] if inits.count else []),
                        *(argument for time in inits.times for argument in ("--time", time)))])]
    members = {"members": forecast.members, "seed": forecast.seed}
    models = {"teacher": ("teacher.run", "teacher"),
              **{name: (f"distill.{name}.run", f"students/{name}") for name in resolved.distill}}
    for label, (run_output, run_dir) in models.items():
        stages.append(Stage(
            f"forecast.{label}", 5,
            f"{forecast.members}-member forecasts of the {label if label == 'teacher' else 'student ' + label}",
            {**lead, **members}, (run_output, "forecast.inits.inits", "data.test"),
            {"forecast": Output("netcdf", f"forecasts/{label}.nc")},
            lambda context, run_dir=run_dir, label=label: [Command((
                "forecast", "--checkpoint", run_dir, "--data", store, *_inits(context), "--steps", str(forecast.steps),
                "--members", str(forecast.members), "--seed", str(forecast.seed), "--out", f"forecasts/{label}.nc"))]))
    if config.data.simulate and config.reference.enabled:
        reference = config.reference
        stages.append(Stage(
            "forecast.reference", 5, f"perfect-model reference: {reference.members} simulator members per init",
            {**lead, "members": reference.members}, ("forecast.inits.inits", "data.test"),
            {"forecast": Output("netcdf", "forecasts/reference.nc")},
            lambda context: [Command((
                "data", "simulate", "--out", store, "--config", data_file, "--reference-out", "forecasts/reference.nc",
                *_inits(context), "--members", str(reference.members), "--steps", str(forecast.steps)))],
            applies=lambda context: context.read_json("data/summary.json")["simulated"]))
    step_hours = str(resolved.data.step_hours)
    stages.append(Stage(
        "forecast.persistence", 5, "persistence baseline: the state at initialisation at every lead",
        dict(lead), ("forecast.inits.inits", "data.test"), {"forecast": Output("netcdf", "forecasts/persistence.nc")},
        lambda context: [Command(("baseline", "persistence", "--truth", store, *_inits(context), "--steps",
                                  str(forecast.steps), "--step-hours", step_hours, "--config", data_file,
                                  "--out", "forecasts/persistence.nc"))]))
    if config.baselines.climatology:
        climatology_members = config.baselines.climatology_members or forecast.members
        stages.append(Stage(
            "forecast.climatology", 5, f"climatology baseline: {climatology_members} training-period states per target",
            {**lead, "members": climatology_members, "seed": forecast.seed},
            ("forecast.inits.inits", "data.train", "data.test"),
            {"forecast": Output("netcdf", "forecasts/climatology.nc")},
            lambda context: [Command(("baseline", "climatology", "--truth", store, *_inits(context), "--steps",
                                      str(forecast.steps), "--step-hours", step_hours, "--members",
                                      str(climatology_members), "--seed", str(forecast.seed), "--config", data_file,
                                      "--out", "forecasts/climatology.nc"))]))
    return stages


def _evaluation_stages(config: PipelineConfig, resolved: ResolvedConfigs, labels: list[str]) -> list[Stage]:
    store, evaluate = resolved.data.path, config.evaluate
    options = [*(["--regions", ",".join(evaluate.regions)] if evaluate.regions else []),
               *(["--variables", ",".join(evaluate.variables)] if evaluate.variables else []),
               *(["--dask-scheduler", evaluate.dask_scheduler] if evaluate.dask_scheduler else [])]
    stages = [Stage(
        f"evaluate.{label}", 6, f"score the {label} forecast (fair CRPS, spread/skill, RMSE, rank histograms)",
        {"regions": list(evaluate.regions), "variables": list(evaluate.variables)},
        (f"forecast.{label}.forecast", "data.test"), {"scores": Output("netcdf", f"scores/{label}.nc")},
        lambda _, label=label: [Command(("evaluate", "--forecast", f"forecasts/{label}.nc", "--truth", store,
                                         "--out", f"scores/{label}.nc", "--label", label, "--no-progress", *options))],
        applies=lambda context, label=label: context.applies(f"forecast.{label}")) for label in labels]
    students = list(resolved.distill)
    speed = config.speed
    timed = speed.enabled and bool(students)
    if timed:
        stages.append(Stage(
            "speed", 7, "wall time per 12 h step of teacher and students (median, interleaved)",
            config_to_dict(speed), ("teacher.run", *(f"distill.{name}.run" for name in students)),
            {"timing": Output("file", "scorecard/timing.json"), "speed": Output("file", "scorecard/speed.json")},
            lambda _: [task("speed", "--data", store, "--model", "teacher=teacher",
                            *(argument for name in students for argument in ("--model", f"{name}=students/{name}")),
                            "--members", str(speed.members), "--inits", str(speed.inits), "--repeats",
                            str(speed.repeats), "--out", "scorecard/speed.json",
                            "--timing-out", "scorecard/timing.json")]))

    def scorecards(context: StageContext) -> list[Command]:
        scored = [label for label in labels if context.applies(f"evaluate.{label}")]
        return [task("scorecards", *(a for name in students for a in ("--student", name)),
                     *(a for label in scored for a in ("--forecast", label)),
                     *(("--timing", "scorecard/timing.json") if timed else ()),
                     "--region", config.scorecard.region, "--out", "scorecard")]

    stages.append(Stage(
        "scorecard", 7, "scorecards: students vs teacher (with the speed table), everything vs persistence",
        config_to_dict(config.scorecard),
        (*(f"evaluate.{label}.scores" for label in labels), *(("speed.timing",) if timed else ())),
        {"html": Output("file", SCORECARD_HTML)}, scorecards))
    return stages
