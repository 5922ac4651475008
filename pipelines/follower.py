"""Processes 1..N-1 of a multi-host pipeline: their share of every training stage that process 0 runs.

Every host runs `gencast-rmmd pipeline run CONFIG --workdir SHARED` with the
same `distributed` settings and its own `distributed.process_id`. Process 0 is
the pipeline: it holds `DIR/.lock`, writes the manifest and runs every stage.
A process k > 0 only reads the manifest. For each training stage, in order,
it waits until process 0 has skipped it (nothing to do) or started it in the
current run, then runs the same command with `--set distributed.process_id=k`
(and `--resume` when process 0 resumes), so that `jax.distributed` joins the
processes into one data-parallel run. It stops when the training stages are
done, or when process 0's run ends or its process disappears. Its own lock is
`DIR/.lock.process-k`; its logs are `DIR/logs/STAGE.process-k.log`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from gencast_rmmd.errors import UserInputError
from pipelines.config import PipelineConfig
from pipelines.lock import WorkdirLock
from pipelines.manifest import MANIFEST_FILE, Manifest
from pipelines.resolution import resolve
from pipelines.runner import StageFailed, _stop, default_workdir, start_command
from pipelines.stages import Command, Stage, StageContext, build_stages
from pipelines.states import RunResult, StageAction, StageState

Log = Callable[[str], None]


def _current_run(workdir: Path) -> tuple[Manifest, dict] | None:
    """Process 0's manifest and run in progress, or None when it has not started one."""
    if not (workdir / MANIFEST_FILE).is_file():
        return None
    manifest = Manifest.load(workdir)
    runs = manifest.content["runs"]
    return (manifest, runs[-1]) if runs and runs[-1].get("result") == RunResult.RUNNING else None


def follower_command(stage: Stage, workdir: Path, record: dict, process_id: int) -> Command:
    """The training command of `stage` as process `process_id` runs it (resuming when process 0 resumes)."""
    context = StageContext(workdir, record.get("action") == StageAction.RESUMED, {})
    training = stage.commands(context)[-1]
    return Command((*training.args, "--set", f"distributed.process_id={process_id}"))


def _run_share(stage: Stage, command: Command, config: PipelineConfig, workdir: Path, process_id: int) -> None:
    log_path = workdir / "logs" / f"{stage.name}.process-{process_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        process = start_command(command, stage, config, workdir, log)
        try:
            code = process.wait()
        except BaseException:
            _stop(process)
            raise
    if code != 0:
        raise StageFailed(f"process {process_id}: stage {stage.name} failed (exit code {code}); log: {log_path}", 1)


def follow_pipeline(config_file: str | Path, config: PipelineConfig, workdir: str | Path | None = None,
                    log: Log = print, poll_seconds: float = 1.0, start_timeout: float = 3600.0) -> int:
    """Take part in process 0's training stages; return the number of stages run."""
    process_id = config.distributed.process_id
    workdir = Path(workdir or default_workdir(config_file, config)).resolve()
    stages = [stage for stage in build_stages(config, resolve(config, config_file)) if stage.training]
    main_lock = WorkdirLock(workdir)
    ran = 0
    with WorkdirLock(workdir, f".lock.process-{process_id}", log=log):
        deadline = time.monotonic() + start_timeout
        while (found := _current_run(workdir)) is None or main_lock.read() is None:
            if time.monotonic() > deadline:
                raise UserInputError(f"process 0 started no pipeline run in {workdir} within {start_timeout:.0f} s")
            time.sleep(poll_seconds)
        run_started = found[1]["started"]
        log(f"process {process_id}: following process 0's run of {run_started} in {workdir}")
        for stage in stages:
            while True:
                found = _current_run(workdir)
                if found is None or found[1]["started"] != run_started:
                    log(f"process {process_id}: process 0's run ended; stopping")
                    return ran
                if main_lock.read() is None:
                    raise StageFailed(f"process {process_id}: process 0 stopped (it no longer holds "
                                      f"{main_lock.path}) before {stage.name}", 1)
                manifest, run = found
                record = manifest.stages.get(stage.name, {})
                if run["actions"].get(stage.name) is not None:          # skipped (or done) by process 0
                    break
                if record.get("state") == StageState.RUNNING and (record.get("started") or "") >= run_started:
                    log(f"process {process_id}: {stage.name}: running my share")
                    _run_share(stage, follower_command(stage, workdir, record, process_id), config, workdir,
                               process_id)
                    ran += 1
                    break
                time.sleep(poll_seconds)
    log(f"process {process_id}: training stages done")
    return ran
