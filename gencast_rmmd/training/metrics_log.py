"""Where training metrics go: `RUN/metrics.jsonl`, optional TensorBoard / MLflow, a rich progress bar, and the
progress record a pipeline follows (`gencast_rmmd.progress_record`).

`metrics.jsonl` has one JSON object per logged step (`step`, `loss`, `lr`,
`grad_norm`, `step_seconds`, `skipped_total`, task metrics, and
`validation_loss` / `validation/...` on validation steps). On resume from the
checkpoint of step s, lines with step > s (and a torn last line) are dropped
before appending, so the file lists the same steps as an uninterrupted run.
TensorBoard (`tensorboardX`) and MLflow (when `MLFLOW_TRACKING_URI` is set)
receive the same scalars when installed; otherwise they are silently skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from gencast_rmmd.io_utils import atomic_path
from gencast_rmmd.progress_record import ProgressRecord

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the well-formed lines of `path` with step <= `last_step` (atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if record.get("step", math.inf) <= last_step:
            kept.append(line + "\n")
    with atomic_path(path) as temporary:
        temporary.write_text("".join(kept))


class _TensorBoardSink:
    def __init__(self, run_dir: Path):
        from tensorboardX import SummaryWriter
        self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _MlflowSink:
    def __init__(self, run_dir: Path):
        import mlflow
        self._mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._mlflow.log_metrics({name.replace("/", "."): value for name, value in scalars.items()}, step=step)

    def close(self) -> None:
        self._mlflow.end_run()


def _optional_sinks(run_dir: Path) -> list:
    sinks = []
    if importlib.util.find_spec("tensorboardX") is not None:
        sinks.append(_TensorBoardSink(run_dir))
    if importlib.util.find_spec("mlflow") is not None and os.environ.get("MLFLOW_TRACKING_URI"):
        sinks.append(_MlflowSink(run_dir))
    return sinks


class MetricsLog:
    """Appends metric records to `RUN/metrics.jsonl` and the optional sinks (a no-op when not `enabled`)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None):
        self._enabled = enabled
        self._file = None
        self._sinks: list = []
        if enabled:
            path = run_dir / METRICS_FILE
            if resume_step is not None:
                truncate_metrics(path, resume_step)
            self._file = open(path, "a")
            self._sinks = _optional_sinks(run_dir)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if not self._enabled:
            return
        scalars = {name: float(value) for name, value in values.items()}
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()
        for sink in self._sinks:
            sink.write(step, scalars)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for sink in self._sinks:
            sink.close()


class TrainingProgress:
    """A rich progress bar on stderr (step, steps/s, loss); disabled when asked, off process 0, or not a TTY.

    With `record` (process 0) every step also goes to the progress record of
    `$GENCAST_RMMD_PROGRESS_FILE`, labelled `label` (the run directory), whether
    or not the bar shows: that is what a pipeline's console follows.
    """

    def __init__(self, total_steps: int, start_step: int, enabled: bool, label: str = "train",
                 record: bool = False):
        self._enabled = enabled and sys.stderr.isatty()
        self._record = ProgressRecord("train", label, total_steps, start_step) if record else None
        self._start_time, self._start_step = time.perf_counter(), start_step
        self._progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} step/s  loss {task.fields[loss]:.4g}"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not self._enabled)
        self._task = self._progress.add_task("train", total=total_steps, completed=start_step, rate=0.0,
                                             loss=float("nan"))

    def __enter__(self) -> "TrainingProgress":
        self._progress.start()
        return self

    def update(self, step: int, loss: float) -> None:
        if self._record is not None:
            self._record.update(step, loss)
        if self._enabled:
            elapsed = time.perf_counter() - self._start_time
            rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
            self._progress.update(self._task, completed=step, rate=rate, loss=loss)

    def __exit__(self, *exc) -> None:
        self._progress.stop()
