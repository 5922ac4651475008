"""The tiny pipeline end to end on a WB2-layout store, reruns, resume after kill -9 and the lock.

One uninterrupted run (`tiny_run`, training on 2 forced CPU devices, scoring
through a dask.distributed LocalCluster) is the reference; the other tests
work on copies of its work directory so that only the stages under test run.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from pipeline_helpers import TINY, manifest, pipeline, run_pipeline

# Stages whose outputs are deterministic (speed and scorecard hold wall times).
DETERMINISTIC = ("data", "stats", "teacher", "distill.tiny", "forecast.inits", "forecast.teacher", "forecast.tiny",
                 "forecast.persistence", "evaluate.teacher", "evaluate.tiny", "evaluate.persistence")
DISTILL_AND_AFTER = ("distill.tiny", "forecast.tiny", "evaluate.tiny", "speed", "scorecard")

pytestmark = pytest.mark.slow


def digests(workdir: Path) -> dict[str, dict[str, str]]:
    stages = manifest(workdir)["stages"]
    return {name: {key: output["digest"] for key, output in stages[name]["outputs"].items()} for name in DETERMINISTIC}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, pipeline_args, dask_scheduler):
    workdir = tmp_path_factory.mktemp("pipelines") / "tiny"
    code, out, err, seconds = run_pipeline("--workdir", workdir, *pipeline_args, "--progress-every", "1")
    assert code == 0, err[-3000:]
    return workdir, out, err, seconds, dask_scheduler.scheduler.transition_counter


def test_tiny_pipeline_end_to_end(tiny_run):
    """Every stage runs and records its state, hashes and log; the run ends printing the scorecard page."""
    workdir, out, err, seconds, transitions = tiny_run
    # No wall-clock bound here (speed is for benchmarks, not tests): ~3 min on 2 quiet cores, but
    # 372 s on a machine 1.65x slower; the stage durations are in the manifest.
    scorecard = Path(out.strip().splitlines()[-1])
    assert scorecard == workdir / "scorecard" / "index.html" and scorecard.is_file()
    page = scorecard.read_text()
    assert "tiny: fair CRPS" in page and "against the teacher" in page
    assert "wall time per 12 h step (ms)" in page               # the speed table
    for card in ("students_vs_teacher", "vs_climatology", "vs_persistence"):
        assert (workdir / "scorecard" / card / "scorecard.png").is_file()
    content = manifest(workdir)
    assert {record["state"] for record in content["stages"].values()} == {"done", "not_applicable"}
    assert content["stages"]["forecast.reference"]["state"] == "not_applicable"   # not a simulated store
    assert content["environment"]["packages"]["jax"] and content["environment"]["python"]
    for name, record in content["stages"].items():
        if record["state"] == "done":
            assert record["identity"] and record["config_sha256"] and record["seconds"] >= 0, name
            assert (workdir / record["log"]).is_file() and record["outputs"], name
    assert content["stages"]["teacher"]["outputs"]["run"]["step"] == 20
    assert content["stages"]["distill.tiny"]["inputs"]["teacher.run"] == \
        content["stages"]["teacher"]["outputs"]["run"]["digest"]
    # Training saw 2 devices; scoring ran on the dask cluster.
    assert "2 cpu device(s)" in (workdir / "logs" / "teacher.log").read_text()
    assert "--dask-scheduler tcp://" in (workdir / "logs" / "evaluate.teacher.log").read_text()
    assert transitions > 0
    assert set(json.loads((workdir / "scorecard" / "timing.json").read_text())) == {"teacher", "tiny"}


def test_the_landing_page_judges_against_climatology_with_units_and_shows_the_manifest_states(tiny_run):
    """The page a forecaster opens first: climatology named in the headlines and the by-lead table, units on
    every table, the sample (inits, members, why there is no interval with 2 inits 12 h apart and a 24 h
    lead), and a stage table whose states are the manifest's after the run ended (the scorecard stage wrote
    the page while it was running); the recorded digest leaves that refreshed section out."""
    from pipelines.report_run import BEGIN, END, page_digest
    from pipelines.states import shown

    workdir = tiny_run[0]
    page = (workdir / "scorecard" / "index.html").read_text()
    headlines = re.findall(r"<li><b>(.*?)</b></li>", page)
    assert any(line.startswith("teacher") and "climatology" in line for line in headlines), headlines
    assert any(line.startswith("tiny: fair CRPS") and "against the teacher" in line and "no interval" in line
               for line in headlines), headlines
    assert "Fair CRPS change against climatology, by lead (%)" in page and "What you are looking at" in page
    assert "simulated dry atmosphere" not in page                  # a WB2-layout store, not the simulator's
    assert "2 test inits" in page and "no intervals (a block of 1 days is 2 inits" in page
    assert (workdir / "scorecard" / "vs_climatology" / "scorecard.png").is_file()
    for table in re.findall(r"<table.*?</table>", page, re.DOTALL):        # units on every table
        header = re.search(r"<tr>(.*?)</tr>", table).group(1)
        heading = page[:page.index(table)].rsplit("<h2>", 1)[-1]
        assert re.search(r"\((%|ms|s)\)", header + heading.split("</h2>")[0]), header
    section = page[page.index(BEGIN):page.index(END)]
    on_page = dict(re.findall(r"<tr><td>([\w.]+)</td><td>[^<]*</td><td>([\w/ ]+)</td>", section))
    states = {name: shown(record["state"]) for name, record in manifest(workdir)["stages"].items()}
    assert on_page == states and on_page["scorecard"] == "done"
    assert "wall time" in section and "peak memory" in section
    recorded = manifest(workdir)["stages"]["scorecard"]["outputs"]["html"]["digest"]
    assert recorded == page_digest(workdir / "scorecard" / "index.html")


def test_without_a_terminal_the_console_prints_progress_lines_and_each_stage_its_duration(tiny_run):
    """A pipe gets plain lines (no ANSI codes): the running stage's step/total every second, one line per stage."""
    workdir, _, err = tiny_run[:3]
    assert "\x1b" not in err
    lines = err.splitlines()
    # While the teacher trained: its step out of 20 from its progress record, and how long it has run.
    assert any(re.fullmatch(r"\[3/7\] teacher +teacher: step \d+/20, .* elapsed", line) for line in lines)
    stages = manifest(workdir)["stages"]
    for name, record in stages.items():
        if record["state"] == "done":
            done = [line for line in lines if re.match(rf"\[\d/7\] {re.escape(name)} +done in ", line)]
            assert len(done) == 1 and "peak memory" in done[0], name
    finished = {name: next(line for line in lines if re.match(rf"\[\d/7\] {re.escape(name)} +done in", line))
                for name in ("teacher", "distill.tiny", "forecast.teacher")}
    assert "teacher: step 20/20" in finished["teacher"]
    assert "students/tiny: step 2/2" in finished["distill.tiny"]                # phase 2, after phase 1's run
    assert "forecasts/teacher.nc: step 2/2 of 2 init(s) x 2 members" in finished["forecast.teacher"]
    teacher = json.loads((workdir / "logs" / "teacher.progress.json").read_text())
    assert (teacher["label"], teacher["done"], teacher["total"], teacher["start"]) == ("teacher", 20, 20, 0)


