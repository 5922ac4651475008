"""One run per work directory: `DIR/.lock`, created exclusively, holding who runs.

The lock file records the pid, its start time, the host and the command. A
second run finds it and stops with an error naming the holder. A lock whose
process is gone (same host, no such pid, or a pid reused by a later process)
is stale: the new run takes it over and says so. A lock held on another host
cannot be checked from here; the error says how to remove it by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable

import psutil

from gencast_rmmd.errors import UserInputError

LOCK_FILE = ".lock"


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _holder_alive(holder: dict) -> bool:
    """Whether the process that wrote `holder` still runs (a reused pid does not count)."""
    started = _process_started(int(holder.get("pid", -1)))
    if started is None:
        return False
    recorded = holder.get("process_started")
    return recorded is None or abs(started - float(recorded)) < 1.0


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command', '?')})")


class WorkdirLock:
    """`with WorkdirLock(workdir, name):` holds `workdir/name` for the duration (UserInputError if held)."""

    def __init__(self, workdir: Path, name: str = LOCK_FILE, log: Callable[[str], None] = print):
        self.path = Path(workdir) / name
        self._log = log
        self._held = False

    def read(self) -> dict | None:
        """The current holder, or None when unlocked (an unreadable lock file reads as `{}`)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "process_started": _process_started(os.getpid()), "host": socket.gethostname(),
              "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["gencast-rmmd", *sys.argv[1:]])[:300]}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            self._held = True
            return
        raise UserInputError(f"{self.path.parent} is locked by another run that appeared while taking over "
                             f"a stale lock; try again")

    def _take_over_if_stale(self) -> None:
        holder = self.read()
        if holder is None:
            return
        if holder.get("host") not in (None, socket.gethostname()):
            raise UserInputError(f"{self.path.parent} is locked by {_describe(holder)}; another host runs this "
                                 f"pipeline. If that run is gone, remove {self.path}")
        if holder and _holder_alive(holder):
            raise UserInputError(f"{self.path.parent} is locked by a running pipeline: {_describe(holder)}. "
                                 "Wait for it to finish, or use another --workdir")
        self._log(f"taking over the stale lock of {_describe(holder) if holder else 'an unreadable lock file'}: "
                  "that process is gone")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
