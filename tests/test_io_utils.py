"""Atomic writes: temporaries of killed writers are removed by the next write to the same destination."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from gencast_rmmd.io_utils import atomic_path, remove_dead_temporaries, write_json_atomic

WRITER = """
import sys, time
from gencast_rmmd.io_utils import atomic_path
with atomic_path(sys.argv[1]) as temporary:
    temporary.write_text("half")
    print(temporary, flush=True)
    time.sleep(60)
"""


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    destination = tmp_path / "F.nc"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(destination)], stdout=subprocess.PIPE, text=True)
    temporary = tmp_path / writer.stdout.readline().strip()
    assert temporary.name == f".F.nc.tmp-{writer.pid}" and temporary.exists()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert temporary.exists() and not destination.exists()  # what kill -9 leaves behind
    write_json_atomic(destination, {"ok": True})
    assert not temporary.exists() and destination.exists()


def test_only_dead_writers_temporaries_of_the_same_destination_are_removed(tmp_path):
    dead = _dead_pid()
    dead_file, dead_store = tmp_path / f".F.nc.tmp-{dead}", tmp_path / f".F.zarr.tmp-{dead}"
    live = tmp_path / f".F.nc.tmp-{os.getppid()}"      # a running process: its write may still finish
    other = tmp_path / f".G.nc.tmp-{dead}"               # another destination's: left to its own next write
    not_ours = tmp_path / ".F.nc.tmp-notapid"
    for path in (dead_file, live, other, not_ours):
        path.write_text("partial")
    (dead_store / "temperature").mkdir(parents=True)
    assert remove_dead_temporaries(tmp_path / "F.nc") == [dead_file]
    with atomic_path(tmp_path / "F.zarr") as temporary:
        temporary.mkdir()
    assert not dead_file.exists() and not dead_store.exists()
    assert live.exists() and other.exists() and not_ours.exists() and (tmp_path / "F.zarr").is_dir()
