"""Pipeline parts without running stages: config resolution, init choice, the lock, the manifest, the graph."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gencast_rmmd.errors import UserInputError
from pipelines.config import load_pipeline_config
from pipelines.digests import output_record
from pipelines.graph import StageContext
from pipelines.grid import grid_points
from pipelines.lock import WorkdirLock
from pipelines.manifest import Manifest, environment, git_commit
# imported here, not inside a test: `two_candidates` patches names that these modules bind when first imported
from pipelines.report import _selection_section
from pipelines.resolution import flatten_overrides, resolve
from pipelines.selection import CandidateScore, chosen_index, score_candidates, select, select_best
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
    for training in (resolved.teacher, resolved.distill["tiny"].candidates[0].config):
        assert training.distributed.coordinator_address == "10.0.0.1:1234"
    files = resolved.files()
    assert set(files) == {"data.yaml", "teacher.yaml", "distill.tiny.yaml"}


def test_every_shipped_pipeline_config_resolves_to_a_graph_of_seven_groups():
    for path in sorted(PIPELINES.glob("*.yaml")):
        config = load_pipeline_config(path)
        if config.teacher.gencast is not None:   # reads its (remote) checkpoint: planned in test_gencast_pipeline
            continue
        stages = build_stages(config, resolve(config, path))
        groups = [stage.group for stage in stages if config.runtime.order == "groups" or stage.group not in (5, 6)]
        if config.runtime.order == "rows":          # `order: rows` moves test forecasts and scoring, and the
            first_seed = next((i for i, stage in enumerate(stages) if stage.extra_seed), len(stages))
            cut = sum(stage.group not in (5, 6) for stage in stages[:first_seed])     # extra seeds after the rest
            assert groups[:cut] == sorted(groups[:cut]) and groups[cut:] == sorted(groups[cut:]), path
        else:
            assert groups == sorted(groups), path
        has_group_4 = bool(config.distill or config.validation)        # distill, validation and selection
        assert {stage.group for stage in stages} == set(range(1, 8)) - ({4} if not has_group_4 else set()), path
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
    (["teacher.weights=configs", "teacher.overrides.train={}"],
     "teacher.weights configs is not a weights package directory"),
    (["teacher.weights=gencast_rmmd/teacher/pretrained/demo"], "teacher.overrides.train has no effect"),
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


# --------------------------------------------------------------------------- choices on validation

SELECT = PIPELINES / "tiny_select.yaml"


def _stages(path: Path = SELECT, overrides: tuple[str, ...] = ()) -> dict:
    config = load_pipeline_config(path, list(overrides))
    return {stage.name: stage for stage in build_stages(config, resolve(config, path))}


@pytest.mark.parametrize("overrides, phrase", [
    (["distill.mmd.grid={train.learnign_rate: [0.1]}"],
     "distill.mmd.grid: train.learnign_rate is not a key of the config; keys of train: b1, b2"),
    (["distill.mmd.grid={train: [1, 2]}"], "distill.mmd.grid: train is a section of the config"),
    (["distill.mmd.grid={seed: [1, 1]}"], "seed: the values [1, 1] repeat one another"),
    (["distill.mmd.grid={distributed.num_processes: [1, 2]}"], "distill.mmd.grid.distributed: set distributed in"),
    (["teacher_samplers.teacher_3calls.grid={sampler.chrun: [0, 1]}"],
     "teacher_samplers.teacher_3calls.grid: sampler.chrun is not a key of the config; keys of sampler: churn"),
    (["teacher_samplers.teacher_3calls.sampler={chrun: 0}"], "teacher_samplers.teacher_3calls: sampler.chrun: "
                                                              "unknown key"),
    (["distill.rmmd.from=phase1"], "distill.rmmd.from: no distiller entry 'phase1'; entries: mmd, rmmd"),
    (["distill.mmd.from=rmmd"], "distill.rmmd.from: the entries build on one another in a cycle "
                                "(mmd -from-> rmmd -from-> mmd)"),
    (["distill.rmmd.from=rmmd"], "in a cycle (rmmd -from-> rmmd)"),
    (["distill.mmd.overrides.distill.method=rmmd"],     # rmmd may continue it; dmdr may not
     "distill.dmdr.from: mmd is a rmmd student; `from` takes a phase-1 (method mmd) entry, or one of the row's own "
     "phase-2 method to continue"),
    (["distill.rmmd.seeds=[0]"], "distill.rmmd.seeds: 0 is the seed of the config itself"),
    (["distill.rmmd.seeds=[2, 2]"], "seeds [2, 2] repeat one another"),
    (["teacher_samplers.rmmd_seed1={}"], "the rows rmmd_seed1 have the same label"),
    (["validation=null"], "distill.mmd.grid: candidates are chosen on validation inits; add a `validation:` section"),
    (["best_of.family_best.among=[dmd, dmdd]"],
     "best_of.family_best.among: no distiller entry 'dmdd'; entries: mmd, rmmd"),
    (["best_of.family_best.among=[dmd]"], "best_of.family_best.among: Tuple should have at least 2 items"),
    (["best_of.family_best.seeds=[0]"], "best_of.family_best.seeds: 0 is the seed of dmd's config itself"),
    (["best_of.rmmd={among: [dmd, gndm], seeds: [3]}"], "the rows rmmd have the same label"),
    (["best_of.family_best.seeds=[1, 1]"], "seeds [1, 1] repeat one another"),
    (["distill.mmd.grid={}", "validation=null"],
     "best_of.family_best: the rows are ranked on validation inits; add a `validation:` section"),
    (["distill.rmmd.grid={distill.reward_weight: [[0.1, 0.3]]}"],
     "distill.rmmd.c0: a reward-weight sweep ([0.1, 0.3]) is one student per value"),
    # base: (tiny_select.yaml's mmd_2step is `base: mmd`)
    (["distill.x={config: configs/distill/tiny.yaml, base: mmd}"],
     "distill.x: Value error, config: and base: both given; give one: a configs/distill/*.yaml file"),
    (["distill.x={overrides: {train: {steps: 3}}}"], "distill.x: Value error, no config: or base:; give one"),
    (["distill.x={base: mmdd}"],
     "distill.x.base: no distiller entry 'mmdd'; entries: mmd, rmmd, dmdr, dmd, gndm, mmd_2step, x"),
    (["distill.mmd.config=null", "distill.mmd.base=rmmd"],
     "distill.rmmd.from: the entries build on one another in a cycle (mmd -base-> rmmd -from-> mmd)"),
    (["distill.mmd_2step.overrides.distill.momnt_term=false"],
     ("distill.mmd_2step (on mmd's config): ", "configs/distill/tiny.yaml: distill.momnt_term: unknown key")),
    (["distill.mmd_2step.grid={train.learnign_rate: [0.1]}"],
     "distill.mmd_2step.grid: train.learnign_rate is not a key of the config; keys of train: b1, b2"),
    (["distill.rmmd.from=mmd_2step", "distill.mmd_2step.overrides.distill.method=dmd"],
     "distill.rmmd.from: mmd_2step is a dmd student; `from` takes a phase-1 (method mmd) entry"),
])
def test_bad_choices_are_one_line_errors(run_cli, tmp_path, overrides, phrase):
    args = [a for override in overrides for a in ("--set", override)]
    result = run_cli("pipeline", "run", SELECT, "--workdir", tmp_path / "w", *args)
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert all(part in result.err for part in ((phrase,) if isinstance(phrase, str) else phrase)), result.err
    assert not (tmp_path / "w").exists()


def test_grid_candidates_are_the_product_of_sorted_keys_with_the_last_varying_fastest():
    assert grid_points({"train.learning_rate": [1, 2], "distill.reward_weight": [3, 10]}) == [
        {"distill.reward_weight": 3, "train.learning_rate": 1}, {"distill.reward_weight": 3, "train.learning_rate": 2},
        {"distill.reward_weight": 10, "train.learning_rate": 1},
        {"distill.reward_weight": 10, "train.learning_rate": 2}]
    # A nested grid (what --set distill.NAME.grid.train.learning_rate=... writes) is the dotted one.
    config = load_pipeline_config(SELECT, ["distill.mmd.grid.distill.reward_weight=[3, 10]"])
    assert config.distill["mmd"].grid == {"train.learning_rate": [1e-4, 1e-3], "distill.reward_weight": [3, 10]}
    row = resolve(config, SELECT).distill["mmd"]
    assert row.grid == ("distill.reward_weight", "train.learning_rate")
    assert [c.label for c in row.candidates] == ["mmd.c0", "mmd.c1", "mmd.c2", "mmd.c3"]
    assert [(c.config.distill.reward_weight, c.config.train.learning_rate) for c in row.candidates] == [
        (3, 1e-4), (3, 1e-3), (10, 1e-4), (10, 1e-3)]
    assert all(c.config.distill.method == "mmd" and c.config.train.progress is False for c in row.candidates)


def test_a_grid_with_seeds_from_and_a_teacher_sampler_row_is_one_graph():
    """Group 4 trains, forecasts on validation and selects before any test forecast; inputs follow the choice;
    the teacher's few-call samplers (no training) come before every distiller row."""
    stages = _stages()
    names = list(stages)
    assert names[names.index("teacher") + 1:names.index("forecast.inits")] == [
        "validation.inits", "validation.forecast.teacher", "validation.forecast.teacher_3calls",
        "distill.mmd.c0", "distill.mmd.c1", "validation.forecast.mmd.c0", "validation.forecast.mmd.c1", "select.mmd",
        "distill.rmmd", "validation.forecast.rmmd", "distill.rmmd_seed1", "validation.forecast.rmmd_seed1",
        "distill.dmdr", "validation.forecast.dmdr", "distill.dmd", "validation.forecast.dmd", "distill.gndm",
        "validation.forecast.gndm", "distill.mmd_2step", "validation.forecast.mmd_2step",
        "select.family_best", "distill.family_best_seed1", "validation.forecast.family_best_seed1"]
    assert {name for name in names if name.startswith(("forecast.", "evaluate."))} >= {
        f"{kind}.{label}" for kind in ("forecast", "evaluate")
        for label in ("teacher", "mmd", "rmmd", "rmmd_seed1", "dmd", "gndm", "dmdr", "mmd_2step", "teacher_3calls",
                      "family_best_seed1", "persistence")}
    assert stages["distill.mmd.c1"].outputs["run"].path == "students/mmd/c1"
    assert stages["distill.mmd.c1"].settings["train"]["learning_rate"] == 1e-3
    assert stages["validation.forecast.mmd.c1"].outputs["forecast"].path == "validation/forecasts/mmd.c1.nc"
    assert stages["validation.inits"].outputs["inits"].path == "validation/inits.json"
    assert set(stages["select.mmd"].inputs) == {
        "validation.forecast.mmd.c0.forecast", "validation.forecast.mmd.c1.forecast",
        "validation.forecast.teacher.forecast", "validation.inits.inits", "data.validation"}
    assert {key: output.path for key, output in stages["select.mmd"].outputs.items()} == {
        "selection": "selection/mmd.json", "config": "selection/mmd.yaml"}
    chosen_mmd = {"select.mmd.config", "distill.mmd.c0.run", "distill.mmd.c1.run"}
    assert set(stages["distill.rmmd"].inputs) == chosen_mmd | {"data.train", "data.validation"}
    assert set(stages["distill.rmmd_seed1"].inputs) == chosen_mmd | {"data.train", "data.validation"}
    assert stages["distill.rmmd_seed1"].settings["seed"] == 1
    assert stages["distill.rmmd_seed1"].outputs["run"].path == "students/rmmd_seed1"
    assert set(stages["forecast.mmd"].inputs) == chosen_mmd | {"forecast.inits.inits", "data.test"}
    assert stages["forecast.teacher_3calls"].settings["sampler"] == ["num_noise_levels=2"]
    assert set(stages["speed"].inputs) == chosen_mmd | {"teacher.run", "distill.rmmd.run", "distill.mmd_2step.run",
                                                        "distill.dmd.run", "distill.gndm.run", "distill.dmdr.run"}
    assert {"evaluate.rmmd_seed1.scores", "evaluate.teacher_3calls.scores"} <= set(stages["scorecard"].inputs)
    # best_of.family_best ranks DMD, GNDM and DMDR on their validation forecasts, then trains the best one's
    # config with seed 1: its identity holds every row's seed config, the ranking and where each row starts.
    assert set(stages["select.family_best"].inputs) == {
        "distill.dmd.run", "distill.gndm.run", "distill.dmdr.run", "validation.forecast.dmd.forecast",
        "validation.forecast.gndm.forecast", "validation.forecast.dmdr.forecast",
        "validation.forecast.teacher.forecast", "validation.inits.inits", "data.validation"}
    seed = stages["distill.family_best_seed1"]
    assert set(seed.inputs) == chosen_mmd | {"select.family_best.selection", "data.train", "data.validation"}
    assert seed.settings["seed"] == 1 and set(seed.settings["configs"]) == {"dmd", "gndm", "dmdr"}
    assert {config["seed"] for config in seed.settings["configs"].values()} == {1}
    assert seed.outputs["run"].path == "students/family_best_seed1"
    assert "evaluate.family_best_seed1.scores" in stages["scorecard"].inputs


