"""The stage graph: which commands each stage runs, what it reads and what it writes.

A `Stage` (`pipelines.graph`) is data: its `settings` (hashed into its
identity), its `inputs` (`"stage.output"` references whose digests also go
into the identity), its `outputs` (paths relative to the work directory, with
a digest kind) and a function that builds its commands once the stages before
it are done (the forecast commands need the chosen init times, a grid row's
the chosen candidate). Every command runs with the work directory as its
current directory, so identities and logs never depend on where the work
directory lies.

Work directory layout:

    configs/      the resolved configs every stage ran with (data, teacher, distill.LABEL, teacher_sampler.LABEL,
                  pipeline); a `base:` entry that follows a choice: its pre-selection view, headed by a comment
    data/         summary.json: store, splits and their fingerprints
    stats/        stats.nc
    teacher/      the teacher's training run (checkpoints/, metrics.jsonl)
    students/L/   one distillation run per student row L (a distiller, or NAME_seedS: an extra seed, of a row
                  or of the best of a `best_of` entry's rows);
    students/N/cK   candidate K of a distiller with a grid
    validation/   inits.json and LABEL.nc: forecasts on the validation split (with a `validation:` section)
    selection/    NAME.json (candidates, validation scores, the choice) and NAME.yaml (the chosen config); a
                  `best_of` entry's NAME.json: its rows' validation scores and the best row
    forecasts/    inits.json and LABEL.nc (LABEL.zarr with forecast.format zarr) for teacher, students, teacher
                  sampler rows, reference, persistence, climatology (test split)
    scores/       LABEL.nc from `gencast-rmmd evaluate`
    scorecard/    index.html (start here), students_vs_teacher/, vs_climatology/, vs_persistence/, speed.json,
                  timing.json
    logs/         STAGE.log, one per stage; STAGE.progress.json, its latest progress record
    manifest.json, run_summary.json   what ran with what (pipelines.manifest); what the last run cost
"""

from __future__ import annotations

from gencast_rmmd.config import config_to_dict
from pipelines.candidates import (TEACHER, best_seed_model, chosen_inputs, chosen_model, model_description, row_stages,
                                  seed_model)
from pipelines.config import GATE_FILE, STATS_FILE, PipelineConfig
from pipelines.digests import model_settings
from pipelines.forecasts import DATA_FILE, FORECAST_SUFFIXES, Split, forecast_stage, inits_stage
from pipelines.graph import Command, Output, Stage, StageContext, TrainingSetup, task  # noqa: F401
from pipelines.resolution import ResolvedConfigs

SCORECARD_HTML = "scorecard/index.html"


def build_stages(config: PipelineConfig, resolved: ResolvedConfigs) -> list[Stage]:
    """The stages of `config` in execution order."""
    data = resolved.data
    store = data.path
    setup = TrainingSetup.for_cpu_devices(config.distributed.cpu_devices)
    stages = [
        Stage("data", 1, "open the store, or simulate the embedded dataset; fingerprint each split",
              {"data": config_to_dict(data), "simulate": config.data.simulate}, (),
              {"summary": Output("file", "data/summary.json"), **{
                  split: Output(f"split:{split}", "data/summary.json") for split in ("train", "validation", "test")}},
              lambda _: [task("data", "--config", DATA_FILE, "--out", "data/summary.json",
                              *(["--simulate"] if config.data.simulate else []))]),
        Stage("stats", 2, "mean, std and 12 h-difference std per variable and level over the training split",
              {"variables": config_to_dict(data.variables), "levels": list(data.levels), "step_hours": data.step_hours},
              ("data.train",), {"stats": Output("netcdf", STATS_FILE)},
              lambda _: [Command(("data", "stats", "--data", store, "--config", DATA_FILE, "--out", STATS_FILE))]),
        _teacher_stage(resolved, setup),
    ]
    validation = None
    if config.validation is not None:
        section = config.validation
        validation = Split("validation", "validation.forecast", "validation/forecasts", "validation.inits",
                           "validation/inits.json", 4, store, section.inits,
                           section.steps or config.forecast.steps, section.members or config.forecast.members,
                           section.seed, config.forecast.format, config.forecast.jobs)
    stages += row_stages(resolved, setup, validation, config.validation.region if config.validation else "global")
    stages += _forecast_stages(config, resolved)
    stages += _evaluation_stages(config, resolved, [stage.name.split(".", 1)[1] for stage in stages
                                                    if stage.group == 5 and stage.name != "forecast.inits"])
    return rows_first(stages) if config.runtime.order == "rows" else stages


