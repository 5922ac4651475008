"""Student weights packages: a phase-1 student to start phase 2 from, a phase-2 student to forecast or continue.

A package of kind `phase1` (`gencast_rmmd.training.packages`) holds the raw parameters
`{"student": ..., "aux": ...}` of an `mmd` run's checkpoint, the two trees a phase-2
method continues from (`distill.run.load_source`), with the student's model card and
`teacher_sha256`: the hash of the teacher denoiser it was distilled from, as a teacher
package records it (`params_sha256({"denoiser": EMA params})`). The teacher itself is
not shipped again: `install_phase1` takes a teacher run (trained, or installed from the
teacher's package), refuses one whose denoiser has another hash or whose model,
layout, grid or normaliser differ from the student's, and writes an ordinary `mmd`
checkpoint (params and EMA params both the shipped trees, the teacher as its frozen
tree) that `distill --teacher RUN` continues from exactly as from the run that was
exported: the same anchors, the same phase-1 hash in the phase-2 run's config.
Its training cannot be resumed: there is no optimiser state.

A package of kind `phase2` holds the trained groups of a phase-2 run (`rmmd` and the
other methods that start from a phase-1 student: the student, and the live aux where
the method trains one; raw, as a continuation starts from them) and the student's EMA
parameters (`student_ema`, what `forecast` samples with), its card, `run_params_sha256`
(the raw groups' hash as the run recorded it), `teacher_sha256`, `phase1_sha256` (the phase-1
student's hash, as its phase-1 package records it) and `anchors_sha256` (the hash of
the frozen phase-1 trees the run anchored to). The anchors are not shipped again:
`install_phase2` takes the phase-1 run (trained, or installed from its package),
refuses one of another hash, rebuilds the frozen trees from it, checks them against
`anchors_sha256`, and writes an ordinary checkpoint of the method that `forecast`
reads and that `distill --teacher RUN` continues (`distill.run.load_source`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training.card import checked_card, read_card
from gencast_rmmd.training.packages import first_difference, installed_already, package_sha256, read_package, \
    write_package
from gencast_rmmd.training.tree_io import params_sha256

GROUPS = ("student", "aux")
# sections of the student's config that say where its data lay (install takes the teacher run's data section)
LOCAL_SECTIONS = ("data",)
# the card entries a phase-1 student shares with the teacher it was distilled from
SHARED_WITH_TEACHER = ("model", "layout", "normalizer", "grid")


def teacher_sha256(teacher_params) -> str:
    """The hash of a teacher denoiser as its weights package records it."""
    return package_sha256("teacher", teacher_params)


def _portable_payload(loaded) -> tuple[dict, dict]:
    """A checkpoint's card without what says where things lay on the exporting machine, and its teacher record."""
    payload = json.loads(json.dumps(loaded.meta["task"]))
    provenance = payload.pop("teacher_checkpoint", None) or {}
    provenance.pop("path", None)                     # where it lay on the exporting machine
    payload.pop("data_source", None)
    for record in ("phase1_checkpoint", "continues_checkpoint"):
        if record in payload:
            payload[record].pop("path", None)
    payload["config"] = {key: value for key, value in payload["config"].items() if key not in LOCAL_SECTIONS}
    return payload, provenance


def _source_record(loaded, provenance: dict, reproduce: str | None) -> dict:
    return {"checkpoint_step": loaded.step, "run_config_sha256": loaded.meta.get("run_config_sha256"),
            "seed": loaded.meta.get("seed"), "train": loaded.meta.get("train"), "teacher_checkpoint": provenance,
            "versions": loaded.meta.get("versions"), "reproduce": reproduce}


def _load_student(checkpoint: str | os.PathLike, methods, refusal) -> checkpoints.Checkpoint:
    """The checkpoint (or run's latest) at `checkpoint`, a student of one of `methods`; else
    UserInputError(`PATH is ` + refusal(what it is))."""
    loaded = checkpoints.load_checkpoint(checkpoint)
    card = read_card(loaded.meta, str(loaded.path))
    if card.kind != "student" or card.method not in methods:
        what = "a teacher" if card.kind == "teacher" else f"a student of method {card.method}"
        raise UserInputError(f"{checkpoint} is {refusal(what)}")
    return loaded


def _load_phase1(checkpoint: str | os.PathLike, refusal) -> checkpoints.Checkpoint:
    """The `mmd` checkpoint (or run's latest) at `checkpoint` (`_load_student`)."""
    return _load_student(checkpoint, ("mmd",), refusal)


