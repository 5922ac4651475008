"""Pipeline parts without running stages: config resolution, init choice, the lock, the manifest, the graph."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gencast_rmmd.errors import UserInputError
from pipelines.config import flatten_overrides, load_pipeline_config, resolve
from pipelines.lock import WorkdirLock
from pipelines.manifest import Manifest, environment, git_commit
from pipelines.stages import build_stages
from pipelines.tasks import choose_inits

REPO = Path(__file__).resolve().parent.parent
PIPELINES = REPO / "configs" / "pipelines"
TINY = PIPELINES / "tiny.yaml"


def test_flatten_overrides_gives_set_syntax():
    assert flatten_overrides({"train": {"steps": 5, "lr": 1e-3}, "levels": [500, 850], "name": "x"}) == [
        "train.steps=5", "train.lr=0.001", "levels=[500, 850]", 'name="x"']


def test_resolve_puts_the_pipeline_data_stats_and_devices_into_every_training_config(tmp_path):
    config = load_pipeline_config(TINY, ["teacher.overrides.train.steps=7",
                                         "distributed.coordinator_address=10.0.0.1:1234",
                                         "distributed.num_processes=2", "distributed.process_id=0"],
                                  data=str(tmp_path / "store.zarr"))
    resolved = resolve(config, TINY)
    assert resolved.data.path == str(tmp_path / "store.zarr") and resolved.data.levels == (500, 850)
    assert resolved.teacher.data == resolved.data
    assert resolved.teacher.stats == "stats/stats.nc" and resolved.teacher.train.steps == 7
    for training in (resolved.teacher, resolved.distill["tiny"]):
        assert training.distributed.coordinator_address == "10.0.0.1:1234"
    files = resolved.files()
    assert set(files) == {"data.yaml", "teacher.yaml", "distill.tiny.yaml"}


def test_every_shipped_pipeline_config_resolves_to_a_graph_of_seven_groups():
    for path in sorted(PIPELINES.glob("*.yaml")):
        config = load_pipeline_config(path)
        stages = build_stages(config, resolve(config, path))
        assert [stage.group for stage in stages] == sorted(stage.group for stage in stages), path
        assert {stage.group for stage in stages} == set(range(1, 8)), path
        names = [stage.name for stage in stages]
        assert len(set(names)) == len(names)
        for stage in stages:                      # every input is an output of an earlier stage
            for reference in stage.inputs:
                upstream, output = reference.rsplit(".", 1)
                assert names.index(upstream) < names.index(stage.name), (stage.name, reference)
                assert output in stages[names.index(upstream)].outputs


@pytest.mark.parametrize("overrides, phrase", [
    (["forecast.stepz=3"], "forecast.stepz: unknown key"),
    (["distill.teacher.config=configs/distill/tiny.yaml"], "must be lower-case letters"),
    (["teacher.overrides.data.path=x"], "teacher.overrides.data: set data in the pipeline's own data section"),
    (["distill.tiny.overrides.distill.reward_weight=[0.1,0.3]"], "give one distiller entry per reward weight"),
    (["teacher.config=configs/teacher/nope.yaml"], "config file configs/teacher/nope.yaml does not exist"),
])
def test_bad_pipeline_configs_are_one_line_errors(run_cli, tmp_path, overrides, phrase):
    args = [a for override in overrides for a in ("--set", override)]
    result = run_cli("pipeline", "run", TINY, "--workdir", tmp_path / "w", *args)
    assert result.code == 2, result.err
    assert phrase in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_force_must_name_a_stage(run_cli, tmp_path):
    result = run_cli("pipeline", "run", TINY, "--workdir", tmp_path / "w", "--force", "distil.*")
    assert result.code == 2 and "--force 'distil.*' matches no stage" in result.err


TIMES = pd.date_range("2001-01-01", periods=20, freq="12h")
TEST = (TIMES[12], TIMES[19])
STEP = pd.Timedelta(hours=12)


def test_inits_need_history_and_all_leads_inside_the_test_split():
    chosen = choose_inits(TIMES, TEST, STEP, input_frames=2, steps=2, every_hours=12, count=None, explicit=[])
    assert chosen == list(TIMES[12:18])            # the last lead of TIMES[17] is TIMES[19]
    spaced = choose_inits(TIMES, TEST, STEP, 2, 2, every_hours=24, count=2, explicit=[])
    assert spaced == [TIMES[12], TIMES[14]]
    gappy = TIMES.delete(13)            # a missing time removes every init that needs it (as input or lead)
    assert choose_inits(gappy, TEST, STEP, 2, 1, 12, None, []) == list(TIMES[15:19])


def test_explicit_inits_are_checked():
    assert choose_inits(TIMES, TEST, STEP, 2, 2, 24, None, [str(TIMES[15])]) == [TIMES[15]]
    with pytest.raises(UserInputError, match="is not a usable init"):
        choose_inits(TIMES, TEST, STEP, 2, 2, 24, None, [str(TIMES[18])])
    with pytest.raises(UserInputError, match="holds no init"):
        choose_inits(TIMES, TEST, STEP, 2, 10, 24, None, [])


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    messages = []
    with WorkdirLock(tmp_path, log=messages.append) as lock:
        assert lock.read()["pid"] == os.getpid()
        with pytest.raises(UserInputError, match=f"locked by a running pipeline: pid {os.getpid()}"):
            WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(finished.stdout), "host": socket.gethostname(), "started": "earlier"}
    (tmp_path / ".lock").write_text(json.dumps(dead))
    with WorkdirLock(tmp_path, log=messages.append) as lock:
        assert lock.read()["pid"] == os.getpid()
    assert any(f"stale lock of pid {dead['pid']}" in message for message in messages)


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    # Our own pid, but a process start time that is not ours: the recorded holder is gone.
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "process_started": 1.0,
                                                "host": socket.gethostname()}))
    with WorkdirLock(tmp_path, log=lambda _: None) as lock:
        assert lock.read()["process_started"] != 1.0


def test_a_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": "then"}))
    with pytest.raises(UserInputError, match=r"another host runs this pipeline. If that run is gone, remove"):
        WorkdirLock(tmp_path).acquire()


def test_manifest_round_trip_and_environment(tmp_path):
    manifest = Manifest.load(tmp_path)
    manifest.update_stage("b", order=1, state="done")
    manifest.update_stage("a", order=0, state="running")
    again = Manifest.load(tmp_path)
    assert [name for name, _ in again.ordered_stages()] == ["a", "b"]
    info = environment()
    assert info["packages"]["jax"] and info["python"]
    commit = git_commit()
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)


def test_a_follower_runs_its_share_of_the_training_stages_process_0_runs(tmp_path, monkeypatch):
    """Process 1 skips what process 0 skipped, joins what it runs (with its own process_id and --resume)."""
    import pipelines.follower as follower

    config = load_pipeline_config(TINY, ["distributed.coordinator_address=127.0.0.1:1", "distributed.num_processes=2",
                                         "distributed.process_id=1"], data=str(tmp_path / "store.zarr"))
    manifest = Manifest.load(tmp_path)
    manifest.content["runs"] = [{"started": "2026-01-01T00:00:00+00:00", "result": "running",
                                 "actions": {"data": "ran", "stats": "ran", "teacher": "skipped"}}]
    manifest.update_stage("distill.tiny", state="running", action="resumed", started="2026-01-01T00:05:00+00:00")
    commands = []

    def run_share(stage, command, config, workdir, process_id):
        commands.append((stage.name, command.display()))
        manifest.current_run["result"] = "ok"
        manifest.save()

    monkeypatch.setattr(follower, "_run_share", run_share)
    with WorkdirLock(tmp_path):                        # process 0 is "running"
        ran = follower.follow_pipeline(TINY, config, tmp_path, log=lambda _: None, poll_seconds=0.01)
    assert ran == 1 and [name for name, _ in commands] == ["distill.tiny"]
    command = commands[0][1]
    assert command.startswith("gencast-rmmd distill ") and "--resume" in command
    assert command.endswith("--set distributed.process_id=1")
    assert not (tmp_path / ".lock.process-1").exists()
