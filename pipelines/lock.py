"""One run per work directory: `DIR/.lock`, holding who runs.

The lock file records the pid, its start time, the host, the command and a
random token. A second run finds it and stops with an error naming the holder.
A lock whose process is gone (same host, no such pid, or a pid reused by a
later process) is stale: the new run takes it over and says so. A lock held on
another host cannot be checked from here; the error says how to remove it by hand.

Race-free by construction:
- The record is written to a private temporary file (`.lock.tmp-PID-TOKEN`)
  and hard-linked into place (`os.link` fails if the name exists), so the lock
  appears complete or not at all: nobody can read a half-written lock and
  mistake it for a stale one.
- Deciding that a lock is stale and removing it happens under an exclusive
  `flock` on `.lock.takeover` (released by the kernel when its process dies, so
  it never goes stale itself). A stale lock cannot change between being read
  and being removed: its holder is dead, a fresh lock cannot replace an
  existing name, and every other remover waits for the same `flock`.
- `release` removes the lock only while it still carries the holder's token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import psutil

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import check_output_path

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
        self._takeover = self.path.with_name(f"{name}.takeover")
        self._log = log
        self._token: str | None = None

    def read(self) -> dict | None:
        """The current holder, or None when unlocked (an unreadable lock file reads as `{}`)."""
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; `UserInputError` naming the holder when it is held."""
        check_output_path(self.path.parent, directory=True, option="work directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        me = {"pid": os.getpid(), "process_started": _process_started(os.getpid()), "host": socket.gethostname(),
              "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["gencast-rmmd", *sys.argv[1:]])[:300], "token": token}
        record = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{token}")
        with open(record, "w") as handle:
            json.dump(me, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            if not self._link(record):
                with self._takeover_mutex():
                    self._remove_stale_temporaries()
                    self._link_under_mutex(record)
        finally:
            record.unlink(missing_ok=True)
        self._token = token

    def _link_under_mutex(self, record: Path) -> None:
        """Link `record` in place, removing a stale lock first; raise naming a live holder.

        A lock can still appear between the checks when a live holder releases and
        a new run links its own at once: the next round then reports that run.
        """
        for _ in range(3):
            if self._link(record):
                return
            self._take_over_if_stale()
        raise UserInputError(f"{self.path.parent} was locked and released by other runs while this one tried; "
                             "try again")

    def _link(self, record: Path) -> bool:
        """Put `record` in place as the lock if there is none (atomic); whether it was."""
        try:
            os.link(record, self.path)
        except FileExistsError:
            return False
        return True

    @contextlib.contextmanager
    def _takeover_mutex(self) -> Iterator[None]:
        """An exclusive flock on the take-over file, for deciding on and removing a stale lock."""
        descriptor = os.open(self._takeover, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the flock

    def _remove_stale_temporaries(self) -> None:
        """Delete holder records left by runs killed between writing and linking them."""
        for leftover in self.path.parent.glob(f"{self.path.name}.tmp-*"):
            pid = leftover.name.removeprefix(f"{self.path.name}.tmp-").split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and _process_started(int(pid)) is None:
                leftover.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        """Remove the lock if its holder is gone (call under the take-over mutex); raise if it is held."""
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
        """Remove the lock if this object holds it and it still carries this holder's token."""
        if self._token is None:
            return
        holder = self.read()
        if holder is not None and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
