"""`gencast-rmmd train`, `forecast`, `inspect` and `weights` (export, install, verify weights packages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gencast_rmmd.commands.common import DataOption, SetOption, console
from gencast_rmmd.io_utils import check_output_path

ConfigArgument = Annotated[Path, typer.Option("--config", "-c", help="Teacher config YAML (configs/teacher/*.yaml).")]
OutOption = Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, metrics.jsonl, stats.nc).")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")]


def train(config: ConfigArgument, out: OutOption, data: DataOption = None, overrides: SetOption = None,
          resume: ResumeOption = False) -> None:
    """Train the GenCast-style teacher (diffusion denoiser) on a store."""
    from gencast_rmmd.config import load_config
    from gencast_rmmd.teacher.config import TeacherConfig
    from gencast_rmmd.teacher.train import train_teacher

    check_output_path(out, directory=True)
    teacher_config = load_config(config, TeacherConfig, overrides or [], data)
    console.print(f"training teacher {config} on {teacher_config.data.path} -> {out}"
                  f"{' (resuming)' if resume else ''}")
    result = train_teacher(teacher_config, out, resume=resume)
    console.print(f"done: step {result.step}, checkpoint {result.checkpoint}, params sha256 {result.params_sha256[:16]}…")


def forecast(checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint or run directory.")],
             init: Annotated[list[str], typer.Option("--init", help="Initialisation time (ISO), repeatable.")],
             steps: Annotated[int, typer.Option("--steps", min=1, help="Number of 12 h steps.")],
             members: Annotated[int, typer.Option("--members", min=1, help="Ensemble members.")],
             out: Annotated[Path, typer.Option("--out", help="Forecast to write: NetCDF, or a zarr store for a "
                                                               "name ending in .zarr.")],
             data: DataOption = None,
             seed: Annotated[int, typer.Option("--seed", help="Seed of the ensemble keys.")] = 0,
             ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Use the EMA parameters.")] = True,
             batch_size: Annotated[int, typer.Option(
                 "--batch-size", min=1, help="Samples per network call (memory grows with it).")] = 4,
             sampler: Annotated[list[str] | None, typer.Option(
                 "--sampler", help="key=value override of the checkpoint's sampler config "
                                   "(e.g. noise_inflation=1.0), repeatable.")] = None,
             jobs: Annotated[int, typer.Option(
                 "--jobs", min=1, help="Processes, each single-threaded, over contiguous groups of inits; the "
                                       "merged file equals one process's (faster on a CPU for small models).")] = 1,
             ) -> None:
    """Autoregressive ensemble forecast from a checkpoint, written to CF NetCDF or zarr (WB2 forecast layout)."""
    check_output_path(out)   # before the checkpoint is loaded and the rollout runs
    if jobs > 1 and len(init) > 1:
        import time

        from gencast_rmmd.forecast.parallel import forecast_in_groups

        started = time.perf_counter()
        arguments = ["--checkpoint", str(checkpoint), *(["--data", data] if data else []), "--steps", str(steps),
                     "--members", str(members), "--seed", str(seed), "--ema" if ema else "--no-ema",
                     "--batch-size", str(batch_size), *(a for override in sampler or () for a in ("--sampler", override))]
        used = forecast_in_groups(arguments, list(init), out, jobs)
        console.print(f"wrote {out}: {len(init)} init(s) x {steps} steps x {members} members in {used} processes, "
                      f"{time.perf_counter() - started:.0f} s")
        return
    from gencast_rmmd.forecast.run import run_forecast

    timing = run_forecast(checkpoint, init, steps, members, out, data=data, seed=seed, use_ema=ema,
                          log=console.print, batch_size=batch_size, sampler_overrides=sampler or ())
    console.print(f"wrote {out}: {len(init)} init(s) x {steps} steps x {members} members; "
                  f"{timing.seconds_per_step:.2f} s per 12 h step after {timing.compile_seconds:.1f} s compile")


def inspect(target: Annotated[Path, typer.Argument(help="Checkpoint, run directory, or a teacher config YAML.")],
            as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Describe a checkpoint (step, parameter count and hash, NFE per step, configs) or a config's model size."""
    from gencast_rmmd.forecast.inspect import describe

    summary = describe(target)
    if as_json:
        print(json.dumps(summary, sort_keys=True, default=str))
        return
    for key in ("path", "kind", "step", "param_count", "params_sha256", "nfe_per_step", "sampler", "model",
                "data_source"):
        if key in summary:
            console.print(f"{key:<14} {summary[key]}")


weights_app = typer.Typer(help="Weights packages (a teacher, a phase-1 student to start phase 2 from, or a phase-2 "
                               "student): export a run, verify a package, install one as a run.", no_args_is_help=True)