def test_commands_follow_the_selection_read_when_they_are_built(tmp_path):
    stages = _stages()
    (tmp_path / "selection").mkdir()
    (tmp_path / "selection" / "mmd.json").write_text(json.dumps({"chosen": {"index": 1}}))
    (tmp_path / "forecasts").mkdir()
    (tmp_path / "forecasts" / "inits.json").write_text(json.dumps({"inits": ["2001-01-08T00:00:00"]}))
    context = StageContext(tmp_path, False, {})

    def command(name: str) -> str:
        return stages[name].commands(context)[-1].display()

    assert "--checkpoint students/mmd/c1 " in command("forecast.mmd")
    assert "--config configs/distill.rmmd.yaml --teacher students/mmd/c1 " in command("distill.rmmd")
    assert "--config configs/distill.rmmd_seed1.yaml --teacher students/mmd/c1 " in command("distill.rmmd_seed1")
    assert "--checkpoint teacher --sampler num_noise_levels=2 " in command("forecast.teacher_3calls")
    speed = command("speed")
    assert ("--model teacher=teacher --model mmd=students/mmd/c1 --model rmmd=students/rmmd "
            "--model dmdr=students/dmdr --model dmd=students/dmd --model gndm=students/gndm "
            "--model mmd_2step=students/mmd_2step --model teacher_3calls=teacher "
            "--model-sampler teacher_3calls:num_noise_levels=2") in speed
    assert ("--student mmd --student rmmd --student rmmd_seed1 --student dmdr --student dmd --student gndm "
            "--student mmd_2step --student family_best_seed1 "
            "--teacher-sampler teacher_3calls") in command("scorecard").replace("'", "")
    # The best_of ranking reads each row's chosen run; its seed follows the best row, from that row's start.
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "inits.json").write_text(json.dumps({"inits": ["2001-01-05T00:00:00"]}))
    assert ("--row dmd --forecast validation/forecasts/dmd.nc --row gndm --forecast validation/forecasts/gndm.nc "
            "--row dmdr --forecast validation/forecasts/dmdr.nc") in command("select.family_best")
    for best in ("gndm", "dmdr"):
        (tmp_path / "selection" / "family_best.json").write_text(json.dumps({"chosen": {"row": best}}))
        assert f"--config configs/distill.{best}.yaml --set seed=1 --teacher students/mmd/c1 " in \
            command("distill.family_best_seed1")
    # A row that starts from the teacher (plain MMD: a grid row) trains its selection with the seed, from there.
    ranked = _stages(overrides=("best_of.family_best.among=[mmd, dmd]",))
    (tmp_path / "selection" / "family_best.json").write_text(json.dumps({"chosen": {"row": "mmd"}}))
    assert "distill --config selection/mmd.yaml --set seed=1 --teacher teacher " in \
        ranked["distill.family_best_seed1"].commands(context)[-1].display()
    assert "--row mmd --forecast validation/forecasts/mmd.c1.nc --row dmd" in \
        ranked["select.family_best"].commands(context)[-1].display()
    # A grid row's extra seed trains the selection's config with its own seed.
    seeded = _stages(overrides=("distill.mmd.seeds=[3]",))
    assert "distill --config selection/mmd.yaml --set seed=3 --teacher teacher" in \
        seeded["distill.mmd_seed3"].commands(context)[-1].display()
    assert "select.mmd.config" in seeded["distill.mmd_seed3"].inputs