def test_the_run_summary_holds_wall_time_peak_memory_and_the_machine(tiny_run):
    """`run_summary.json`: figures a README can quote, consistent with each other and with the manifest."""
    workdir, seconds = tiny_run[0], tiny_run[3]
    summary = json.loads((workdir / "run_summary.json").read_text())
    content = manifest(workdir)
    assert summary["result"] == "ok" and summary["pipeline"] == "tiny"
    assert summary["git_commit"] == content["environment"]["git_commit"]
    assert summary["started"] <= summary["ended"] and 0 < summary["wall_seconds"] <= seconds
    assert content["runs"][-1]["wall_seconds"] == summary["wall_seconds"]
    memory = psutil.virtual_memory().total
    assert 100e6 < summary["peak_rss_bytes"] < memory
    assert [stage["name"] for stage in summary["stages"]] == [name for name, _ in
                                                              sorted(content["stages"].items(),
                                                                     key=lambda item: item[1]["order"])]
    ran = [stage for stage in summary["stages"] if stage["action"] == "ran"]
    assert len(ran) == sum(record["state"] == "done" for record in content["stages"].values())
    for stage in ran:
        record = content["stages"][stage["name"]]
        assert stage["seconds"] == record["seconds"] and stage["peak_rss_bytes"] == record["peak_rss_bytes"]
        assert 20e6 < stage["peak_rss_bytes"] <= summary["peak_rss_bytes"], stage
        assert 0 < stage["cpu_seconds"], stage
    assert sum(stage["seconds"] for stage in ran) <= summary["wall_seconds"]
    assert max(stage["peak_rss_bytes"] for stage in ran) > 300e6                # JAX training is not small
    machine = summary["machine"]
    assert machine["host"] == socket.gethostname() and machine["memory_bytes"] == memory
    page = (workdir / "scorecard" / "index.html").read_text()                # what the run showed, quoted
    assert summary["headlines"] == [html.unescape(line) for line in re.findall(r"<li><b>(.*?)</b></li>", page)]
    assert 1 <= machine["usable_cpus"] <= machine["cpu_count"] and machine["cpu_model"]


