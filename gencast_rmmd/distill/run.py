"""`distill(...)`: the driver behind `gencast-rmmd distill`.

`--teacher` is a teacher checkpoint (or run), or a phase-1 student (a run of
method `mmd`): a phase-2 method fine-tunes that student, and `mmd` continues
moment matching from its student and aux model (so a moment-matching row can
get the same total step budget as phase 1 + phase 2, from the same start), or
a finished phase-2 run of the same method, which a new run continues: its
student and aux are the start, its frozen phase-1 student and aux stay the
anchors, so the objective is the one that run trained; only the optimiser
state and the schedule start afresh (the card records it as
`continues_checkpoint`). Data, model, normalisation and loss weights come from its
payload; `--data` re-points the store. Layout of `RUN/`:

    single reward weight:   RUN/checkpoints ...                 (the student)
    phase 1 inside the run: RUN/phase1/checkpoints ...          (an `mmd` student, `distill.phase1_steps` steps)
    reward-weight sweep:    RUN/lambda_<value>/checkpoints ...  + RUN/pareto.json, RUN/pareto.md

Phase 1 -> phase 2 handoff. A phase-2 method (rmmd, dmd, draft, crps_only) needs a
phase-1 student: from `--teacher` when that is an `mmd` run, else trained
first in `RUN/phase1/` (shared by every reward weight of a sweep), else (with
`phase1_steps: 0`) the teacher itself. The handoff reads the phase-1 run's
final checkpoint from disk (raw params of student and aux; the teacher's EMA
params): an uninterrupted and a resumed run read the same bytes, and each
phase is a separate run of the generic loop with its own exact kill -9
resume, so the whole chain resumes bit-identically. Phase 2 stores its anchors
as frozen trees in its own checkpoints. Before any run moves on, every run the
call continues is checked against the config its checkpoints record
(`training.run_config`): a refused resume leaves all of `RUN/` as it was, but
for a corrupt newest checkpoint, which is set aside as `step_N.corrupt`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from gencast_rmmd.config import config_to_dict
from gencast_rmmd.data.batches import batch_stream
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.diffusion.model_space import ModelSpace
from gencast_rmmd.distill.base import Anchors, DistillContext
from gencast_rmmd.distill.config import DistillConfig
from gencast_rmmd.distill.pareto import pareto_is_current, write_pareto
from gencast_rmmd.distill.registry import DISTILLERS
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.models.denoiser import DenoiserNetwork
from gencast_rmmd.training import TrainResult, initialize_distributed, latest_checkpoint, load_checkpoint, train
from gencast_rmmd.training.card import ModelCard, checked_card, read_card, sampler_payload
from gencast_rmmd.training.checkpoint import fall_back_to_verified, read_meta
from gencast_rmmd.training.run_config import check_resume_config, check_run_dir, run_config

STUDENT_SAMPLER = "student_kstep"


@dataclasses.dataclass(frozen=True)
class TeacherSource:
    """What `--teacher` provides: its model card, the anchors and provenance records."""

    card: ModelCard
    anchors: Anchors
    teacher_checkpoint: dict        # provenance of the teacher
    phase1_checkpoint: dict | None  # provenance of the phase-1 student, when the source is one or continues one
    continues: dict | None = None   # provenance of the phase-2 student a continuation starts from


def checkpoint_record(loaded, kind: str) -> dict:
    """Where a checkpoint lay, its step, role and params hash: the provenance a student's card keeps."""
    return {"path": str(Path(loaded.path).resolve()), "step": loaded.step, "kind": kind,
            "params_sha256": loaded.meta.get("params_sha256", "")}


def teacher_record(loaded, card: ModelCard) -> dict:
    """The provenance of a teacher checkpoint that a student's card records (`teacher_checkpoint`)."""
    return {**checkpoint_record(loaded, "teacher"), "sampler": card.sampler.model_dump(mode="json")}


def phase1_anchors(loaded) -> Anchors:
    """The anchors a phase-2 run takes from a loaded phase-1 (`mmd`) checkpoint: its frozen teacher, its raw
    student and aux."""
    return Anchors(loaded.frozen["teacher"], loaded.params["student"], loaded.params["aux"])


