"""A machine-readable progress record: how far a long command has come, for the process that runs it.

When `$GENCAST_RMMD_PROGRESS_FILE` names a file, the training loop (`train`,
and every run of `distill`: phase 1, phase 2, each reward weight) and
`forecast` keep one small JSON object there. It is replaced atomically (a
temporary, then a rename) at most once a second and at the last step, so a
reader never sees a torn record and the cost is nothing next to a step:

    {"task": "train", "label": "students/rmmd/phase1", "unit": "step", "done": 120, "total": 200,
     "start": 100, "loss": 0.0123, "detail": "", "pid": 4711, "started": 1765000000.1,
     "first_step": [1765000031.7, 101], "updated": 1765000060.2}

`start` is where this process began counting (a resumed run's checkpoint step,
else 0); `started` and `updated` are the Unix times of its first and latest
record; `first_step` the time and count when the first unit was done (null
before), so that a reader can measure the rate without the compilation of
the first step even when it saw no record in between; `loss` is null where
there is none (forecasts). The pipeline follows
the record to draw its progress bars (`pipelines/progress.py`) instead of
reading the human text of the logs. Nothing in a result depends on it: without
the variable nothing is written, and a record that cannot be written is
reported once and then left alone (progress never stops a run).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import write_json_atomic

PROGRESS_FILE_ENV = "GENCAST_RMMD_PROGRESS_FILE"
MIN_INTERVAL_SECONDS = 1.0
_COUNTS = ("done", "total", "start")


class ProgressRecord:
    """Writes `done` of `total` units of one task to `$GENCAST_RMMD_PROGRESS_FILE` (a no-op without it)."""

    def __init__(self, task: str, label: str, total: int, start: int = 0, unit: str = "step", detail: str = "",
                 path: str | os.PathLike | None = None, min_interval: float = MIN_INTERVAL_SECONDS):
        target = path if path is not None else os.environ.get(PROGRESS_FILE_ENV)
        self._path = Path(target) if target else None
        self._fields = {"task": task, "label": label, "unit": unit, "total": int(total), "start": int(start),
                        "detail": detail, "pid": os.getpid(), "started": time.time()}
        self._min_interval, self._written_at = min_interval, -math.inf
        self._first_step: list | None = None
        self.update(start)

    def update(self, done: int, loss: float | None = None) -> None:
        """Record `done` units (written when a second has passed since the last write, or at the total)."""
        if self._path is None:
            return
        if self._first_step is None and done > self._fields["start"]:
            self._first_step = [time.time(), int(done)]
        moment = time.monotonic()
        if done < self._fields["total"] and moment - self._written_at < self._min_interval:
            return
        self._written_at = moment
        finite = loss is not None and math.isfinite(loss)
        record = {**self._fields, "done": int(done), "loss": float(loss) if finite else None,
                  "first_step": self._first_step, "updated": time.time()}
        try:
            write_json_atomic(self._path, record)
        except (OSError, UserInputError) as error:            # a full disk, a file where its folder goes
            print(f"progress record {self._path} cannot be written ({error}); no more progress records",
                  file=sys.stderr, flush=True)
            self._path = None


def read_progress_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record in `path`, or None when there is none yet or it is not a well-formed record."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    counts = [record.get(name) for name in _COUNTS]
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in counts) or counts[1] < 1:
        return None
    if not all(isinstance(record.get(name), (int, float)) for name in ("started", "updated")):
        return None
    loss, first_step = record.get("loss"), record.get("first_step")
    if not (isinstance(first_step, list) and len(first_step) == 2 and isinstance(first_step[0], (int, float))
            and isinstance(first_step[1], int)):
        first_step = None
    return {"task": str(record.get("task", "")), "label": str(record.get("label", "")),
            "unit": str(record.get("unit") or "step"), "detail": str(record.get("detail") or ""),
            "pid": record.get("pid"), "done": counts[0], "total": counts[1], "start": counts[2],
            "loss": float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None,
            "started": float(record["started"]), "updated": float(record["updated"]),
            "first_step": (float(first_step[0]), first_step[1]) if first_step else None}