def _phase1_package(path: Path, distill_config: str = "configs/distill/mmd.yaml", kind: str = "phase1") -> Path:
    """A phase-1 (or `kind` phase2) package whose card records `distill_config`'s seed and distill section (what
    the pipeline checks when it loads; the parameters are a stand-in: installing is tested in test_distill)."""
    from gencast_rmmd.config import config_to_dict, load_config
    from gencast_rmmd.distill.config import DistillConfig
    from gencast_rmmd.training.packages import write_package

    config = config_to_dict(load_config(REPO / distill_config, DistillConfig))
    tree = {"student": {"w": np.ones(2, np.float32)}, "aux": {"w": np.zeros(2, np.float32)}}
    hashes = {"phase1_sha256": "cd" * 32, "anchors_sha256": "ef" * 32} if kind == "phase2" else {}
    write_package(path, tree, {"kind": kind, "teacher_sha256": "ab" * 32, **hashes,
                               "payload": {"config": {"seed": config["seed"], "distill": config["distill"]}},
                               "source": {"checkpoint_step": 600}})
    return path


def test_a_phase1_weights_entry_installs_from_the_teacher_and_a_from_entry_starts_there(tmp_path):
    package = _phase1_package(tmp_path / "phase1")
    stages = _stages(TINY, (f"distill.p1={{config: configs/distill/mmd.yaml, weights: {package}}}",
                            "distill.tiny.from=p1"))
    install = stages["distill.p1"]
    context = StageContext(tmp_path, False, {})
    assert install.commands(context)[-1].display() == (
        f"gencast-rmmd weights install {package} --teacher teacher --out students/p1")
    assert install.inputs == ("teacher.run",) and install.outputs["run"].path == "students/p1"
    assert install.settings["weights_sha256"] == json.loads((package / "weights.json").read_text())["params_sha256"]
    assert "train" not in install.settings and install.settings["teacher_sha256"] == "ab" * 32
    assert "--teacher students/p1 " in stages["distill.tiny"].commands(context)[-1].display()
    assert "distill.p1.run" in stages["distill.tiny"].inputs