def load_source(path: str | Path) -> TeacherSource:
    """Read `--teacher`: a teacher (EMA params), a phase-1 `mmd` student (raw student and aux params), or a
    phase-2 student to continue (raw student and aux params; its frozen phase-1 anchors kept, not replaced)."""
    loaded = load_checkpoint(path)
    try:
        card = read_card(loaded.meta, str(loaded.path))
    except UserInputError as error:
        raise UserInputError(f"--teacher: {error}") from None
    if card.kind == "teacher":
        teacher = card.params(loaded.ema_params)
        return TeacherSource(card, Anchors(teacher, teacher, teacher), teacher_record(loaded, card), None)
    if card.method == "mmd":
        return TeacherSource(card, phase1_anchors(loaded), card.model_extra["teacher_checkpoint"],
                             checkpoint_record(loaded, "student"))
    if card.method in DISTILLERS and DISTILLERS[card.method].starts_from == "phase1":
        params, frozen = loaded.params, loaded.frozen
        anchors = Anchors(frozen["teacher"], params["student"], params.get("aux", frozen.get("aux_phase1")),
                          student_phase1=frozen.get("student_phase1"), aux_phase1=frozen.get("aux_phase1"))
        return TeacherSource(card, anchors, card.model_extra["teacher_checkpoint"],
                             card.model_extra.get("phase1_checkpoint"), checkpoint_record(loaded, "student"))
    raise UserInputError(f"--teacher {path} is a student checkpoint of method {card.method}; give a teacher "
                         "checkpoint or run, a phase-1 (method mmd) student run, or a phase-2 run to continue")


@dataclasses.dataclass(frozen=True, eq=False)
class _Environment:
    """What every run of one `distill` call shares: the teacher's card, the data, the network and its space."""

    source: TeacherSource
    data: DataSource
    network: DenoiserNetwork
    space: ModelSpace


def _environment(source: TeacherSource, data: str | None) -> _Environment:
    card = source.card
    return _Environment(source, card.open_data(data, "the teacher"), card.network(), card.model_space())


def student_payload(config: DistillConfig, environment: _Environment, phase1_checkpoint: dict | None) -> dict:
    """The student's model card (as written to its checkpoints): rebuildable by `forecast.build.load_model`."""
    source = environment.source
    teacher = source.card
    payload = {
        "kind": "student", "method": config.distill.method, "params_group": "student",
        "config": {"seed": config.seed, "data": config_to_dict(environment.data.config),
                   "model": teacher.model, "loss": teacher.config["loss"],
                   "distill": config_to_dict(config.distill), "train": config_to_dict(config.train),
                   "distributed": config_to_dict(config.distributed)},
        "model": teacher.model, "layout": teacher.layout,
        "normalizer": teacher.normalizer, "grid": teacher.grid.model_dump(mode="json"),
        "sampler": sampler_payload(STUDENT_SAMPLER, config.distill.student, config.distill.student.steps),
        "data_source": environment.data.report.location,
        "teacher_checkpoint": source.teacher_checkpoint,
    }
    if phase1_checkpoint is not None:
        payload["phase1_checkpoint"] = phase1_checkpoint
    if source.continues is not None:
        payload["continues_checkpoint"] = source.continues
    return checked_card(payload)


def run_settings(config: DistillConfig, environment: _Environment) -> dict:
    """What determines a distillation run's result besides its loop (`training.run_config`): the student
    payload's config and the teacher's identity (its params hash, and the phase-1 student's when `--teacher`
    is one). A phase-1 trained in `RUN/phase1/` is not named: this same config and teacher determine it."""
    source = environment.source
    phase1 = source.phase1_checkpoint
    teacher = {"params_sha256": source.teacher_checkpoint["params_sha256"],
               "phase1_params_sha256": phase1["params_sha256"] if phase1 is not None else None}
    if source.continues is not None:        # only then: the settings (and hashes) of other runs are unchanged
        teacher["continues_params_sha256"] = source.continues["params_sha256"]
    return {**student_payload(config, environment, None)["config"], "teacher": teacher}


def _check_resumable(run_dir: Path, config: DistillConfig, environment: _Environment,
                     log: Callable[[str], None]) -> None:
    """A resumed run must continue under the config and teacher it was started with (`training.run_config`).

    A corrupt newest checkpoint is set aside first (`fall_back_to_verified`), so the checks read the one
    the run resumes from. Runs from older code record no config: for those only the teacher and the
    method are checked, as before.
    """
    fall_back_to_verified(run_dir, log)
    latest = latest_checkpoint(run_dir)
    previous = read_meta(latest) if latest is not None else {}
    if previous and "run_config_sha256" not in previous:
        task = previous.get("task", {})
        same_teacher = (task.get("teacher_checkpoint", {}).get("params_sha256")
                        == environment.source.teacher_checkpoint["params_sha256"])
        if not same_teacher or task.get("method") != config.distill.method:
            raise UserInputError(f"{run_dir} was distilled with method {task.get('method')} from another teacher "
                                 "or method; resume with the --teacher and config it was started with")
    check_resume_config(run_dir, run_config(config.seed, config.train, run_settings(config, environment)))


def _context(config: DistillConfig, environment: _Environment, anchors: Anchors,
             phase1_checkpoint: dict | None) -> DistillContext:
    payload = student_payload(config, environment, phase1_checkpoint)
    return DistillContext(config, environment.network, environment.space, anchors, payload)