def producer(reference: str) -> str:
    """The stage an input reference (`STAGE.OUTPUT`) names."""
    return reference.rsplit(".", 1)[0]


def rows_first(stages: list[Stage]) -> list[Stage]:
    """`runtime.order: rows`: the extra seeds of chosen configs, and every stage that reads them, after every
    other stage of groups 1-4 and 7 (every choice made, every row's run trained, before any extra seed); then
    every test forecast and scoring stage (groups 5 and 6) moved up to just after the last stage it reads, in
    their own order; the other stages keep theirs.

    Valid because no stage of groups 1-4 reads a test forecast or a score, and no choice reads an extra seed:
    each moved stage still comes after every stage it reads.
    """
    moved_groups = (5, 6)
    seeded: set[str] = set()                       # `stages` is in group order: producers come first
    for stage in stages:
        if stage.extra_seed or any(producer(reference) in seeded for reference in stage.inputs):
            seeded.add(stage.name)
    kept = [stage for stage in stages if stage.group not in moved_groups]
    ordered = [stage for stage in kept if stage.name not in seeded] + [stage for stage in kept if stage.name in seeded]
    for stage in (stage for stage in stages if stage.group in moved_groups):
        producers = {producer(reference) for reference in stage.inputs}
        position = max((index + 1 for index, earlier in enumerate(ordered) if earlier.name in producers), default=0)
        while position < len(ordered) and ordered[position].group in moved_groups:
            position += 1                          # after the moved stages already placed here (their order kept)
        ordered.insert(position, stage)
    return ordered


def _teacher_stage(resolved: ResolvedConfigs, setup: TrainingSetup) -> Stage:
    """`teacher`: train it, install the shipped weights package (`teacher.weights`) after checking it, or
    import a published GenCast checkpoint (`teacher.gencast`)."""
    inputs, outputs = ("data.train", "data.validation", "stats.stats"), {"run": Output("run", "teacher")}
    settings = model_settings(config_to_dict(resolved.teacher))
    if resolved.teacher_gencast is not None:
        return _gencast_teacher_stage(resolved, settings, outputs)
    if resolved.teacher_weights is None:
        return Stage("teacher", 3, f"train the teacher ({resolved.teacher.train.steps} steps)", settings, inputs,
                     outputs, lambda context: [*setup.preamble, Command((
                         "train", "--config", "configs/teacher.yaml", "--out", "teacher",
                         *(["--resume"] if context.resume_run else [])))],
                     training=True, environment=setup.environment)
    from gencast_rmmd.training.packages import read_info

    info = read_info(resolved.teacher_weights)
    settings = {key: value for key, value in settings.items() if key != "train"}
    return Stage("teacher", 3, f"install the teacher weights {resolved.teacher_weights.name} (step "
                 f"{info['source']['checkpoint_step']}, sha256 {info['params_sha256'][:12]}…)",
                 {**settings, "weights_sha256": info["params_sha256"]}, inputs, outputs,
                 lambda _: [Command(("weights", "install", str(resolved.teacher_weights), "--config",
                                     "configs/teacher.yaml", "--stats", STATS_FILE, "--out", "teacher"))],
                 training=True)


def _gencast_teacher_stage(resolved: ResolvedConfigs, settings: dict, outputs: dict) -> Stage:
    """`teacher` from `teacher.gencast`: `import gencast` for the pipeline's data config.

    Its identity: the configs read from the checkpoint and the content digests of the checkpoint and its
    statistics files; its inputs: the data splits (graphcast's statistics replace stage `stats`'s).
    """
    source = resolved.teacher_gencast
    settings = {key: value for key, value in settings.items() if key not in ("train", "stats")}
    return Stage("teacher", 3, f"import the GenCast checkpoint {source.checkpoint.rsplit('/', 1)[-1]} "
                 f"({source.fingerprints['checkpoint'][:19]}…)",
                 {**settings, "gencast": source.fingerprints,
                  **({"allow_other_grid": True} if source.allow_other_grid else {})},
                 ("data.train", "data.validation"), outputs,
                 lambda _: [Command(("import", "gencast", source.checkpoint, "--stats", source.stats, "--config",
                                     DATA_FILE, "--out", "teacher",
                                     *(("--allow-other-grid",) if source.allow_other_grid else ())))],
                 training=True)