def test_status_prints_the_stage_table(tiny_run, run_cli):
    workdir = tiny_run[0]
    result = run_cli("pipeline", "status", workdir)
    assert result.code == 0
    table = result.out
    for stage in ("data", "stats", "teacher", "distill.tiny", "forecast.teacher", "evaluate.tiny", "scorecard"):
        assert stage in table
    assert table.index("data") < table.index("teacher") < table.index("scorecard")
    assert run_cli("pipeline", "status", workdir.parent / "nothing").code == 2


def test_plan_says_what_a_run_would_do_without_doing_it(tiny_run, pipeline_args, run_cli):
    """`pipeline plan`: every stage skipped after the run; a changed distiller setting reruns that stage, its
    dependents wait on its output, the rest skip; the work directory is not touched."""
    workdir = tiny_run[0]
    before = (workdir / "manifest.json").read_bytes()
    same = run_cli("pipeline", "plan", TINY, "--workdir", workdir, *pipeline_args)
    assert same.code == 0, same.err
    verdicts = dict(re.findall(r"^(\S+)\s+(skip|resume|run|after|not applicable)\s", same.out, re.MULTILINE))
    assert set(verdicts.values()) == {"skip", "not applicable"} and verdicts["scorecard"] == "skip"
    changed = run_cli("pipeline", "plan", TINY, "--workdir", workdir, *pipeline_args,
                      "--set", "distill.tiny.overrides.train.steps=3")
    assert changed.code == 0, changed.err
    lines = {name: verdict for name, verdict, _ in
             re.findall(r"^(\S+)\s+(\w[\w ]*?)\s{2,}(.*)$", changed.out, re.MULTILINE)}
    assert lines["distill.tiny"] == "run" and "its settings changed" in changed.out
    assert lines["forecast.tiny"] == "after" and lines["scorecard"] == "after"
    assert lines["teacher"] == lines["forecast.teacher"] == "skip"
    assert (workdir / "manifest.json").read_bytes() == before and not (workdir / ".lock").exists()


def test_rerun_with_nothing_changed_skips_every_stage(tiny_run, pipeline_args):
    workdir = tiny_run[0]
    code, out, err, seconds = run_pipeline("--workdir", workdir, *pipeline_args)
    assert code == 0, err[-2000:]
    actions = manifest(workdir)["runs"][-1]["actions"]
    assert set(actions.values()) == {"skipped", "not_applicable"}
    assert seconds < 30
    assert Path(out.strip().splitlines()[-1]).is_file()
    # The summary of a run that skipped everything keeps each stage's figures from the run that made it.
    summary = json.loads((workdir / "run_summary.json").read_text())
    stages = manifest(workdir)["stages"]
    assert summary["wall_seconds"] < 30
    for stage in summary["stages"]:
        if stage["action"] == "skipped":
            assert stage["seconds"] == stages[stage["name"]]["seconds"] and stage["peak_rss_bytes"] > 0


