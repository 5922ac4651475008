"""`gencast-rmmd distill`: distill a teacher into a few-step student (moment matching, RMMD, baselines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gencast_rmmd.commands.common import DataOption, SetOption, console
from gencast_rmmd.io_utils import check_output_path


def distill(config: Annotated[Path, typer.Option("--config", "-c", help="Distill config YAML (configs/distill/*.yaml).")],
            teacher: Annotated[Path, typer.Option(
                "--teacher", help="Teacher checkpoint or run directory, a phase-1 (method mmd) student run, "
                "or a phase-2 run of the same method to continue.")],
            out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoints, metrics.jsonl, pareto.*).")],
            data: DataOption = None, overrides: SetOption = None,
            resume: Annotated[bool, typer.Option(
                "--resume", help="Continue the run in --out from its latest checkpoints.")] = False) -> None:
    """Distill a teacher into a K-step student; a list of distill.reward_weight values runs a sweep + Pareto table."""
    from gencast_rmmd.distill.config import load_distill_config
    from gencast_rmmd.distill.run import distill as run_distill

    check_output_path(out, directory=True)
    distill_config = load_distill_config(config, overrides or [])
    outcome = run_distill(distill_config, teacher, out, data=data, resume=resume, log=console.print)
    for weight, result in outcome.runs.items():
        label = f"lambda {weight:g}: " if distill_config.distill.is_sweep else ""
        console.print(f"done: {label}step {result.step}, checkpoint {result.checkpoint}, "
                      f"params sha256 {result.params_sha256[:16]}…")
    if outcome.pareto is not None:
        console.print(f"Pareto table: {outcome.pareto} and {outcome.pareto.with_suffix('.md')}")


def register(app: typer.Typer) -> None:
    """Add `distill` to the top-level app."""
    app.command("distill")(distill)