def _forecast_stages(config: PipelineConfig, resolved: ResolvedConfigs) -> list[Stage]:
    """Group 5: the test inits, then the teacher, every row (chosen config, extra seeds) and the baselines."""
    store, forecast = resolved.data.path, config.forecast
    test = Split("test", "forecast", "forecasts", "forecast.inits", "forecasts/inits.json", 5, store, forecast.inits,
                 forecast.steps, forecast.members, forecast.seed, forecast.format, forecast.jobs)
    stages = [inits_stage(test, resolved.data.input_frames),
              forecast_stage(test, "teacher", "the teacher", ("teacher.run",), lambda _: TEACHER)]
    for row in resolved.rows:
        fixed_sampler = () if row.selected else row.candidates[0].sampler
        stages.append(forecast_stage(test, row.name, model_description(row), chosen_inputs(row),
                                     lambda context, row=row: chosen_model(row, context), fixed_sampler))
        stages += [forecast_stage(test, row.seed_label(seed), f"student {row.seed_label(seed)}",
                                  (f"distill.{row.seed_label(seed)}.run",),
                                  lambda _, row=row, seed=seed: seed_model(row, seed)) for seed in row.seeds]
    for best in resolved.best_of.values():
        stages += [forecast_stage(test, label, f"student {label} (the best of {', '.join(best.among)})",
                                  (f"distill.{label}.run",),
                                  lambda _, best=best, seed=seed: best_seed_model(best, seed))
                   for seed, label in zip(best.seeds, best.labels)]
    lead = {"steps": forecast.steps, **({"format": forecast.format} if forecast.format != "netcdf" else {})}
    init_arguments = test.init_arguments
    if config.data.simulate and config.reference.enabled:
        reference = config.reference
        stages.append(Stage(
            "forecast.reference", 5, f"perfect-model reference: {reference.members} simulator members per init",
            {**lead, "members": reference.members}, test.inputs,
            {"forecast": Output("netcdf", test.out("reference"))},
            lambda context: [Command((
                "data", "simulate", "--out", store, "--config", DATA_FILE, "--reference-out", test.out("reference"),
                *init_arguments(context), "--members", str(reference.members), "--steps", str(forecast.steps)))],
            applies=lambda context: context.read_json("data/summary.json")["simulated"]))
    step_hours = str(resolved.data.step_hours)
    stages.append(Stage(
        "forecast.persistence", 5, "persistence baseline: the state at initialisation at every lead",
        dict(lead), test.inputs, {"forecast": Output("netcdf", test.out("persistence"))},
        lambda context: [Command(("baseline", "persistence", "--truth", store, *init_arguments(context), "--steps",
                                  str(forecast.steps), "--step-hours", step_hours, "--config", DATA_FILE,
                                  "--out", test.out("persistence")))]))
    if config.baselines.climatology:
        climatology_members = config.baselines.climatology_members or forecast.members
        stages.append(Stage(
            "forecast.climatology", 5, f"climatology baseline: {climatology_members} training-period states per target",
            {**lead, "members": climatology_members, "seed": forecast.seed},
            ("forecast.inits.inits", "data.train", "data.test"),
            {"forecast": Output("netcdf", test.out("climatology"))},
            lambda context: [Command(("baseline", "climatology", "--truth", store, *init_arguments(context), "--steps",
                                      str(forecast.steps), "--step-hours", step_hours, "--members",
                                      str(climatology_members), "--seed", str(forecast.seed), "--config", DATA_FILE,
                                      "--out", test.out("climatology")))]))
    return stages


