"""`gencast-rmmd pipeline run|status|plan`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gencast_rmmd.commands.common import DataOption, SetOption, console
from pipelines.states import StageAction, StageState, shown

app = typer.Typer(help="Scheduled pipelines: data, stats, teacher, distill, forecasts, evaluation, scorecards.",
                  no_args_is_help=True)


def _say(line: str) -> None:
    console.print(line, markup=False)


@app.command("run")
def run(config: Annotated[Path, typer.Argument(help="Pipeline config (configs/pipelines/*.yaml).")],
        workdir: Annotated[Optional[Path], typer.Option(
            "--workdir", help="Work directory (default: runs/pipelines/NAME).")] = None,
        data: DataOption = None, overrides: SetOption = None,
        resume: Annotated[bool, typer.Option(
            "--resume", help="Continue interrupted or failed stages (training from its last checkpoint).")] = False,
        force: Annotated[Optional[list[str]], typer.Option(
            "--force", help="Run this stage again even if unchanged (name or glob, e.g. 'distill.*'; repeatable).")]
        = None,
        progress_every: Annotated[float, typer.Option(
            "--progress-every", min=0, help="Without a terminal (cron, a pipe): a progress line of the running "
                                            "stage every SECONDS (0: none). A terminal shows live bars.")] = 30.0
        ) -> None:
    """Run the pipeline: unchanged stages are skipped; prints the scorecard HTML path at the end.

    The running stage shows its progress (step/total, rate, loss, ETA) and each
    finished stage its duration and peak memory. Each stage logs to
    WORKDIR/logs/STAGE.log; WORKDIR/manifest.json records configs, input and
    output hashes, times and versions; WORKDIR/run_summary.json the run's wall
    time, peak memory and machine. A second run on the
    same work directory is refused while the first holds WORKDIR/.lock. With
    distributed.process_id > 0 this process only takes its share of the
    training stages that process 0 runs (multi-host; see pipelines/follower.py).
    """
    from pipelines.config import load_pipeline_config
    from pipelines.progress import format_bytes, format_duration
    from pipelines.runner import StageFailed, run_pipeline
    from pipelines.stage_console import stage_console

    pipeline_config = load_pipeline_config(config, overrides or [], data)
    if pipeline_config.distributed.enabled and pipeline_config.distributed.process_id:
        from pipelines.follower import follow_pipeline

        try:
            follow_pipeline(config, pipeline_config, workdir, log=_say)
        except StageFailed as failure:
            print(f"error: {failure}", file=sys.stderr)
            raise typer.Exit(failure.exit_code) from None
        return
    try:
        summary = run_pipeline(config, pipeline_config, workdir, resume=resume, force=tuple(force or ()),
                               log=_say, console=stage_console(console, progress_every))
    except StageFailed as failure:
        print(f"error: {failure}", file=sys.stderr)
        raise typer.Exit(failure.exit_code) from None
    ran = sum(StageAction.parse(action).worked for action in summary.actions.values())
    console.print(f"pipeline done in {format_duration(summary.wall_seconds)} (peak memory "
                  f"{format_bytes(summary.peak_rss_bytes)}; {summary.workdir / 'run_summary.json'}): {ran} stage(s) "
                  f"ran, {len(summary.actions) - ran} skipped or not applicable; scorecard:", markup=False)
    print(summary.scorecard)


@app.command("status")
def status(workdir: Annotated[Path, typer.Argument(help="Work directory of a pipeline.")],
           as_json: Annotated[bool, typer.Option("--json", help="Print the manifest's stages as JSON.")] = False
           ) -> None:
    """Print a table of the stages: state, last action, duration, outputs and logs; a running stage's progress."""
    import json

    from rich.console import Console
    from rich.table import Table

    from gencast_rmmd.errors import UserInputError
    from pipelines.lock import WorkdirLock
    from pipelines.manifest import Manifest
    from pipelines.progress import ProgressFollower, progress_file, progress_text

    if not (workdir / "manifest.json").is_file():
        raise UserInputError(f"{workdir} holds no pipeline (no manifest.json); run `gencast-rmmd pipeline run`")
    manifest = Manifest.load(workdir)
    if as_json:
        print(json.dumps(manifest.stages, indent=2, sort_keys=True))
        return
    pipeline = manifest.content.get("pipeline", {})
    last_run = manifest.content["runs"][-1] if manifest.content["runs"] else {}
    holder = WorkdirLock(workdir).read()
    table = Table(title=f"pipeline {pipeline.get('name', '?')} in {workdir}", title_justify="left")
    for column in ("#", "stage", "state", "last run", "s", "output"):
        table.add_column(column, no_wrap=column != "output", justify="right" if column == "s" else "left")
    colours = {"done": "green", "running": "yellow", "failed": "red", "pending": "dim", "n/a": "dim"}
    for name, record in manifest.ordered_stages():
        state = shown(record.get("state", StageState.PENDING))
        first = next(iter((record.get("outputs") or {}).values()), None)
        seconds = record.get("seconds")
        table.add_row(str(record.get("group", "")), name, f"[{colours.get(state, 'white')}]{state}[/]",
                      shown(record.get("action", "")),
                      f"{seconds:.0f}" if isinstance(seconds, (int, float)) else "", first["path"] if first else "")
    out = Console(highlight=False)
    out.print(table)
    out.print(f"logs: {workdir / 'logs'}/STAGE.log; digests and times: pipeline status --json; last run: "
              f"{last_run.get('started', '?')} -> {last_run.get('result', '?')}"
              f"{'; locked by pid ' + str(holder.get('pid')) + ' on ' + str(holder.get('host')) if holder else ''}",
              markup=False)
    failed = [(name, record) for name, record in manifest.stages.items() if record.get("state") == StageState.FAILED]
    for name, record in failed:
        out.print(f"{name} failed: {record.get('error')} (log: {workdir / record.get('log', '')})", markup=False)
    running = [name for name, record in manifest.stages.items() if record.get("state") == StageState.RUNNING]
    for name in running if holder else ():              # without a holder the run was killed: --resume
        view = ProgressFollower(workdir / progress_file(name)).poll()
        if view is not None:
            out.print(f"{name} running: {progress_text(view)}", markup=False)