def export_phase1(checkpoint: str | os.PathLike, out: str | os.PathLike, reproduce: str | None = None) -> dict:
    """Write the student and aux of an `mmd` checkpoint (or run's latest) as a package in `out`; return its info."""
    loaded = _load_phase1(checkpoint, lambda what: f"{what}, not a phase-1 (method mmd) student; export a run "
                                                   "of `gencast-rmmd distill` with distill.method mmd")
    payload, provenance = _portable_payload(loaded)
    tree = {group: loaded.params[group] for group in GROUPS}
    return write_package(out, tree, {
        "kind": "phase1", "payload": payload, "teacher_sha256": teacher_sha256(loaded.frozen["teacher"]),
        "source": _source_record(loaded, provenance, reproduce),
    })


EMA_STUDENT = "student_ema"       # a phase-2 package's entry for the student's EMA parameters


def _anchors(frozen: dict) -> dict:
    """The frozen trees of a phase-2 run other than the teacher: its phase-1 anchors."""
    return {group: tree for group, tree in frozen.items() if group != "teacher"}


def export_phase2(checkpoint: str | os.PathLike, out: str | os.PathLike, reproduce: str | None = None) -> dict:
    """Write the trained groups of a phase-2 checkpoint (or run's latest) as a package in `out`; return its info."""
    from gencast_rmmd.distill.registry import DISTILLERS

    phase2_methods = [name for name, distiller in DISTILLERS.items() if distiller.starts_from == "phase1"]
    loaded = _load_student(checkpoint, phase2_methods, lambda what: f"{what}, not a phase-2 student; export a "
                           "run of `gencast-rmmd distill` with a method that starts from a phase-1 student (rmmd, "
                           "dmd, ...)")
    phase1 = loaded.meta["task"].get("phase1_checkpoint")
    if phase1 is None:
        raise UserInputError(f"{loaded.path} started from the teacher itself (distill.phase1_steps: 0), not from a "
                             "phase-1 student: there is no phase-1 run to install it against")
    payload, provenance = _portable_payload(loaded)
    ema = loaded.ema_params if loaded.ema_params is not None else loaded.params
    return write_package(out, {**loaded.params, EMA_STUDENT: ema["student"]}, {
        "kind": "phase2", "payload": payload, "run_params_sha256": params_sha256(loaded.params),
        "teacher_sha256": teacher_sha256(loaded.frozen["teacher"]),
        "phase1_sha256": phase1["params_sha256"], "anchors_sha256": params_sha256(_anchors(loaded.frozen)),
        "frozen_groups": sorted(loaded.frozen), "source": _source_record(loaded, provenance, reproduce),
    })


def load_phase1(path: str | os.PathLike) -> tuple[dict, dict]:
    """`({"student", "aux"} trees, info)` of a phase-1 package, after checking them against the recorded hash."""
    return read_package(path, "phase1")


def install_phase1(path: str | os.PathLike, teacher: str | os.PathLike, out: str | os.PathLike,
                   log=print) -> Path:
    """Install a phase-1 package as the `mmd` run `out`, distilled from the teacher run `teacher`; return the
    checkpoint path. Refused (UserInputError, nothing written) when the trees do not match their hash, the
    teacher's denoiser is not the one the package was distilled from, or the cards disagree (module docstring).
    """
    from gencast_rmmd.distill.run import teacher_record

    path, out = Path(path), Path(out)
    tree, info = load_phase1(path)
    loaded = checkpoints.load_checkpoint(teacher)
    card = read_card(loaded.meta, str(loaded.path))
    if card.kind != "teacher":
        raise UserInputError(f"--teacher {teacher} is a {card.kind} checkpoint; give the teacher run the phase-1 "
                             "student was distilled from")
    teacher_params = card.params(loaded.ema_params)
    found = teacher_sha256(teacher_params)
    if found != info["teacher_sha256"]:
        raise UserInputError(f"--teacher {teacher}: its denoiser's sha256 is {found[:16]}…, not the "
                             f"{info['teacher_sha256'][:16]}… the package {path} was distilled from; give that "
                             "teacher (its weights package or a run that trained it)")
    payload = _payload_on(info, loaded.meta["task"], path, "the teacher run", teacher)
    existing = installed_already(out, {"params_sha256": info["params_sha256"], "teacher_sha256": found}, log)
    if existing is not None:
        return existing
    payload["teacher_checkpoint"] = teacher_record(loaded, card)
    written = _write_installed(out, path, info, payload, tree, tree, {"teacher": teacher_params},
                               {"teacher_sha256": found})
    log(f"installed {path} (phase-1 student and aux, {info['param_count']} parameters, sha256 "
        f"{info['params_sha256'][:16]}…, step {info['source']['checkpoint_step']}) from teacher {teacher} "
        f"-> {written}")
    return written


