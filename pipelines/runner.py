"""Run a pipeline's stages in a work directory: skip what is unchanged, resume what was cut short.

For every stage, in order:
- its identity is the hash of its settings and of its inputs' output digests;
- it is skipped when the manifest records it done with that identity and its
  outputs exist (a rerun with nothing changed skips every stage);
- otherwise its commands run as subprocesses inside the work directory, output
  appended to `logs/STAGE.log`, progress kept in `logs/STAGE.progress.json`
  and followed on the console (`pipelines.stage_console`); a training stage
  whose run was interrupted with the same identity continues from its last
  checkpoint (`--resume`), one whose identity changed starts again from an
  empty run directory;
- its outputs are digested and recorded with its duration, peak memory and CPU
  time (`pipelines.run_summary`); the manifest is saved after every change.

Every run ends by writing `run_summary.json`: wall time, peak memory, the
machine and each stage's figures.

A failing command stops the pipeline with an error naming the stage and its
log. Stage processes die with the runner (Linux: PR_SET_PDEATHSIG), so a
`kill -9` of the runner leaves no orphan writing into the work directory.
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from gencast_rmmd.config import config_to_dict
from gencast_rmmd.errors import GATE_FAILED_EXIT, UserInputError
from gencast_rmmd.io_utils import atomic_path
from gencast_rmmd.progress_record import PROGRESS_FILE_ENV
from pipelines.config import PipelineConfig
from pipelines.digests import output_record, sha256_json
from pipelines.lock import WorkdirLock
from pipelines.manifest import Manifest, environment, now
from pipelines.progress import (ProgressFollower, ProgressView, format_bytes, format_duration, progress_file,
                                progress_text)
from pipelines.report_run import refresh_run_section
from pipelines.resolution import ResolvedConfigs, resolve
from pipelines.run_summary import CommandUsage, write_run_summary
from pipelines.stage_console import PlainStageConsole, Show, StageConsole
from pipelines.stages import SCORECARD_HTML, Stage, StageContext, build_stages
from pipelines.states import RunResult, StageAction, StageState

POLL_SECONDS = 0.5                  # how often a running command's exit and progress record are looked at
Log = Callable[[str], None]
NOT_APPLICABLE_DIGEST = "not applicable"   # the input digest of a stage that does not apply (in identities)


def stage_identity(stage: Stage, records: dict[str, dict]) -> tuple[str, str, dict[str, str | None]]:
    """(identity, settings hash, input digests) of `stage` given the manifest's stage `records`.

    The identity is the hash of the settings' hash and of every input's recorded digest (a stage that does
    not apply gives `NOT_APPLICABLE_DIGEST`; an input not yet produced gives None).
    """
    inputs: dict[str, str | None] = {}
    for reference in stage.inputs:
        source, output = reference.rsplit(".", 1)
        record = records.get(source, {})
        inputs[reference] = (NOT_APPLICABLE_DIGEST if record.get("state") == StageState.NOT_APPLICABLE
                             else ((record.get("outputs") or {}).get(output) or {}).get("digest"))
    config_sha256 = sha256_json(stage.settings)
    return sha256_json({"config": config_sha256, "inputs": inputs}), config_sha256, inputs


class StageFailed(Exception):
    """A stage's command exited non-zero; the message names the stage and its log."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunSummary:
    workdir: Path
    actions: dict[str, StageAction]    # stage -> what this run did with it
    scorecard: Path
    wall_seconds: float
    peak_rss_bytes: int            # of the pipeline and every stage command (run_summary.json)


def default_workdir(config_file: str | Path, config: PipelineConfig) -> Path:
    """`runs/pipelines/NAME` under the current directory (NAME: the config's name or file stem)."""
    return Path("runs") / "pipelines" / (config.name or Path(config_file).stem)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _write_configs(workdir: Path, config: PipelineConfig, resolved: ResolvedConfigs) -> None:
    """`DIR/configs/`: the pipeline config and every stage's resolved config (pre-selection views headed by a note)."""
    files, notes = {"pipeline.yaml": config_to_dict(config), **resolved.files()}, resolved.view_notes()
    for name, content in files.items():
        with atomic_path(workdir / "configs" / name) as temporary:
            temporary.write_text(notes.get(name, "") + yaml.safe_dump(content, sort_keys=False))