def _evaluation_stages(config: PipelineConfig, resolved: ResolvedConfigs, labels: list[str]) -> list[Stage]:
    """Group 6 (every test forecast scored) and 7 (speed of teacher and rows; scorecards)."""
    store, evaluate = resolved.data.path, config.evaluate
    suffix = FORECAST_SUFFIXES[config.forecast.format]
    options = [*(["--regions", ",".join(evaluate.regions)] if evaluate.regions else []),
               *(["--variables", ",".join(evaluate.variables)] if evaluate.variables else []),
               *(["--dask-scheduler", evaluate.dask_scheduler] if evaluate.dask_scheduler else [])]
    stages = [Stage(
        f"evaluate.{label}", 6, f"score the {label} forecast (fair CRPS, spread/skill, RMSE, rank histograms)",
        {"regions": list(evaluate.regions), "variables": list(evaluate.variables)},
        (f"forecast.{label}.forecast", "data.test"), {"scores": Output("netcdf", f"scores/{label}.nc")},
        lambda _, label=label: [Command(("evaluate", "--forecast", f"forecasts/{label}{suffix}", "--truth", store,
                                         "--out", f"scores/{label}.nc", "--label", label, "--no-progress", *options))],
        applies=lambda context, label=label: context.applies(f"forecast.{label}")) for label in labels]
    students = [*(label for row in resolved.distill.values() for label in row.labels),
                *(label for best in resolved.best_of.values() for label in best.labels)]
    samplers = list(resolved.teacher_samplers)
    speed = config.speed
    timed = speed.enabled and bool(resolved.rows)
    if timed:
        stages.append(_speed_stage(config, resolved))

    def scorecards(context: StageContext) -> list[Command]:
        scored = [label for label in labels if context.applies(f"evaluate.{label}")]
        return [task("scorecards", *(a for name in students for a in ("--student", name)),
                     *(a for label in samplers for a in ("--teacher-sampler", label)),
                     *(a for label in scored for a in ("--forecast", label)),
                     *(("--timing", "scorecard/timing.json") if timed else ()),
                     "--region", config.scorecard.region, "--truth", store, "--out", "scorecard")]

    stages.append(Stage(
        "scorecard", 7, "scorecards against the teacher (students, teacher samplers, speed), climatology and "
                        "persistence; the landing page",
        config_to_dict(config.scorecard),
        (*(f"evaluate.{label}.scores" for label in labels), *(("speed.timing",) if timed else ())),
        {"html": Output("page", SCORECARD_HTML)}, scorecards))
    if config.table.enabled:
        from pipelines.table import table_stage_spec   # xarray and the bootstrap: only when there is a table

        spec = table_stage_spec(labels, [*(row.name for row in resolved.rows if row.selected), *resolved.best_of],
                                timed, store, config.table.draws)
        stages.append(Stage(
            spec["name"], spec["group"], "the comparison table: every test row against the teacher, with "
                                         "block-bootstrap intervals, seeds, speed and the choices made on validation",
            spec["settings"], tuple(spec["inputs"]),
            {name: Output(kind, path) for name, (kind, path) in spec["outputs"].items()},
            lambda _: [Command(tuple(spec["command"]))]))
    if resolved.gate is not None:
        trained = resolved.teacher_weights is None and resolved.teacher_gencast is None
        stages.append(_gate_stage(resolved.gate, labels, trained))
    return stages


def _gate_stage(rules, labels: list[str], trained: bool) -> Stage:
    """`gate`: the quality gate's rules on the scores files (`gencast-rmmd gate`), after everything else."""
    named = {rules.candidate, *(getattr(rule, key, None) for rule in rules.rules for key in ("candidate", "baseline"))}
    scored = [label for label in labels if label in named]
    return Stage(
        "gate", 7, f"quality gate: {rules.title} ({len(rules.rules)} rules on {', '.join(scored) or 'no scores'})",
        {"rules": rules.model_dump(mode="json")}, (*(f"evaluate.{label}.scores" for label in scored), "teacher.run"),
        {"verdict": Output("file", "gate/verdict.json"), "markdown": Output("file", "gate/verdict.md")},
        lambda _: [task("gate", "--rules", GATE_FILE, "--scores", "scores", "--out", "gate/verdict.json",
                        *(("--train-stage", "teacher") if trained else ()))])


def _speed_stage(config: PipelineConfig, resolved: ResolvedConfigs) -> Stage:
    """`speed`: one 12 h step of the teacher and of every row's chosen config (extra seeds time alike)."""
    speed, rows = config.speed, resolved.rows
    fixed_samplers = {row.name: list(row.candidates[0].sampler) for row in rows
                      if row.candidates[0].sampler and not row.selected}

    def commands(context: StageContext) -> list[Command]:
        models = {"teacher": TEACHER, **{row.name: chosen_model(row, context) for row in rows}}
        return [task("speed", "--data", resolved.data.path,
                     *(a for label, model in models.items() for a in ("--model", f"{label}={model.checkpoint}")),
                     *(a for label, model in models.items() for override in model.sampler
                       for a in ("--model-sampler", f"{label}:{override}")),
                     "--members", str(speed.members), "--inits", str(speed.inits), "--repeats", str(speed.repeats),
                     "--out", "scorecard/speed.json", "--timing-out", "scorecard/timing.json")]

    inputs = dict.fromkeys(["teacher.run", *(reference for row in rows for reference in chosen_inputs(row))])
    return Stage(
        "speed", 7, "wall time per 12 h step of the teacher, students and teacher samplers (median, interleaved)",
        {**config_to_dict(speed), **({"samplers": fixed_samplers} if fixed_samplers else {})}, tuple(inputs),
        {"timing": Output("file", "scorecard/timing.json"), "speed": Output("file", "scorecard/speed.json")},
        commands)