def test_a_phase2_weights_entry_installs_on_its_phase1_entry_and_a_row_of_its_method_continues_it(tmp_path):
    phase1 = _phase1_package(tmp_path / "phase1")
    phase2 = _phase1_package(tmp_path / "phase2", "configs/distill/tiny.yaml", kind="phase2")
    stages = _stages(TINY, (f"distill.p1={{config: configs/distill/mmd.yaml, weights: {phase1}}}",
                            f"distill.p2={{config: configs/distill/tiny.yaml, weights: {phase2}, from: p1}}",
                            "distill.tiny.from=p2"))
    install = stages["distill.p2"]
    context = StageContext(tmp_path, False, {})
    assert install.commands(context)[-1].display() == (
        f"gencast-rmmd weights install {phase2} --teacher students/p1 --out students/p2")
    assert install.inputs == ("distill.p1.run",)
    assert install.settings["phase1_sha256"] == "cd" * 32 and install.settings["anchors_sha256"] == "ef" * 32
    assert "phase1_sha256" not in stages["distill.p1"].settings    # a phase-1 install's identity is as before
    assert "--teacher students/p2 " in stages["distill.tiny"].commands(context)[-1].display()
    assert "distill.p2.run" in stages["distill.tiny"].inputs


@pytest.mark.parametrize("entry, phrase", [
    ("{config: configs/distill/tiny.yaml, weights: PKG}", "distill.p1.weights installs a rmmd student on the "
                                                          "phase-1 run it was distilled from; name that entry"),
    ("{config: configs/distill/mmd.yaml, weights: PKG, from: tiny}", "remove distill.p1.from"),
    ("{config: configs/distill/mmd_tuned.yaml, weights: PKG}", "distill.p1: the config's distill."),
    ("{config: configs/distill/mmd.yaml, weights: PKG, grid: {train.learning_rate: [1.0e-4, 1.0e-3]}}",
     "grid would have no effect"),
    ("{config: configs/distill/mmd.yaml, weights: PKG, overrides: {train: {steps: 5}}}",
     "overrides.train would have no effect"),
    ("{config: configs/distill/mmd.yaml, weights: gencast_rmmd/teacher/pretrained/demo}",
     "is a teacher package; distill.p1 takes a phase1 package"),
])
def test_bad_phase1_weights_entries_are_one_line_errors(run_cli, tmp_path, entry, phrase):
    package = _phase1_package(tmp_path / "phase1")
    result = run_cli("pipeline", "run", TINY, "--workdir", tmp_path / "w", "--set",
                     f"distill.p1={entry.replace('PKG', str(package))}")
    assert result.code == 2 and phrase in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_forecast_format_zarr_makes_every_forecast_stage_write_and_read_a_zarr_store(tmp_path):
    """`forecast.format: zarr`: each forecast command gets `--out LABEL.zarr` and `evaluate` reads it; the
    NetCDF default keeps the stages' identities (no `format` setting)."""
    netcdf, zarr = _stages(), _stages(overrides=("forecast.format=zarr",))
    (tmp_path / "forecasts").mkdir()
    (tmp_path / "forecasts" / "inits.json").write_text(json.dumps({"inits": ["2001-01-08T00:00:00"]}))
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "inits.json").write_text(json.dumps({"inits": ["2001-01-05T00:00:00"]}))
    (tmp_path / "selection").mkdir()
    (tmp_path / "selection" / "mmd.json").write_text(json.dumps({"chosen": {"index": 0}}))
    context = StageContext(tmp_path, False, {})
    forecast_stages = [name for name in zarr if name.startswith(("forecast.", "validation.forecast."))
                       and not name.endswith(".inits")]
    assert {"forecast.teacher", "forecast.persistence", "validation.forecast.teacher"} <= set(forecast_stages)
    for name in forecast_stages:
        output = zarr[name].outputs["forecast"].path
        assert output.endswith(".zarr") and output == netcdf[name].outputs["forecast"].path[:-3] + ".zarr"
        assert f"-out {output}" in zarr[name].commands(context)[-1].display()   # --out, --reference-out
        assert zarr[name].settings["format"] == "zarr" and "format" not in netcdf[name].settings
    assert "--forecast forecasts/teacher.zarr " in zarr["evaluate.teacher"].commands(context)[-1].display()
    assert "--forecast forecasts/teacher.nc " in netcdf["evaluate.teacher"].commands(context)[-1].display()
    # `forecast.jobs`: every model's forecast runs in N processes; the file is the same, so no identity changes.
    jobs = _stages(overrides=("forecast.jobs=3",))
    models = [name for name in forecast_stages if netcdf[name].commands(context)[-1].args[0] == "forecast"]
    assert {"forecast.teacher", "validation.forecast.teacher"} <= set(models)
    for name in models:
        assert "--jobs 3 " in jobs[name].commands(context)[-1].display()
        assert "--jobs" not in netcdf[name].commands(context)[-1].display()
        assert jobs[name].settings == netcdf[name].settings