def test_changed_distill_config_reruns_only_distill_and_what_follows(tiny_run, pipeline_args, tmp_path):
    workdir = tmp_path / "changed"
    shutil.copytree(tiny_run[0], workdir)
    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args,
                                   "--set", "distill.tiny.overrides.seed=1")
    assert code == 0, err[-2000:]
    actions = manifest(workdir)["runs"][-1]["actions"]
    ran = {name for name, action in actions.items() if action == "ran"}
    assert ran == set(DISTILL_AND_AFTER)
    assert {actions[name] for name in actions if name not in ran} <= {"skipped", "not_applicable"}
    assert digests(workdir)["distill.tiny"] != digests(tiny_run[0])["distill.tiny"]
    assert digests(workdir)["teacher"] == digests(tiny_run[0])["teacher"]


def test_a_shipped_teacher_is_installed_instead_of_trained_and_every_output_after_it_is_the_same(
        tiny_run, pipeline_args, tmp_path):
    """`teacher.weights`: tiny's own teacher, exported, gives bit-identical students, forecasts and scores."""
    import yaml

    workdir, package = tmp_path / "weights", tmp_path / "package"
    shutil.copytree(tiny_run[0], workdir)
    assert subprocess.call([sys.executable, "-m", "gencast_rmmd.cli", "weights", "export", str(workdir / "teacher"),
                            "--out", str(package)], stderr=subprocess.DEVNULL) == 0
    config = yaml.safe_load(TINY.read_text())
    config["teacher"] = {"config": "configs/teacher/tiny.yaml", "weights": str(package)}
    shipped = tmp_path / "tiny_weights.yaml"
    shipped.write_text(yaml.safe_dump(config))
    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, config=shipped)
    assert code == 0, err[-3000:]
    actions = manifest(workdir)["runs"][-1]["actions"]
    assert actions["teacher"] == "ran" and actions["data"] == actions["stats"] == "skipped"
    assert "installed" in (workdir / "logs" / "teacher.log").read_text()
    before, after = digests(tiny_run[0]), digests(workdir)
    assert after["teacher"] != before["teacher"]               # the raw params are now the EMA ones
    for name in DETERMINISTIC:
        if name not in ("data", "stats", "teacher"):
            assert after[name] == before[name], name
    config["teacher"]["overrides"] = {"train": {"steps": 5}}
    shipped.write_text(yaml.safe_dump(config))
    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, config=shipped)
    assert code == 2 and "teacher.overrides.train has no effect with teacher.weights" in err


def _wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_9_then_resume_matches_the_uninterrupted_run_and_the_lock_refuses_a_second_run(
        tiny_run, pipeline_args, tmp_path):
    """kill -9 mid-distill; the lock refused a concurrent run before; --resume finishes from the checkpoint."""
    workdir = tmp_path / "killed"
    shutil.copytree(tiny_run[0], workdir)
    phase1 = workdir / "students" / "tiny" / "phase1" / "checkpoints"
    attempts = manifest(workdir)["stages"]["distill.tiny"]["attempts"]

    def distill_rerunning() -> bool:            # the forced rerun removed the copied run and started again
        record = manifest(workdir)["stages"]["distill.tiny"]
        return record["attempts"] == attempts + 1 and record["state"] == "running"

    def checkpoint_written() -> bool:
        return phase1.is_dir() and any((path / "meta.json").is_file() for path in phase1.iterdir()
                                       if not path.name.startswith("."))

    runner = pipeline("run", TINY, "--workdir", workdir, *pipeline_args, "--force", "distill.tiny")
    _wait_for(distill_rerunning, 120, runner)
    second = pipeline("run", TINY, "--workdir", workdir, *pipeline_args)
    _, second_err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert "locked by a running pipeline" in second_err and f"pid {runner.pid}" in second_err

    _wait_for(checkpoint_written, 180, runner)
    stage_pid = manifest(workdir)["stages"]["distill.tiny"]["pid"]
    os.kill(runner.pid, signal.SIGKILL)
    runner.communicate()
    deadline = time.monotonic() + 10                      # the stage process dies with the runner
    while _alive(stage_pid):
        assert time.monotonic() < deadline, "the distill process outlived the killed runner"
        time.sleep(0.05)
    assert manifest(workdir)["stages"]["distill.tiny"]["state"] == "running"
    assert (workdir / ".lock").exists()

    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args)
    assert code == 2 and "pass --resume" in err
    assert f"taking over the stale lock of pid {runner.pid}" in err

    code, out, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, "--resume")
    assert code == 0, err[-3000:]
    actions = manifest(workdir)["runs"][-1]["actions"]
    assert actions["distill.tiny"] == "resumed"
    assert "--out students/tiny --resume" in (workdir / "logs" / "distill.tiny.log").read_text()
    # The resumed student is bit-identical to the uninterrupted one, so every later stage is unchanged.
    assert digests(workdir)["distill.tiny"] == digests(tiny_run[0])["distill.tiny"]
    assert {name for name, action in actions.items() if action in ("ran", "resumed")} == {"distill.tiny"}
    assert digests(workdir) == digests(tiny_run[0])
    assert not (workdir / ".lock").exists()


