"""What the pipeline's console shows while a stage runs: a live rich bar on a terminal, periodic lines without one.

On a terminal, the running stage has a bar: step/total, rate, loss and ETA
from its progress record (`pipelines.progress`), or a pulsing bar with the
elapsed time for a stage that keeps none (statistics, scoring, speed). Without
a terminal (cron, systemd, a pipe) the same text comes as one plain line every
`every` seconds, no ANSI codes, so that a scheduled log shows a slow machine
from a hung one. Either way the runner prints one line when a stage starts and
one when it ends (with its duration); the stage's own output goes to its log.
"""

from __future__ import annotations

import datetime as dt
import time
from contextlib import AbstractContextManager, contextmanager
from typing import Callable, Iterator, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from pipelines.progress import ProgressView, format_duration, progress_text

DEFAULT_EVERY_SECONDS = 30.0
Show = Callable[[ProgressView | None], None]


class StageConsole(Protocol):
    """Shows the running stage; `stage(title)` yields what to call with each new view."""

    def stage(self, title: str) -> AbstractContextManager[Show]: ...


class PlainStageConsole:
    """A line `TITLE  <progress>, ELAPSED elapsed` every `every` seconds of a stage (none with `every` 0)."""

    def __init__(self, log: Callable[[str], None], every: float = DEFAULT_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._log, self._every, self._clock = log, every, clock

    @contextmanager
    def stage(self, title: str) -> Iterator[Show]:
        began = last = self._clock()

        def show(view: ProgressView | None) -> None:
            nonlocal last
            moment = self._clock()
            if self._every > 0 and moment - last >= self._every:
                last = moment
                elapsed = format_duration(moment - began)
                self._log(f"{title}  {progress_text(view)}, {elapsed} elapsed" if view is not None
                          else f"{title}  running, {elapsed} elapsed")

        yield show


class LiveStageConsole:
    """A rich bar for the running stage on `console` (a terminal); log lines printed to it appear above.

    The elapsed time is the stage's, kept here: rich's own stops when a bar
    first fills, and a distillation fills one bar per run.
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic):
        self._console, self._clock = console, clock

    @contextmanager
    def stage(self, title: str) -> Iterator[Show]:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                            TextColumn("{task.fields[text]}"), TextColumn("[yellow]{task.fields[elapsed]}"),
                            console=self._console, transient=True, refresh_per_second=4)
        task = progress.add_task(title, total=None, counts="", text="running", elapsed="0:00:00")
        began = self._clock()

        def show(view: ProgressView | None) -> None:
            elapsed = str(dt.timedelta(seconds=int(self._clock() - began)))
            if view is None:
                progress.update(task, elapsed=elapsed)
            else:
                progress.update(task, total=view.total, completed=view.done, elapsed=elapsed,
                                counts=f"{view.done}/{view.total} {view.unit}s", text=progress_text(view, counts=False))

        with progress:
            yield show


def stage_console(console: Console, every: float = DEFAULT_EVERY_SECONDS) -> StageConsole:
    """Live bars when `console` is a terminal, else plain lines every `every` seconds printed to it."""
    if console.is_terminal:
        return LiveStageConsole(console)
    return PlainStageConsole(lambda line: console.print(line, markup=False, highlight=False), every)