BASE_ENTRIES = (
    # Follows mmd_2step's config (itself mmd's choice, tiny_select.yaml) with a grid of its own over the key
    # that mmd's grid chooses: its values win.
    "distill.mmd_2step_lr={base: mmd_2step, overrides: {distill: {student: {eta: 1.0}}}, "
    "grid: {train.learning_rate: [3.0e-5, 3.0e-4]}, seeds: [2]}",
    # rmmd has no grid: its resolved config is known before any stage runs.
    "distill.rmmd_short={base: rmmd, from: mmd, overrides: {train: {steps: 3}}, seeds: [4]}",
    # `from:` an mmd entry defined with `base:`.
    "distill.rmmd_2step={base: rmmd, from: mmd_2step, overrides: {distill: {student: {steps: 2}}}}",
)


def _write_choices(workdir: Path, chosen: dict[str, int]) -> StageContext:
    """Fake `selection/NAME.json` files (NAME -> chosen index); a context whose commands read them."""
    (workdir / "selection").mkdir(exist_ok=True)
    for name, index in chosen.items():
        (workdir / "selection" / f"{name}.json").write_text(json.dumps({"chosen": {"index": index}}))
    return StageContext(workdir, False, {})


def test_a_base_entry_trains_its_bases_chosen_config_with_its_overrides(tmp_path):
    """`base: OTHER` trains `--config selection/OTHER.yaml --set ...` after select.OTHER, whose choice it reads."""
    stages = _stages(overrides=BASE_ENTRIES)
    names = list(stages)
    assert names.index("select.mmd") < names.index("distill.mmd_2step") < names.index("distill.mmd_2step_lr.c0")
    assert names.index("select.mmd_2step_lr") < names.index("distill.mmd_2step_lr_seed2")
    assert names.index("distill.mmd_2step") < names.index("distill.rmmd_2step")
    context = _write_choices(tmp_path, {"mmd": 1, "mmd_2step_lr": 0})

    def command(name: str) -> str:
        return stages[name].commands(context)[-1].display()

    data = {"data.train", "data.validation"}
    # mmd_2step (tiny_select.yaml): mmd's chosen config with its override; the choice is an input.
    assert "distill --config selection/mmd.yaml --set distill.student.steps=2 --teacher teacher " in \
        command("distill.mmd_2step")
    assert set(stages["distill.mmd_2step"].inputs) == {"teacher.run", "select.mmd.config"} | data
    assert stages["distill.mmd_2step"].settings == {"config": "selection/mmd.yaml",
                                                    "distill": {"student": {"steps": 2}}}
    # On mmd_2step, which has no grid: still mmd's choice, both entries' overrides, then the candidate's value.
    assert ("distill --config selection/mmd.yaml --set distill.student.steps=2 --set distill.student.eta=1.0 "
            "--set train.learning_rate=0.0003 --teacher teacher ") in command("distill.mmd_2step_lr.c1")
    assert stages["distill.mmd_2step_lr.c1"].settings["train"] == {"learning_rate": 0.0003}
    assert "select.mmd.config" in stages["distill.mmd_2step_lr.c0"].inputs
    # Its selection writes that file with those overrides and the chosen value; its seed trains the selection.
    assert "select.mmd.config" in stages["select.mmd_2step_lr"].inputs
    assert ("--base selection/mmd.yaml --set distill.student.steps=2 --set distill.student.eta=1.0 "
            "--out selection/mmd_2step_lr.json --config-out selection/mmd_2step_lr.yaml") in \
        command("select.mmd_2step_lr")
    assert "distill --config selection/mmd_2step_lr.yaml --set seed=2 --teacher teacher " in \
        command("distill.mmd_2step_lr_seed2")
    assert {"select.mmd_2step_lr.config", "distill.mmd_2step_lr.c0.run"} <= set(stages["forecast.mmd_2step_lr"].inputs)
    # A base known before any stage runs: its resolved config file; the exact config is the identity.
    chosen_mmd = {"select.mmd.config", "distill.mmd.c0.run", "distill.mmd.c1.run"}
    assert "distill --config configs/distill.rmmd.yaml --set train.steps=3 --teacher students/mmd/c1 " in \
        command("distill.rmmd_short")
    assert "distill --config configs/distill.rmmd.yaml --set train.steps=3 --set seed=4 " in \
        command("distill.rmmd_short_seed4")
    assert set(stages["distill.rmmd_short"].inputs) == chosen_mmd | data
    rmmd, short = stages["distill.rmmd"].settings, stages["distill.rmmd_short"].settings
    assert short == {**rmmd, "train": {**rmmd["train"], "steps": 3}}
    # From an mmd entry defined with base: its run is the teacher.
    assert "distill --config configs/distill.rmmd.yaml --set distill.student.steps=2 --teacher students/mmd_2step " \
        in command("distill.rmmd_2step")
    assert set(stages["distill.rmmd_2step"].inputs) == {"distill.mmd_2step.run"} | data