@app.command("plan")
def plan(config: Annotated[Path, typer.Argument(help="Pipeline config (configs/pipelines/*.yaml).")],
         workdir: Annotated[Optional[Path], typer.Option(
             "--workdir", help="Work directory (default: runs/pipelines/NAME).")] = None,
         data: DataOption = None, overrides: SetOption = None) -> None:
    """What `pipeline run` would do now, stage by stage (skip, resume, run, after an input, not applicable),
    and why; writes nothing, takes no lock (safe while the pipeline runs)."""
    from pipelines.config import load_pipeline_config
    from pipelines.plan import plan_pipeline
    from pipelines.runner import default_workdir

    pipeline_config = load_pipeline_config(config, overrides or [], data)
    directory = Path(workdir or default_workdir(config, pipeline_config))
    planned = plan_pipeline(config, pipeline_config, directory)
    width = max(len(stage.name) for stage in planned)
    for stage in planned:                                   # the plan is the command's output: stdout
        print(f"{stage.name:<{width}}  {stage.verdict:<14}  {stage.reason}")
    counts = {verdict: sum(stage.verdict == verdict for stage in planned)
              for verdict in ("skip", "resume", "run", "after", "not applicable")}
    print(f"{directory}: " + ", ".join(f"{count} {verdict}" for verdict, count in counts.items() if count))


def register(parent: typer.Typer) -> None:
    """Add `pipeline` (with its hidden `task` steps) to the `gencast-rmmd` app."""
    from pipelines import tasks

    app.add_typer(tasks.app, name="task", hidden=True)
    parent.add_typer(app, name="pipeline")
