"""Following a running stage: its progress record, read into what the console shows (step/total, rate, ETA, loss).

Each stage command runs with `$GENCAST_RMMD_PROGRESS_FILE` set to
`logs/STAGE.progress.json`; training, distillation and forecasts keep a record
there (`gencast_rmmd.progress_record`), replaced atomically. The runner polls
it while it waits for the command. The rate is measured on the child's own
clock, over one loop (one process, one run directory) from the end of its
first step (the record's `first_step`) on, so neither the compilation of the
first step nor the steps a resumed run had already done count; the last
minutes weigh alone (`RATE_WINDOW_SECONDS`), so a rate that changes is
followed. A record that is
missing or malformed (no record yet, a writer other than ours) leaves the
last view in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gencast_rmmd.progress_record import read_progress_record

RATE_WINDOW_SECONDS = 300.0
STALLED_AFTER_SECONDS = 120.0


def progress_file(stage: str) -> str:
    """Where stage `stage`'s commands keep their progress record, relative to the work directory."""
    return f"logs/{stage}.progress.json"


@dataclass(frozen=True)
class ProgressView:
    """What one stage has done, as the console shows it."""

    label: str                        # the run directory or output the record is about
    unit: str                         # "step": optimiser steps, or 12 h forecast steps
    done: int
    total: int
    start: int                        # where this process began (a resumed run's step)
    loss: float | None
    detail: str                       # e.g. "4 init(s) x 4 members"
    rate: float | None                # units per second; None until two steps after the first are seen
    silent_seconds: float             # since the record last changed

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate else None


class ProgressFollower:
    """The latest `ProgressView` of the record in `path`, with the rate measured across polls."""

    def __init__(self, path: Path):
        self.path = path
        self._loop: tuple | None = None
        self._samples: list[tuple[float, int]] = []        # (child's time, done) after the loop's first step
        self._record: dict | None = None

    def poll(self, now: float | None = None) -> ProgressView | None:
        """Read the record again; the view of the newest well-formed one (None before the first)."""
        record = read_progress_record(self.path)
        if record is not None:
            self._take(record)
        if self._record is None:
            return None
        record = self._record
        clock = time.time() if now is None else now
        return ProgressView(record["label"], record["unit"], record["done"], record["total"], record["start"],
                            record["loss"], record["detail"], self._rate(), max(0.0, clock - record["updated"]))

    def _take(self, record: dict) -> None:
        loop = (record["pid"], record["started"], record["label"])
        if loop != self._loop:                           # a new process, or the next run of a distillation
            self._loop, self._samples = loop, []
        if not self._samples and record["first_step"] is not None:
            self._samples.append(record["first_step"])
        if record["done"] > max(record["start"], self._samples[-1][1] if self._samples else 0):
            self._samples.append((record["updated"], record["done"]))
            latest = self._samples[-1][0]
            while len(self._samples) > 2 and latest - self._samples[1][0] >= RATE_WINDOW_SECONDS:
                self._samples.pop(0)
        self._record = record

    def _rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (first_time, first_done), (last_time, last_done) = self._samples[0], self._samples[-1]
        return (last_done - first_done) / (last_time - first_time) if last_time > first_time else None


def format_duration(seconds: float) -> str:
    """`12.3 s`, `7 min 31 s` or `2 h 05 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_bytes(count: int) -> str:
    """Bytes in GB (decimal, as `/usr/bin/time` readers quote them) or MB."""
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def format_rate(rate: float, unit: str) -> str:
    """`2.31 step/s`, or `4.2 s/step` when a unit takes longer than a second."""
    return f"{rate:.2f} {unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{unit}"


def progress_text(view: ProgressView, counts: bool = True) -> str:
    """One line of a view: `students/rmmd: step 120/200 (resumed at 100), 4.2 s/step, loss 0.0123, ETA 5 min 36 s`."""
    parts = [f"{view.label}: {view.unit} {view.done}/{view.total}" if counts else view.label]
    if view.detail:
        parts[0] += f" of {view.detail}"
    if view.start:
        parts[0] += f" (resumed at {view.start})"
    if view.rate:
        parts.append(format_rate(view.rate, view.unit))
    if view.loss is not None:
        parts.append(f"loss {view.loss:.4g}")
    if view.done == view.start < view.total:
        parts.append("first step (it compiles)")
    elif view.done < view.total:
        eta = view.eta_seconds
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA: measuring")
        if view.silent_seconds >= STALLED_AFTER_SECONDS:
            parts.append(f"no progress for {format_duration(view.silent_seconds)}")
    return ", ".join(parts)