def test_a_base_entry_that_follows_a_choice_has_pre_selection_views_in_configs():
    """DIR/configs/ holds, for an entry that follows a choice, its config with the config file's chosen values."""
    resolved = resolve(load_pipeline_config(SELECT, list(BASE_ENTRIES)), SELECT)
    files, notes = resolved.files(), resolved.view_notes()
    assert set(notes) == {"distill.mmd_2step.yaml", "distill.mmd_2step_lr.c0.yaml", "distill.mmd_2step_lr.c1.yaml"}
    assert notes["distill.mmd_2step.yaml"].startswith(
        "# Pre-selection view: distill.mmd_2step trains selection/mmd.yaml (chosen by select.mmd)")
    view = files["distill.mmd_2step.yaml"]
    assert view["distill"]["method"] == "mmd" and view["distill"]["student"]["steps"] == 2
    assert view["train"]["learning_rate"] == 1e-4                   # the file's value where select.mmd chooses
    assert files["distill.mmd_2step_lr.c1.yaml"]["train"]["learning_rate"] == 3e-4
    assert files["distill.rmmd_short_seed4.yaml"]["seed"] == 4       # exact: rmmd's config is known
    assert "distill.mmd_2step_lr_seed2.yaml" not in files            # trains selection/mmd_2step_lr.yaml


def test_a_base_entry_retrains_when_its_bases_choice_or_its_overrides_change(tmp_path):
    from pipelines.runner import PipelineRunner

    stages = _stages()
    stage = stages["distill.mmd_2step"]
    manifest = Manifest.load(tmp_path)
    for reference in stage.inputs:
        upstream, output = reference.rsplit(".", 1)
        outputs = manifest.stage(upstream).setdefault("outputs", {})
        outputs[output] = {"digest": f"{reference} digest"}
        manifest.update_stage(upstream, state="done", outputs=outputs)
    runner = PipelineRunner(tmp_path, list(stages.values()), manifest, load_pipeline_config(SELECT), False, (), print)
    identity = runner.identity(stage)[0]
    assert runner.identity(_stages(overrides=("distill.mmd_2step.overrides.train.progress=true",))
                           ["distill.mmd_2step"])[0] == identity        # progress bars change no model
    assert runner.identity(_stages(overrides=("distill.mmd_2step.overrides.distill.student.steps=3",))
                           ["distill.mmd_2step"])[0] != identity
    manifest.stages["select.mmd"]["outputs"]["config"]["digest"] = "the config of another choice"
    assert runner.identity(stage)[0] != identity


def test_choices_leave_the_identity_of_what_they_do_not_change():
    """tiny_select reuses tiny's teacher and test inits; an entry without a grid keeps its stage identity."""
    tiny, select = _stages(TINY), _stages()
    for name in ("data", "stats", "teacher", "forecast.inits", "forecast.teacher", "forecast.persistence"):
        assert (tiny[name].settings, set(tiny[name].inputs)) == (select[name].settings, set(select[name].inputs))
    with_validation = _stages(TINY, ("validation.inits.count=1",))
    assert "validation.forecast.tiny" in with_validation and "select.tiny" not in with_validation
    for name in ("distill.tiny", "forecast.tiny", "speed", "scorecard"):
        assert (tiny[name].settings, tiny[name].inputs) == (with_validation[name].settings,
                                                            with_validation[name].inputs), name
    assert "spacing" not in tiny["forecast.inits"].settings
    assert _stages(TINY, ("forecast.inits.spacing=even",))["forecast.inits"].settings["spacing"] == "even"


def test_evenly_spaced_inits_span_the_split():
    times = pd.date_range("2001-01-01", periods=40, freq="12h")
    split = (times[10], times[39])
    first = choose_inits(times, split, STEP, 2, 2, 12, 3, [])
    assert first == list(times[10:13])
    even = choose_inits(times, split, STEP, 2, 2, 12, 3, [], spacing="even")
    assert even == [times[10], times[24], times[37]]          # qualifying inits are times[10..37]
    spaced = choose_inits(times, split, STEP, 2, 2, 48, 2, [], spacing="even")   # candidates 4 steps apart
    assert spaced == [times[10], times[34]]
    assert choose_inits(times, split, STEP, 2, 2, 12, 100, [], spacing="even") == list(times[10:38])
    with pytest.raises(UserInputError, match="the validation split .* holds no init"):
        choose_inits(times, split, STEP, 2, 40, 12, 1, [], spacing="even", split="validation")


def _tables(*means: float) -> dict[str, np.ndarray]:
    """A per-init table: two targets x [3 inits, 2 leads], CRPS `mean` per target (inits vary around it)."""
    spread = np.array([[0.9, 1.0], [1.0, 1.1], [1.1, 0.9]])
    return {f"target{k}": mean * spread for k, mean in enumerate(means)}


def test_selection_chooses_the_lowest_change_and_never_a_diverged_run():
    baseline = _tables(1.0, 2.0)
    scores = score_candidates([_tables(1.1, 2.2), _tables(0.95, 1.9), _tables(0.9, 1.9), _tables(0.9, 1.9)],
                              baseline)
    assert [round(score.crps_change_pct, 6) for score in scores] == [10.0, -5.0, -7.5, -7.5]
    assert [score.win_rate for score in scores] == [0.0, 1.0, 1.0, 1.0]
    assert chosen_index(scores) == 2              # the lowest change; of the tied 2 and 3 the lower index
    assert chosen_index([CandidateScore(float("nan"), 0.0), CandidateScore(3.0, 0.0)]) == 1
    with pytest.raises(UserInputError, match="no candidate has a finite"):
        chosen_index([CandidateScore(float("nan"), 0.0)])
    with pytest.raises(UserInputError, match="candidate 0: its validation forecast does not hold"):
        score_candidates([{"target0": np.ones((2, 2)), "target1": np.ones((3, 2))}], baseline)