PackageArgument = Annotated[Path, typer.Argument(help="Weights package directory (weights.npz, weights.json).")]


@weights_app.command("export")
def weights_export(checkpoint: Annotated[Path, typer.Argument(
                       help="Teacher, phase-1 (method mmd) or phase-2 student, checkpoint or run directory.")],
                   out: Annotated[Path, typer.Option("--out", help="Package directory to write.")],
                   reproduce: Annotated[str | None, typer.Option(
                       "--reproduce", help="The command that reproduces the run, recorded in the package.")] = None,
                   ) -> None:
    """Write a teacher's EMA parameters, a phase-1 student's student and aux parameters, or a phase-2 student's
    trained groups, with the model card that rebuilds them, as a weights package."""
    from gencast_rmmd.distill.weights import export_phase1, export_phase2
    from gencast_rmmd.teacher.weights import export_weights
    from gencast_rmmd.training import resolve_checkpoint
    from gencast_rmmd.training.card import read_card
    from gencast_rmmd.training.checkpoint import read_meta

    check_output_path(out, directory=True)
    path = resolve_checkpoint(checkpoint)        # the card decides the kind; the exporter reads the arrays
    card = read_card(read_meta(path), str(path))
    export = export_weights if card.kind == "teacher" else export_phase1 if card.method == "mmd" else export_phase2
    info = export(path, out, reproduce)
    console.print(f"wrote {out}: {info.get('kind', 'teacher')} package, {info['param_count']} parameters, sha256 "
                  f"{info['params_sha256']}")


@weights_app.command("verify")
def weights_verify(package: PackageArgument,
                   as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Check a package's parameters against its recorded hash and describe it."""
    from gencast_rmmd.training.packages import package_kind, read_package

    _, info = read_package(package)
    summary = {"path": str(package), "kind": package_kind(info), "params_sha256": info["params_sha256"],
               "param_count": info["param_count"], "step": info["source"]["checkpoint_step"],
               "reproduce": info["source"].get("reproduce"), "model": info["payload"].get("model"),
               **({"teacher_sha256": info["teacher_sha256"]} if "teacher_sha256" in info else {})}
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    console.print(f"{package}: parameters match their sha256 {info['params_sha256']}")
    for key in ("kind", "param_count", "step", "teacher_sha256", "reproduce"):
        if key in summary:
            console.print(f"{key:<14} {summary[key]}")


@weights_app.command("install")
def weights_install(package: PackageArgument, out: OutOption,
                    config: Annotated[Path | None, typer.Option(
                        "--config", "-c", help="A teacher package: the teacher config it was trained with.")] = None,
                    teacher: Annotated[Path | None, typer.Option(
                        "--teacher", help="A phase-1 package: the teacher run it was distilled from; a phase-2 "
                        "package: the phase-1 run it was distilled from.")] = None,
                    stats: Annotated[Path | None, typer.Option(
                        "--stats", help="Statistics of the data (default: the config's stats file).")] = None,
                    data: DataOption = None, overrides: SetOption = None) -> None:
    """Check a package and write it as a run in --out: a teacher package against a teacher config and its
    data (--config), a phase-1 package against the teacher run it was distilled from (--teacher), a phase-2
    package against the phase-1 run it was distilled from (--teacher)."""
    from gencast_rmmd.errors import UserInputError
    from gencast_rmmd.training.packages import package_kind, read_info

    check_output_path(out, directory=True)
    kind = package_kind(read_info(package))
    if kind in ("phase1", "phase2"):
        source = "the teacher run" if kind == "phase1" else "the phase-1 run"
        if teacher is None or config is not None:
            raise UserInputError(f"{package} is a {kind} student package: give --teacher RUN ({source} it was "
                                 "distilled from), not --config")
        from gencast_rmmd.distill.weights import install_phase1, install_phase2

        (install_phase1 if kind == "phase1" else install_phase2)(package, teacher, out, log=console.print)
        return
    if config is None or teacher is not None:
        raise UserInputError(f"{package} is a teacher package: give --config CONFIG (the teacher config it was "
                             "trained with), not --teacher")
    from gencast_rmmd.config import load_config
    from gencast_rmmd.teacher.config import TeacherConfig
    from gencast_rmmd.teacher.weights import install_weights

    teacher_config = load_config(config, TeacherConfig, overrides or [], data)
    install_weights(package, teacher_config, out, stats, log=console.print)


def register(app: typer.Typer) -> None:
    """Add the model commands to the top-level app."""
    app.command("train")(train)
    app.command("forecast")(forecast)
    app.command("inspect")(inspect)
    app.add_typer(weights_app, name="weights")