class PipelineRunner:
    """Runs the stages of one pipeline in one work directory (the caller holds the lock)."""

    def __init__(self, workdir: Path, stages: list[Stage], manifest: Manifest, config: PipelineConfig,
                 resume: bool, force: tuple[str, ...], log: Log, console: StageConsole | None = None):
        self.workdir, self.stages, self.manifest = workdir, stages, manifest
        self.config, self.resume, self.force, self.log = config, resume, force, log
        self.console = console or PlainStageConsole(log)
        self.width = max(len(stage.name) for stage in stages)

    # ----------------------------------------------------------------- identity

    def identity(self, stage: Stage) -> tuple[str, str, dict[str, str]]:
        """The stage's identity, the hash of its settings and its inputs' digests (from the manifest)."""
        return stage_identity(stage, self.manifest.stages)

    def _outputs_exist(self, stage: Stage) -> bool:
        return all((self.workdir / output.path).exists() for output in stage.outputs.values())

    def _forced(self, stage: Stage) -> bool:
        return any(fnmatch.fnmatchcase(stage.name, pattern) for pattern in self.force)

    # ----------------------------------------------------------------- running

    def _context(self, resume_run: bool) -> StageContext:
        return StageContext(self.workdir, resume_run,
                            {name: record.get("state", StageState.PENDING) for name, record in self.manifest.stages.items()})

    def _title(self, stage: Stage) -> str:
        return f"[{stage.group}/7] {stage.name:<{self.width}}"

    def _say(self, stage: Stage, message: str) -> None:
        self.log(f"{self._title(stage)}  {message}")

    def run_stage(self, stage: Stage, order: int) -> StageAction:
        """Run, resume or skip one stage (the `order`-th); return the action taken."""
        record = self.manifest.stage(stage.name)
        record.update(order=order, group=stage.group, description=stage.description, log=f"logs/{stage.name}.log")
        if stage.applies is not None and not stage.applies(self._context(False)):
            self.manifest.update_stage(stage.name, state=StageState.NOT_APPLICABLE, outputs={},
                                       action=StageAction.NOT_APPLICABLE)
            self._say(stage, "not applicable")
            return StageAction.NOT_APPLICABLE
        identity, config_sha256, inputs = self.identity(stage)
        if (record.get("state") == StageState.DONE and record.get("identity") == identity and self._outputs_exist(stage)
                and not self._forced(stage)):
            self.manifest.update_stage(stage.name, action=StageAction.SKIPPED)
            self._say(stage, "unchanged, skipped")
            return StageAction.SKIPPED
        resume_run = self._prepare_run_directory(stage, record, identity)
        action = StageAction.RESUMED if resume_run else StageAction.RAN
        commands = stage.commands(self._context(resume_run))
        self.manifest.update_stage(
            stage.name, state=StageState.RUNNING, action=action, identity=identity, config_sha256=config_sha256,
            inputs=inputs, outputs={}, commands=[command.display() for command in commands], started=now(),
            ended=None, seconds=None, error=None, attempts=record.get("attempts", 0) + 1)
        began = time.monotonic()
        self._say(stage, f"{'resuming' if resume_run else 'running'} (log: {self.workdir / record['log']})")
        usages: list[CommandUsage] = []
        last_view = None
        with self.console.stage(self._title(stage)) as show:
            for command in commands:
                last_view = self._run_command(stage, command, show, usages) or last_view
        outputs = {key: {"path": output.path, "kind": output.kind,
                         **output_record(output.kind, self.workdir / output.path)}
                   for key, output in stage.outputs.items()}
        seconds = round(time.monotonic() - began, 2)
        self.manifest.update_stage(stage.name, state=StageState.DONE, outputs=outputs, ended=now(), seconds=seconds, pid=None)
        peak = self.manifest.stages[stage.name]["peak_rss_bytes"]
        self._say(stage, f"done in {format_duration(seconds)}"
                         f"{' (' + progress_text(last_view) + ')' if last_view is not None else ''}, "
                         f"peak memory {format_bytes(peak)}")
        return action

    def _prepare_run_directory(self, stage: Stage, record: dict, identity: str) -> bool:
        """For a training stage: True to continue its run; False after clearing a run made with other inputs."""
        if not stage.training:
            return False
        run_dir = self.workdir / stage.outputs["run"].path
        if not run_dir.is_dir() or not any(run_dir.iterdir()):
            return False
        forced, same = self._forced(stage), record.get("identity") == identity
        if same and not forced and self.resume and record.get("state") in (StageState.RUNNING, StageState.FAILED):
            return True
        reason = ("--force" if forced else "its config or inputs changed" if not same
                  else "without --resume a failed stage starts again")
        self._say(stage, f"removing the previous run in {run_dir} ({reason})")
        shutil.rmtree(run_dir)
        return False

    def _run_command(self, stage: Stage, command, show: Show, usages: list[CommandUsage]) -> ProgressView | None:
        """Run one command of `stage`, showing its progress; the last progress view (None if it kept none)."""
        log_path = self.workdir / "logs" / f"{stage.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        record = self.workdir / progress_file(stage.name)
        record.unlink(missing_ok=True)                        # an earlier command's or attempt's
        follower = ProgressFollower(record)
        with open(log_path, "a") as log:
            process = start_command(command, stage, self.config, self.workdir, log, progress_to=record)
            self.manifest.update_stage(stage.name, pid=process.pid)
            try:
                code, usage = wait_with_usage(process, lambda: show(follower.poll()))
            except BaseException:
                _stop(process)
                self.manifest.update_stage(stage.name, state=StageState.FAILED, ended=now(), error="interrupted",
                                           pid=None)
                log.write(f"== {now()} interrupted\n")
                raise
            log.write(f"== {now()} exit code {code}\n")
        usages.append(usage)
        self.manifest.update_stage(stage.name, peak_rss_bytes=max(u.peak_rss_bytes for u in usages),
                                   cpu_seconds=round(sum(u.cpu_seconds for u in usages), 2))
        if code != 0:
            last = _last_line(log_path)
            message = (f"stage {stage.name} failed (exit code {code}): {last}; "
                       f"full log: {log_path}")
            self.manifest.update_stage(stage.name, state=StageState.FAILED, ended=now(), error=last, pid=None)
            raise StageFailed(message, code if code in (2, GATE_FAILED_EXIT) else 1)
        return follower.poll()