def _payload_on(info: dict, run_payload: dict, path: Path, role: str, run) -> dict:
    """A package's card for installing on `run` (`role`: the run it was distilled from): refused when an entry
    it shares with that run differs; its data section and source taken from the run's."""
    payload = json.loads(json.dumps(info["payload"]))
    for key in SHARED_WITH_TEACHER:
        difference = first_difference(payload[key], run_payload[key])
        if difference:
            raise UserInputError(f"the package {path}'s {key}.{difference} differs from {run}'s; install it with "
                                 f"{role} it was distilled from")
    payload["config"]["data"] = run_payload["config"]["data"]
    payload["data_source"] = run_payload.get("data_source")
    return payload


def _write_installed(out: Path, path: Path, info: dict, payload: dict, params, ema, frozen,
                     checked: dict) -> Path:
    """Write an installed package as the run `out`'s one checkpoint, at the step it was exported from; `checked`:
    the hashes the install verified (with the package's, they tell a repeated install from another)."""
    source = info["source"]
    out.mkdir(parents=True, exist_ok=True)
    return checkpoints.save_checkpoint(out, {"params": params, "ema_params": ema, "frozen": frozen}, {
        "step": int(source["checkpoint_step"]), "seed": source.get("seed"), "train": source.get("train"),
        "task": checked_card(payload), "params_sha256": params_sha256(params), "ema_params_sha256": params_sha256(ema),
        "installed_from": {"path": str(path.resolve()), "params_sha256": info["params_sha256"], **checked,
                           "source": source},
        "versions": source.get("versions"), "written_at": dt.datetime.now(dt.timezone.utc).isoformat()})


def install_phase2(path: str | os.PathLike, phase1: str | os.PathLike, out: str | os.PathLike,
                   log=print) -> Path:
    """Install a phase-2 package as a run of its method in `out`, anchored to the phase-1 run `phase1`; return the
    checkpoint path. Refused (UserInputError, nothing written) when the trees do not match their hash, `phase1`
    is not the phase-1 student (with its teacher) the package was trained from, or the cards disagree."""
    from gencast_rmmd.distill.run import checkpoint_record, phase1_anchors

    path, out = Path(path), Path(out)
    tree, info = read_package(path, "phase2")
    loaded = _load_phase1(phase1, lambda what: f"{what}; give --teacher the phase-1 (method mmd) run the "
                                               "phase-2 package was distilled from (trained, or installed)")
    found = params_sha256(loaded.params)
    if found != info["phase1_sha256"]:
        raise UserInputError(f"--teacher {phase1}: its phase-1 student's sha256 is {found[:16]}…, not the "
                             f"{info['phase1_sha256'][:16]}… the package {path} was distilled from; give that "
                             "phase-1 run")
    anchors = phase1_anchors(loaded)        # the frozen trees rebuilt as the run being exported took them
    frozen = {group: anchors.frozen(group) for group in info["frozen_groups"]}
    if teacher_sha256(frozen["teacher"]) != info["teacher_sha256"] \
            or params_sha256(_anchors(frozen)) != info["anchors_sha256"]:
        raise UserInputError(f"--teacher {phase1}: its teacher or anchors are not the ones the package {path} "
                             "recorded; give the phase-1 run it was distilled from")
    payload = _payload_on(info, loaded.meta["task"], path, "the phase-1 run", phase1)
    existing = installed_already(out, {"params_sha256": info["params_sha256"], "phase1_sha256": found}, log)
    if existing is not None:
        return existing
    payload["teacher_checkpoint"] = loaded.meta["task"]["teacher_checkpoint"]
    payload["phase1_checkpoint"] = checkpoint_record(loaded, "student")
    params = {group: value for group, value in tree.items() if group != EMA_STUDENT}
    ema = {**params, "student": tree[EMA_STUDENT]}     # a continuation restarts the EMA; forecasts read the student's
    written = _write_installed(out, path, info, payload, params, ema, frozen, {"phase1_sha256": found})
    log(f"installed {path} ({payload['method']} student, {info['param_count']} parameters, sha256 "
        f"{info['params_sha256'][:16]}…, step {info['source']['checkpoint_step']}) on phase-1 run {phase1} "
        f"-> {written}")
    return written