@pytest.fixture
def two_candidates(tmp_path, monkeypatch):
    """In tmp_path: validation forecasts a.nc (worse than the teacher's) and b.nc (better) of the candidates
    whose configs are a.yaml and b.yaml, with learning rates RATES, and inits.json.

    It patches `evaluation.compare.crps_per_init` and `data.stores.open_dataset`: a module that binds either
    name at import (`evaluation.by_lead`, `pipelines.report`) must be imported before, never inside a test
    that uses this fixture, or it keeps the patch for the rest of the session."""
    import evaluation.compare
    import gencast_rmmd.data.stores

    tables = {"teacher.nc": _tables(1.0, 2.0), "a.nc": _tables(1.2, 2.0), "b.nc": _tables(0.9, 1.9)}
    monkeypatch.setattr(evaluation.compare, "crps_per_init", lambda path, truth, region: tables[path])
    monkeypatch.setattr(gencast_rmmd.data.stores, "open_dataset", lambda path: None)
    monkeypatch.chdir(tmp_path)
    for name, rate in zip("ab", RATES):
        Path(f"{name}.yaml").write_text(yaml.safe_dump({"seed": 0, "train": {"learning_rate": rate, "steps": 2}}))
    Path("inits.json").write_text(json.dumps({"inits": ["2001-01-06T00:00:00"]}))
    return tmp_path


RATES = (1e-4, 3e-5)


def test_select_writes_the_choice_and_the_full_chosen_config(two_candidates):
    selection = select("mmd", ["train.learning_rate"], ["a.nc", "b.nc"], ["a.yaml", "b.yaml"], "teacher.nc",
                       "store.zarr", "inits.json", "global", Path("selection/mmd.json"), Path("selection/mmd.yaml"))
    written = json.loads(Path("selection/mmd.json").read_text())
    assert written == json.loads(json.dumps(selection))
    assert written["chosen"]["index"] == 1 and written["chosen"]["values"] == {"train.learning_rate": 3e-5}
    assert [entry["values"] for entry in written["candidates"]] == [{"train.learning_rate": 1e-4},
                                                                     {"train.learning_rate": 3e-5}]
    assert written["candidates"][0]["crps_change_pct"] == pytest.approx(10.0)
    assert written["validation_inits"] == ["2001-01-06T00:00:00"] and written["region"] == "global"
    assert Path("selection/mmd.yaml").read_text() == Path("b.yaml").read_text()


def test_select_best_ranks_the_rows_chosen_runs_and_names_the_best(two_candidates):
    ranking = select_best("strongest", ["crps_only", "draft"], ["a.nc", "b.nc"], "teacher.nc", "store.zarr",
                          "inits.json", "global", Path("selection/strongest.json"))
    assert json.loads(Path("selection/strongest.json").read_text()) == json.loads(json.dumps(ranking))
    assert [entry["row"] for entry in ranking["rows"]] == ["crps_only", "draft"]
    assert ranking["chosen"]["row"] == "draft" and ranking["chosen"]["forecast"] == "b.nc"
    assert ranking["rows"][0]["crps_change_pct"] == pytest.approx(10.0) and "row in `among` order" in \
        ranking["criterion"]
    # Ties go to the row listed first.
    tied = select_best("strongest", ["draft", "crps_only"], ["b.nc", "b.nc"], "teacher.nc", "store.zarr",
                       "inits.json", "global", Path("selection/tied.json"))
    assert tied["chosen"]["row"] == "draft"


def test_select_of_a_base_row_writes_its_base_with_the_chosen_values(two_candidates):
    """a.yaml and b.yaml are pre-selection views: the chosen config is the base's file, overrides, values."""
    from gencast_rmmd.config import config_to_dict
    from gencast_rmmd.distill.config import load_distill_config

    chosen_before = load_distill_config(REPO / "configs" / "distill" / "tiny.yaml",
                                        ["distill.method=mmd", "train.learning_rate=1.0e-3"])
    Path("selection").mkdir()
    Path("selection/mmd.yaml").write_text(yaml.safe_dump(config_to_dict(chosen_before), sort_keys=False))
    select("mmd_lr", ["train.learning_rate"], ["a.nc", "b.nc"], ["a.yaml", "b.yaml"], "teacher.nc", "store.zarr",
           "inits.json", "global", Path("selection/mmd_lr.json"), Path("selection/mmd_lr.yaml"),
           base="selection/mmd.yaml", base_overrides=["distill.student.steps=2"])
    chosen = yaml.safe_load(Path("selection/mmd_lr.yaml").read_text())
    assert chosen["train"]["learning_rate"] == 3e-5 and isinstance(chosen["train"]["learning_rate"], float)
    assert chosen["distill"]["student"]["steps"] == 2 and chosen["distill"]["method"] == "mmd"
    assert chosen == config_to_dict(chosen_before.model_validate(chosen))       # a full, valid distill config
    written = json.loads(Path("selection/mmd_lr.json").read_text())
    assert written["base"] == {"config": "selection/mmd.yaml", "overrides": ["distill.student.steps=2"]}
    assert ("<code>selection/mmd.yaml</code> (chosen earlier) with distill.student.steps=2 and their values"
            in _selection_section(two_candidates))


def test_a_config_output_is_digested_without_where_it_runs(tmp_path):
    content = {"seed": 0, "train": {"steps": 2, "progress": False}, "distributed": {"num_processes": None}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(content))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**content, "train": {"steps": 2, "progress": True},
                                                     "distributed": {"num_processes": 4}}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**content, "seed": 1}))
    a, b, c = (output_record("config", tmp_path / f"{name}.yaml")["digest"] for name in "abc")
    assert a == b != c


def test_git_commit_is_read_in_a_clone_and_in_a_worktree_on_a_branch_or_detached(tmp_path):
    """The manifest's commit: `.git` is a directory in a clone and a `gitdir:` file in a worktree."""
    import subprocess

    from pipelines.manifest import git_commit

    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    (tmp_path / "repo").mkdir()
    git("init", "-q", "-b", "main")
    (tmp_path / "repo" / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    (tmp_path / "repo" / "a.txt").write_text("b")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "side"), first)
    git("worktree", "add", "-q", "--detach", str(tmp_path / "detached"), first)
    git("pack-refs", "--all")                      # branch refs now only in packed-refs
    assert git_commit(tmp_path / "repo") == git("rev-parse", "HEAD") != first
    assert git_commit(tmp_path / "side") == first == git_commit(tmp_path / "detached")
    assert git_commit(tmp_path / "nowhere") is None