def wait_with_usage(process: subprocess.Popen, tick: Callable[[], None],
                    poll_seconds: float = POLL_SECONDS) -> tuple[int, CommandUsage]:
    """Wait for `process`, calling `tick` every `poll_seconds`; its exit code and what it used.

    The process is reaped with `os.wait4`, which hands over the kernel's count of
    its peak memory and CPU time (with every process it waited for); `process`
    learns its return code as from `Popen.wait`. Linux charges the resident image
    the child starts from (ours, between fork and exec) to the child's peak, so a
    command's peak is at least the pipeline process's own resident size (a few
    hundred MB, below any training or forecast stage's).
    """
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, CommandUsage.of(usage)
        tick()
        time.sleep(poll_seconds)



def stage_environment(config: PipelineConfig, stage: Stage) -> dict[str, str]:
    """The environment of a stage's processes: ours, the compilation cache, the stage's own variables."""
    cache = config.runtime.compilation_cache
    cached = ({"JAX_COMPILATION_CACHE_DIR": str(Path(cache).expanduser()),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
              if cache else {})
    ours = {key: value for key, value in os.environ.items() if key != PROGRESS_FILE_ENV}
    return {**ours, **cached, **stage.environment, "PYTHONUNBUFFERED": "1"}


def start_command(command, stage: Stage, config: PipelineConfig, workdir: Path, log,
                  progress_to: Path | None = None) -> subprocess.Popen:
    """Start one command of `stage` in `workdir`, appending its output to the open `log`; it dies with us.

    With `progress_to`, the command keeps its progress record there (`$GENCAST_RMMD_PROGRESS_FILE`).
    """
    log.write(f"\n== {now()} stage {stage.name}\n$ {command.display()}\n")
    log.flush()
    environment = stage_environment(config, stage)
    if progress_to is not None:
        environment[PROGRESS_FILE_ENV] = str(progress_to)
    return subprocess.Popen(command.argv(), cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=environment, preexec_fn=_die_with_parent)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _last_line(log_path: Path) -> str:
    """The last meaningful line a failing command wrote (its one-line error), for the failure message."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith("== ")]
    return lines[-1] if lines else "(no output)"


def _end_run(manifest: Manifest, result: str, began: float, order: list[str]) -> dict:
    """Record how the run ended, its wall time and peak memory; write `run_summary.json`; return it."""
    wall_seconds = time.monotonic() - began
    manifest.current_run.update(ended=now(), result=result)
    summary = write_run_summary(manifest.path.parent, manifest.content, wall_seconds, order)
    manifest.current_run.update(wall_seconds=summary["wall_seconds"], peak_rss_bytes=summary["peak_rss_bytes"])
    manifest.save()
    refresh_run_section(manifest.path.parent / SCORECARD_HTML, manifest.path.parent)   # states as recorded
    return summary


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_pipeline(config_file: str | Path, config: PipelineConfig, workdir: str | Path | None = None,
                 resume: bool = False, force: tuple[str, ...] = (), log: Log = print,
                 console: StageConsole | None = None) -> RunSummary:
    """Run the pipeline of `config` (loaded from `config_file`) in `workdir`; return what each stage did.

    `log` gets the stage lines; `console` shows the running stage's progress
    (default: a plain line through `log` every 30 s).
    """
    began = time.monotonic()
    workdir = Path(workdir or default_workdir(config_file, config)).resolve()
    resolved = resolve(config, config_file)
    stages = build_stages(config, resolved)
    unknown = [pattern for pattern in force if not any(fnmatch.fnmatchcase(s.name, pattern) for s in stages)]
    if unknown:
        raise UserInputError(f"--force {unknown[0]!r} matches no stage; stages: {', '.join(s.name for s in stages)}")
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with WorkdirLock(workdir, log=log):
            manifest = Manifest.load(workdir)
            interrupted = [name for name, record in manifest.stages.items() if record.get("state") == StageState.RUNNING]
            if interrupted and not resume:
                raise UserInputError(
                    f"stage {interrupted[0]} in {workdir} was interrupted "
                    f"(started {manifest.stages[interrupted[0]].get('started')}); "
                    "pass --resume to continue from it (training stages from their last checkpoint)")
            for run in manifest.content["runs"]:
                if run.get("result") == RunResult.RUNNING:   # its process is gone: we hold the lock
                    run["result"] = RunResult.KILLED
            _write_configs(workdir, config, resolved)
            for name in [name for name in manifest.stages if name not in {stage.name for stage in stages}]:
                log(f"stage {name} is no longer in the pipeline; its record is dropped (outputs are kept)")
                del manifest.stages[name]
            manifest.content.update(
                pipeline={"name": config.name or Path(config_file).stem,
                          "config_file": str(Path(config_file).resolve()),
                          "config_sha256": sha256_json(config_to_dict(config))},
                environment=environment())
            manifest.content["runs"].append({"started": now(), "resume": resume, "force": list(force),
                                             "result": RunResult.RUNNING, "actions": {}})
            manifest.save()
            runner = PipelineRunner(workdir, stages, manifest, config, resume, force, log, console)
            log(f"pipeline {manifest.content['pipeline']['name']} in {workdir}: {len(stages)} stages")
            order = [stage.name for stage in stages]
            try:
                for position, stage in enumerate(stages):
                    manifest.current_run["actions"][stage.name] = runner.run_stage(stage, position)
            except BaseException as error:
                _end_run(manifest, RunResult.FAILED if isinstance(error, StageFailed) else RunResult.INTERRUPTED, began,
                         order)
                raise
            summary = _end_run(manifest, RunResult.OK, began, order)
            return RunSummary(workdir, dict(manifest.current_run["actions"]), workdir / SCORECARD_HTML,
                              summary["wall_seconds"], summary["peak_rss_bytes"])
    finally:
        signal.signal(signal.SIGTERM, previous)
