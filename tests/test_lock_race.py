"""The work-directory lock is race-free: of many runs started at the same instant, exactly one holds it."""

from __future__ import annotations

import json
import os
import socket

import pytest
from lock_stress import contend

from pipelines.lock import WorkdirLock


@pytest.mark.parametrize("stale", [False, True], ids=["free lock", "stale lock"])
def test_forty_simultaneous_starts_give_exactly_one_holder(tmp_path, stale):
    counts = contend(tmp_path, 40, stale=stale)
    assert counts == {"held": 1, "refused": 39, "other": 0}, counts
    assert not (tmp_path / ".lock").exists(), "the holder released the lock"
    assert not list(tmp_path.glob(".lock.tmp-*")), "no holder record left behind"


def test_the_lock_appears_complete_and_a_killed_writers_record_is_cleaned(tmp_path):
    """The lock is linked in whole (never empty); a record left by a dead process is removed at the next take-over."""
    leftover = tmp_path / ".lock.tmp-999999999-abc"
    leftover.write_text("{}")
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999999, "host": socket.gethostname()}))
    with WorkdirLock(tmp_path, log=lambda _: None) as lock:
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["token"] and lock.read() == holder
        assert not leftover.exists()


def test_release_leaves_a_lock_that_is_no_longer_its_own(tmp_path):
    lock = WorkdirLock(tmp_path, log=lambda _: None)
    lock.acquire()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "token": "another"}))
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text())["token"] == "another"