def test_landing_page_sentences_name_leads_as_ranges_and_verdicts_from_intervals():
    """The headline wording: consecutive leads as ranges, the interval deciding better / level / worse."""
    import numpy as np

    from evaluation.by_lead import LeadChanges, Sample
    from pipelines.report import climatology_sentence, lead_name, lead_ranges, teacher_sentence

    hours = [12, 24, 36, 48, 60]
    assert [lead_name(h) for h in (12, 24, 36, 120)] == ["12 h", "1 d", "1.5 d", "5 d"]
    assert lead_ranges([0, 1, 2, 4], hours) == "12 h–1.5 d, 2.5 d" and lead_ranges([3], hours) == "2 d"
    mixed = LeadChanges("teacher", "climatology", [-60.0, -30.0, -5.0, 1.0, 8.0],
                        [[-65, -55], [-35, -25], [-9, -1], [-2, 4], [3, 12]], [9, 9, 7, 4, 1], 9, -17.2, None, 30)
    assert climatology_sentence(mixed, hours) == (
        "teacher against climatology: better at 12 h–1.5 d; level (interval holds 0) at 2 d; worse at 2.5 d "
        "(fair CRPS -60 % at 12 h to +8 % at 2.5 d)")
    everywhere = LeadChanges("rmmd", "climatology", [-60.0, -5.0], [[-65, -55], [-9, -1]], [9, 8], 9, -32.5,
                             [-35, -30], 17)
    assert climatology_sentence(everywhere, [12, 24]).startswith("rmmd beats climatology at every lead, 12 h to 1 d")
    sample = Sample(np.array(["2000-01-01T00"], dtype="datetime64[ns]"), [12, 24], ["t@500"], {}, 100, None,
                    "1 init(s): the bootstrap over inits needs at least 2")
    student = LeadChanges("rmmd", "teacher", [-1.0, 3.0], None, [1, 0], 1, 1.0, None, 1)
    speed = {"models": {"teacher": {"seconds_per_step": 2.0, "nfe_per_step": 39},
                        "rmmd": {"seconds_per_step": 0.5, "nfe_per_step": 8}}}
    assert teacher_sentence(student, sample, speed) == (
        "rmmd: fair CRPS +1.00 % against the teacher (no interval: 1 init(s): the bootstrap over inits needs at "
        "least 2), lower on 1 of 2 targets (variable × level × lead, 50.0 %); 4.00x the teacher's speed per 12 h "
        "step (8 denoiser calls against 39)")


def test_the_run_summary_quotes_the_landing_page_headlines(tmp_path):
    """`run_summary.json` holds what the run cost and, once the scorecard stage wrote them, what it showed."""
    from pipelines.run_summary import HEADLINES_FILE, write_run_summary

    content = {"pipeline": {"name": "x"}, "environment": {}, "stages": {},
               "runs": [{"started": "2026-01-01T00:00:00", "ended": "2026-01-01T00:01:00", "result": "ok",
                         "actions": {}}]}
    assert "headlines" not in write_run_summary(tmp_path, content, 60.0, [])
    lines = ["rmmd: fair CRPS +1.61 % against the teacher", "teacher beats climatology at every lead"]
    (tmp_path / HEADLINES_FILE).parent.mkdir()
    (tmp_path / HEADLINES_FILE).write_text(json.dumps({"headlines": lines}))
    summary = write_run_summary(tmp_path, content, 60.0, [])
    assert summary["headlines"] == lines == json.loads((tmp_path / "run_summary.json").read_text())["headlines"]


def test_order_rows_scores_each_row_as_soon_as_its_run_is_chosen():
    """`runtime.order: rows` moves test forecasts and scoring up and the extra seeds (with what reads them) after
    every other stage; the stages, their identities and the order of everything else are unchanged, and every
    stage still follows each stage it reads."""
    from pipelines.stages import producer

    grouped, by_rows = _stages(), _stages(overrides=("runtime.order=rows",))
    assert set(grouped) == set(by_rows)
    assert all(grouped[name].settings == by_rows[name].settings and grouped[name].inputs == by_rows[name].inputs
               for name in grouped)
    order = list(by_rows)
    for position, name in enumerate(order):
        assert {producer(reference) for reference in by_rows[name].inputs} <= set(order[:position]), name
    seeds = [name for name in order if by_rows[name].extra_seed]
    assert seeds == ["distill.rmmd_seed1", "distill.family_best_seed1"]
    tail = order[order.index(seeds[0]):]          # the seeds, their forecasts and scores, the scorecard
    assert tail == ["distill.rmmd_seed1", "forecast.rmmd_seed1", "evaluate.rmmd_seed1",
                    "validation.forecast.rmmd_seed1", "distill.family_best_seed1", "forecast.family_best_seed1",
                    "evaluate.family_best_seed1", "validation.forecast.family_best_seed1", "scorecard"]
    assert [name for name in order if by_rows[name].group not in (5, 6) and name not in tail] == \
        [name for name in grouped if grouped[name].group not in (5, 6) and name not in tail]
    assert order[order.index("select.mmd"):order.index("distill.rmmd") + 3] == [
        "select.mmd", "forecast.mmd", "evaluate.mmd", "distill.rmmd", "forecast.rmmd", "evaluate.rmmd"]
    assert order.index("evaluate.teacher") < order.index("validation.inits")
    assert order.index("select.family_best") < order.index("speed") < order.index(seeds[0])