GATE_RULES = """
title: tiny gate
candidate: teacher
rules:
  - {name: ssr_finite, kind: within, metric: spread_skill_ratio, low: 0.0, high: 1000.0}
  - {name: trained_within_a_day, kind: at_most, timing: train_s, limit_s: 86400}
"""


def test_a_gate_stage_checks_the_scores_last_and_a_failed_rule_exits_3_after_the_page(tiny_run, pipeline_args,
                                                                                        tmp_path):
    """`gate.rules` adds the stage `gate` (only it runs on a finished work directory); its verdict, the teacher's
    measured training time; a failed required rule exits 3 with the landing page in place; a bad rules file is
    one line, exit 2, before any stage."""
    workdir = tmp_path / "gated"
    shutil.copytree(tiny_run[0], workdir)
    rules = tmp_path / "rules.yaml"
    rules.write_text(GATE_RULES)
    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, "--set", f"gate.rules={rules}")
    assert code == 0, err[-2000:]
    actions = manifest(workdir)["runs"][-1]["actions"]
    assert actions["gate"] == "ran" and {a for name, a in actions.items() if name != "gate"} <= {"skipped",
                                                                                                 "not_applicable"}
    verdict = json.loads((workdir / "gate" / "verdict.json").read_text())
    assert verdict["passed"] and [rule["name"] for rule in verdict["rules"]] == ["ssr_finite", "trained_within_a_day"]
    timings = json.loads((workdir / "gate" / "timings.json").read_text())
    assert timings == {"train_s": manifest(workdir)["stages"]["teacher"]["seconds"]}
    assert (workdir / "gate" / "verdict.md").is_file() and (workdir / "configs" / "gate.yaml").is_file()

    rules.write_text(GATE_RULES + "  - {name: beats_persistence_by_a_million, kind: beats, baseline: persistence, "
                                  "below: 0.000001}\n")
    page = (workdir / "scorecard" / "index.html").read_bytes()
    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, "--set", f"gate.rules={rules}")
    assert code == 3, err[-2000:]
    assert "stage gate failed (exit code 3)" in err and str(workdir / "logs" / "gate.log") in err
    assert not json.loads((workdir / "gate" / "verdict.json").read_text())["passed"]
    assert (workdir / "scorecard" / "index.html").is_file() and manifest(workdir)["stages"]["gate"]["state"] == "failed"
    assert page                                                   # the page the earlier stages wrote stays

    before = (workdir / "manifest.json").read_bytes()
    rules.write_text("title: t\ncandidate: teacher\nrules:\n  - {name: x, kind: better_than, baseline: y}\n")
    code, out, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, "--set", f"gate.rules={rules}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rules" in err, err
    assert (workdir / "manifest.json").read_bytes() == before


def test_a_failing_stage_names_itself_and_its_log(tmp_path, run_cli):
    result = run_cli("pipeline", "run", TINY, "--workdir", tmp_path / "w", "--data", tmp_path / "missing.zarr",
                     "--set", "data.simulate=false")
    assert result.code == 2
    assert "stage data failed (exit code 2)" in result.err and str(tmp_path / "w" / "logs" / "data.log") in result.err
    assert "missing.zarr" in result.err
