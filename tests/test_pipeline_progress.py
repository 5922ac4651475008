"""The pipeline console's parts without stages: the progress record, its follower, the two consoles, the reaping
that measures a command's memory."""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import time

import pytest
from rich.console import Console

from gencast_rmmd.progress_record import PROGRESS_FILE_ENV, ProgressRecord, read_progress_record
from pipelines.progress import ProgressFollower, ProgressView, format_duration, progress_text
from pipelines.runner import wait_with_usage
from pipelines.stage_console import LiveStageConsole, PlainStageConsole, stage_console


def record(path, done, updated, *, total=20, start=0, pid=11, started=1000.0, label="teacher", loss=0.5,
           first_step=None):
    path.write_text(json.dumps({"task": "train", "label": label, "unit": "step", "done": done, "total": total,
                                "start": start, "loss": loss, "detail": "", "pid": pid, "started": started,
                                "first_step": first_step, "updated": updated}))


def test_a_record_is_written_only_when_asked_at_most_once_a_second_and_always_at_the_last_step(tmp_path,
                                                                                                monkeypatch):
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)
    ProgressRecord("train", "teacher", 5).update(5, 0.1)
    assert list(tmp_path.iterdir()) == []                           # no variable, no file (nowhere else either)
    path = tmp_path / "logs" / "teacher.progress.json"
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(path))
    progress = ProgressRecord("train", "teacher", 5, start=2)
    first = read_progress_record(path)
    assert (first["done"], first["total"], first["start"], first["loss"]) == (2, 5, 2, None)
    progress.update(3, 0.25)                                        # within a second of the first: not written
    assert read_progress_record(path)["done"] == 2
    progress.update(5, float("nan"))                                # the last step: written, a NaN loss as null
    last = read_progress_record(path)
    assert (last["done"], last["loss"], last["started"]) == (5, None, first["started"])
    assert first["first_step"] is None and last["first_step"][1] == 3     # when step 3 (unwritten) was done
    assert first["started"] <= last["first_step"][0] <= last["updated"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # replaced atomically, no temporary left


def test_a_record_that_cannot_be_written_is_reported_once_and_never_stops_the_run(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    progress = ProgressRecord("forecast", "f.nc", 3, path=blocker / "progress.json", min_interval=0)
    progress.update(1)
    progress.update(3)
    assert capsys.readouterr().err.count("cannot be written") == 1


@pytest.mark.parametrize("text", ["", "{\"done\": 3, \"tot", "[1, 2]", json.dumps({"done": 3, "total": 0,
                                                                                   "start": 0, "started": 1,
                                                                                   "updated": 2})])
def test_a_torn_or_malformed_record_reads_as_none(tmp_path, text):
    (tmp_path / "r.json").write_text(text)
    assert read_progress_record(tmp_path / "r.json") is None


def test_the_follower_measures_the_rate_after_the_first_step_and_keeps_its_view_over_a_torn_record(tmp_path):
    path = tmp_path / "teacher.progress.json"
    follower = ProgressFollower(path)
    assert follower.poll() is None                                  # the command has written nothing yet
    record(path, 0, 1000.0)
    view = follower.poll(now=1001.0)
    assert (view.done, view.total, view.rate) == (0, 20, None)
    assert progress_text(view) == "teacher: step 0/20, loss 0.5, first step (it compiles)"
    record(path, 1, 1030.0)                                         # the first step: 30 s of compilation
    view = follower.poll(now=1030.0)
    assert view.rate is None and progress_text(view).endswith("ETA: measuring")
    record(path, 3, 1034.0)
    view = follower.poll(now=1034.5)
    assert view.rate == pytest.approx(0.5) and view.eta_seconds == pytest.approx(34.0)
    assert progress_text(view) == "teacher: step 3/20, 2.0 s/step, loss 0.5, ETA 34.0 s"
    path.write_text('{"task": "train", "label": "teacher", "done": 4, "tot')   # a torn line from a foreign writer
    assert follower.poll(now=1035.0) == ProgressView("teacher", "step", 3, 20, 0, 0.5, "", 0.5, 1.0)
    path.unlink()
    assert follower.poll(now=1035.0).done == 3
    record(path, 20, 1068.0, loss=0.25)
    assert progress_text(follower.poll(now=1068.0)) == "teacher: step 20/20, 2.0 s/step, loss 0.25"


def test_a_resumed_run_shows_its_resumed_step_and_counts_only_its_own_steps(tmp_path):
    path = tmp_path / "distill.rmmd.progress.json"
    follower = ProgressFollower(path)
    record(path, 3, 1034.0, total=200)
    follower.poll(now=1034.0)
    record(path, 150, 5000.0, total=200, start=150, pid=12, started=4990.0)   # killed, resumed from step 150
    view = follower.poll(now=5001.0)
    assert (view.done, view.start, view.rate) == (150, 150, None)
    assert "step 150/200 (resumed at 150)" in progress_text(view)
    record(path, 151, 5030.0, total=200, start=150, pid=12, started=4990.0)
    record(path, 151, 5030.0, total=200, start=150, pid=12, started=4990.0)   # read twice: one sample
    follower.poll(now=5030.0)
    follower.poll(now=5030.0)
    record(path, 155, 5040.0, total=200, start=150, pid=12, started=4990.0)
    view = follower.poll(now=5040.0)
    assert view.rate == pytest.approx(0.4) and view.eta_seconds == pytest.approx(112.5)
    # The next run of the same process (phase 2 after phase 1) starts its own count.
    record(path, 0, 5050.0, total=120, pid=12, started=5045.0, label="students/rmmd")
    view = follower.poll(now=5051.0)
    assert (view.label, view.done, view.total, view.rate) == ("students/rmmd", 0, 120, None)


def test_the_rate_is_known_from_a_single_record_after_the_first_step(tmp_path):
    """Polls can miss records (two steps between polls): the record's `first_step` anchors the rate."""
    path = tmp_path / "forecast.tiny.progress.json"
    record(path, 2, 1016.0, total=2, first_step=[1015.0, 1])         # the follower saw neither step 0 nor 1
    assert ProgressFollower(path).poll(now=1016.0).rate == pytest.approx(1.0)
    record(path, 1, 1015.0, total=2, first_step=[1015.0, 1])         # the first step's own record: no rate yet
    assert ProgressFollower(path).poll(now=1016.0).rate is None


def test_the_rate_follows_the_last_minutes_and_a_silent_command_is_named(tmp_path):
    path = tmp_path / "p.json"
    follower = ProgressFollower(path)
    for done, updated in ((1, 0.0), (101, 100.0), (201, 200.0), (301, 300.0)):   # 1 step/s
        record(path, done, updated, total=1000)
        follower.poll(now=updated)
    for done, updated in ((311, 400.0), (321, 500.0), (331, 600.0), (341, 700.0)):   # then 0.1 step/s
        record(path, done, updated, total=1000)
        view = follower.poll(now=updated)
    assert view.rate == pytest.approx(0.1)                          # only the last 300 s count
    stalled = follower.poll(now=700.0 + 600)
    assert "no progress for 10 min 00 s" in progress_text(stalled)


def test_durations_read_as_people_say_them():
    assert [format_duration(s) for s in (3.21, 451.4, 7299)] == ["3.2 s", "7 min 31 s", "2 h 01 min"]


def test_without_a_terminal_a_plain_line_comes_every_so_many_seconds():
    lines, clock = [], [0.0]
    console = PlainStageConsole(lines.append, every=30, clock=lambda: clock[0])
    view = ProgressView("students/rmmd", "step", 40, 120, 0, 0.0123, "", 1 / 3.2, 1.0)
    with console.stage("[4/7] distill.rmmd") as show:
        for clock[0] in (1.0, 29.0, 31.0, 45.0, 61.5):
            show(view if clock[0] > 40 else None)
    assert lines == ["[4/7] distill.rmmd  running, 31.0 s elapsed",
                     "[4/7] distill.rmmd  students/rmmd: step 40/120, 3.2 s/step, loss 0.0123, ETA 4 min 16 s, "
                     "1 min 02 s elapsed"]
    quiet = []
    with PlainStageConsole(quiet.append, every=0, clock=lambda: clock[0]).stage("x") as show:
        clock[0] = 1e6
        show(view)
    assert quiet == []


def test_a_terminal_gets_a_live_bar_and_a_pipe_plain_lines_without_ansi_codes():
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=160)
    assert isinstance(stage_console(terminal), LiveStageConsole)
    with stage_console(terminal).stage("[3/7] teacher") as show:
        show(ProgressView("teacher", "step", 7, 20, 0, 0.5, "", 2.0, 0.1))
    assert "7/20 steps" in screen.getvalue() and "\x1b[" in screen.getvalue()
    # The stage's elapsed time goes on when a distillation's first run fills its bar and the next begins.
    clock, screen = [0.0], io.StringIO()
    live = LiveStageConsole(Console(file=screen, force_terminal=True, width=160), clock=lambda: clock[0])
    with live.stage("[4/7] distill.rmmd") as show:
        clock[0] = 65.0
        show(ProgressView("students/rmmd/phase1", "step", 2, 2, 0, 0.5, "", 1.0, 0.1))
        clock[0] = 3725.0
        show(ProgressView("students/rmmd", "step", 1, 2, 0, 0.5, "", 1.0, 0.1))
    assert "1/2 steps students/rmmd" in screen.getvalue() and "1:02:05" in screen.getvalue()   # the last frame
    piped = io.StringIO()
    plain = stage_console(Console(file=piped, width=160), every=0.0001)
    assert isinstance(plain, PlainStageConsole)
    with plain.stage("[3/7] teacher") as show:
        time.sleep(0.01)
        show(ProgressView("teacher", "step", 7, 20, 0, 0.5, "", 2.0, 0.1))
    assert "teacher: step 7/20, 2.00 step/s, loss 0.5, ETA 6.5 s" in piped.getvalue()
    assert "\x1b" not in piped.getvalue()


def test_a_reaped_command_reports_its_exit_code_peak_memory_and_cpu_time():
    allocate = "import sys; b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); sys.exit(3)"
    process = subprocess.Popen([sys.executable, "-c", allocate])
    ticks = []
    code, usage = wait_with_usage(process, lambda: ticks.append(1), poll_seconds=0.01)
    assert code == 3 and process.returncode == 3 and process.poll() == 3
    # Linux charges our own resident image (inherited until exec) to the child's peak.
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert 300e6 < usage.peak_rss_bytes < max(2e9, ours + 1e9) and usage.cpu_seconds > 0
    assert ticks


def test_status_shows_the_running_stages_progress_while_a_run_holds_the_lock(tmp_path, run_cli):
    from pipelines.lock import WorkdirLock
    from pipelines.manifest import Manifest

    Manifest.load(tmp_path).update_stage("teacher", order=0, group=3, state="running", log="logs/teacher.log")
    (tmp_path / "logs").mkdir()
    now = time.time()
    record(tmp_path / "logs" / "teacher.progress.json", 120, now - 2, total=200, start=100,
           first_step=[now - 192, 101])
    assert "teacher running" not in run_cli("pipeline", "status", tmp_path).out    # no holder: it was killed
    with WorkdirLock(tmp_path, log=lambda _: None):
        out = " ".join(run_cli("pipeline", "status", tmp_path).out.split())
    assert "teacher running: teacher: step 120/200 (resumed at 100), 10.0 s/step, loss 0.5, ETA 13 min 20 s" in out