def _train_one(config: DistillConfig, environment: _Environment, anchors: Anchors, phase1_checkpoint: dict | None,
               run_dir: Path, log: Callable[[str], None]) -> TrainResult:
    context = _context(config, environment, anchors, phase1_checkpoint)
    task = DISTILLERS[config.distill.method](context)
    log(f"{config.distill.method} -> {run_dir}")
    source, batch_size = environment.data, config.train.batch_size
    validation = batch_stream(source, "validation", batch_size) if config.train.validate_every else None
    target_steps = 2 if config.distill.rollout else None          # a rollout's second step needs the 24 h truth
    return train(task, config.train, seed=config.seed, batches=batch_stream(source, "train", batch_size, target_steps),
                 run_dir=run_dir, validation_batches=validation, distributed=config.distributed,
                 settings=run_settings(config, environment), log=log)


def _check_continuation(config: DistillConfig, environment: _Environment) -> None:
    """A continued phase-2 run must hold every tree the new run starts from or anchors to (`load_source`)."""
    source = environment.source
    if source.continues is None:
        return
    anchors = source.anchors
    task = DISTILLERS[config.distill.method](_context(config, environment, anchors, source.phase1_checkpoint))
    needed = [group for group in task.frozen_groups if group != "teacher"]
    needed += ["aux"] if any("aux" in rule.groups for rule in task.update_rules()) else []
    missing = [group for group in needed if getattr(anchors, group) is None]
    if missing:
        raise UserInputError(f"--teacher {source.continues['path']} holds no {' or '.join(missing)} tree, which "
                             f"this config's {source.card.method} run needs; continue it with the variant it was "
                             "trained with (its moment reference and anchor), or start from its phase-1 run")


def _phase1_anchors(run_dir: Path) -> tuple[Anchors, dict]:
    loaded = load_checkpoint(run_dir)
    return phase1_anchors(loaded), checkpoint_record(loaded, "student")


@dataclasses.dataclass(frozen=True)
class DistillOutcome:
    """The runs one `distill` call made (reward weight -> result) and the Pareto table, if a sweep."""

    runs: dict[float, TrainResult]
    pareto: Path | None


def distill(config: DistillConfig, teacher: str | Path, run_dir: str | Path, data: str | None = None,
            resume: bool = False, log: Callable[[str], None] = print) -> DistillOutcome:
    """Distill `teacher` with `config` into `run_dir` (module docstring); resume exactly with `resume`."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    initialize_distributed(config.distributed)
    source = load_source(teacher)
    distiller = DISTILLERS[config.distill.method]
    environment = _environment(source, data)
    # Every run this call continues: RUN/phase1 first (when trained here), then one per reward weight.
    planned = {reward_weight: (run_dir / f"lambda_{reward_weight:g}" if config.distill.is_sweep else run_dir,
                               config.for_reward_weight(reward_weight))
               for reward_weight in config.distill.reward_weights}
    if source.continues is not None and config.distill.method != source.card.method:
        raise UserInputError(f"--teacher {teacher} is a {source.card.method} run; a {config.distill.method} config "
                             f"cannot continue it (give a {source.card.method} config, or its phase-1 run)")
    trains_phase1 = distiller.starts_from == "phase1" and source.phase1_checkpoint is None \
        and source.continues is None and config.distill.phase1_steps > 0
    phase1_run = [(run_dir / "phase1", config.phase1())] if trains_phase1 else []
    for target, target_config in [*phase1_run, *planned.values()]:  # refuse before any run moves on
        _check_continuation(target_config, environment)
        _check_resumable(target, target_config, environment, log)
    log(f"distilling {teacher} with {config.distill.method} on {environment.data.report.location} -> {run_dir}"
        f"{' (resuming)' if resume else ''}")
    run_dir.mkdir(parents=True, exist_ok=True)
    anchors, phase1 = source.anchors, source.phase1_checkpoint
    for target, phase1_config in phase1_run:
        _train_one(phase1_config, environment, anchors, None, target, log)
        anchors, phase1 = _phase1_anchors(target)

    runs: dict[float, TrainResult] = {}
    for reward_weight, (target, weight_config) in planned.items():
        runs[reward_weight] = _train_one(weight_config, environment, anchors, phase1, target, log)
    if not config.distill.is_sweep:
        return DistillOutcome(runs, None)
    checkpoints = {weight: result.checkpoint for weight, result in runs.items()}
    if pareto_is_current(run_dir, checkpoints):
        log(f"{run_dir / 'pareto.json'} already scores these runs")
        return DistillOutcome(runs, run_dir / "pareto.json")
    return DistillOutcome(runs, write_pareto(run_dir, _context(config, environment, anchors, phase1), environment.data,
                                             source.teacher_checkpoint["sampler"], checkpoints, log))
