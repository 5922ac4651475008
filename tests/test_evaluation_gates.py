"""`gencast-rmmd gate`: quality-gate rules (configs/eval/*.yaml) checked on scores files.

The scores files are synthetic (written by `evaluation.scores_file.write_scores`, as `evaluate` writes
them) with CRPS and spread/skill values chosen so that each rule's verdict and each reported ratio can be
computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from evaluation.gates import check_gate, load_rules, scores_by_label
from evaluation.metrics import METRICS
from evaluation.scores_file import write_scores

REPO = Path(__file__).resolve().parent.parent
TEACHER_GATE = REPO / "configs" / "eval" / "teacher_gate.yaml"
LEADS = pd.to_timedelta([12, 24, 36], unit="h")
LEVELS = np.array([500, 850])
# CRPS per lead of (geopotential 500, 850; temperature 500, 850; 2m_temperature), per label.
TEACHER_CRPS = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
BASELINE_FACTORS = {"persistence": 2.0, "climatology": 1.25, "reference": 0.5}


def write_score_file(path: Path, label: str, crps: np.ndarray, ssr: float | np.ndarray = 1.0) -> Path:
    """A scores file: CRPS `crps` [5 targets, lead] as above, spread/skill `ssr` everywhere (or per lead)."""
    values = np.ones((len(METRICS), 2, len(LEADS), 5))
    values[METRICS.index("crps")] = crps.T[None]
    values[METRICS.index("spread_skill_ratio")] = np.asarray(ssr, dtype=float).reshape(-1, 1) * np.ones((3, 5))
    coords = {"metric": list(METRICS), "region": ["global", "tropics"], "lead_time": LEADS, "level": LEVELS}
    upper = ("metric", "region", "lead_time", "level")
    scores = xr.Dataset(
        {"geopotential": (upper, values[..., 0:2], {"units": "m2 s-2"}),
         "temperature": (upper, values[..., 2:4], {"units": "K"}),
         "2m_temperature": (("metric", "region", "lead_time"), values[..., 4], {"units": "K"})},
        coords=coords, attrs={"label": label, "member_count": 4, "init_count": 3})
    write_scores(scores, path)
    return path


@pytest.fixture
def scores_dir(tmp_path) -> Path:
    """teacher, and persistence / climatology / reference whose CRPS is the teacher's times a factor."""
    directory = tmp_path / "scores"
    directory.mkdir()
    write_score_file(directory / "teacher.nc", "teacher", TEACHER_CRPS, ssr=[1.3, 1.0, 0.8])
    for label, factor in BASELINE_FACTORS.items():
        write_score_file(directory / f"{label}.nc", label, TEACHER_CRPS * factor)
    return directory


@pytest.fixture
def timings(tmp_path) -> Path:
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"train_s": 1500.0, "forecast_jobs": 2, "note": "text is left out"}))
    return path


def _gate(run_cli, tmp_path, *scores, rules=TEACHER_GATE, timings=None, name="gate"):
    out = tmp_path / f"{name}.json"
    result = run_cli("gate", "--rules", rules, *(a for path in scores for a in ("--scores", path)), "--out", out,
                     *(["--timings", timings] if timings else []))
    return result, out


def test_teacher_gate_passes_and_reports_the_hand_computed_ratios(run_cli, tmp_path, scores_dir, timings):
    result, out = _gate(run_cli, tmp_path, scores_dir, timings=timings)
    assert result.code == 0, result.err
    verdict = json.loads(out.read_text())
    assert verdict["passed"] and all(verdict["gates"].values()), verdict["gates"]
    assert verdict["leads_hours"] == [12, 24, 36]
    rules = {rule["name"]: rule for rule in verdict["rules"]}
    np.testing.assert_allclose(rules["mean_beats_persistence"]["rows"]["mean crps ratio teacher / persistence"],
                               [0.5] * 3)
    np.testing.assert_allclose(rules["z500_beats_climatology"]["rows"]["geopotential@500 crps climatology"],
                               [1.25, 2.5, 3.75])
    np.testing.assert_allclose(rules["ssr_within_0.6_1.4"]["rows"]["mean spread_skill_ratio teacher"],
                               [1.3, 1.0, 0.8])
    assert rules["trained_within_30_min"]["value"] == 1500.0
    assert verdict["timings_s"] == {"train_s": 1500.0, "forecast_jobs": 2.0}
    np.testing.assert_allclose(rules["reference_vs_teacher"]["rows"]["mean crps ratio reference / teacher"],
                               [0.5] * 3)
    markdown = out.with_suffix(".md").read_text()
    assert "**PASSED** for `teacher`" in markdown and "- PASS: `t850_beats_climatology`" in markdown
    assert "| mean_beats_climatology | mean crps ratio teacher / climatology | 0.8 | 0.8 | 0.8 |" in markdown


def test_the_mean_ratio_is_the_mean_over_targets_of_each_ratio(tmp_path, scores_dir):
    """One target far worse and four better: the rule averages the ratios (not the CRPS values)."""
    worse = TEACHER_CRPS * 2.0
    worse[4] = TEACHER_CRPS[4] * 2.0 * 3.0      # 2m_temperature: 3x persistence's CRPS
    write_score_file(scores_dir / "teacher.nc", "teacher", worse)
    result = check_gate(load_rules(TEACHER_GATE), scores_by_label([scores_dir]), {"train_s": 10.0})
    rules = {rule.name: rule for rule in result.rules}
    # persistence = 2 x TEACHER_CRPS: ratios 1, 1, 1, 1, 3 -> mean 1.4 (fails); CRPS means would say otherwise
    assert rules["mean_beats_persistence"].rows["mean crps ratio teacher / persistence"] == [1.4] * 3
    assert not rules["mean_beats_persistence"].passed and not rules["z500_beats_persistence"].passed
    assert not result.passed


def test_a_failed_rule_exits_3_and_still_writes_the_verdict(run_cli, tmp_path, scores_dir, timings):
    """z500 worse than both baselines at one lead (the mean ratios still pass), SSR out of range at one lead."""
    crps = TEACHER_CRPS.copy()
    crps[0, 2] = 2.0 * 3.0 * 1.01               # z500 at 36 h: 1 % above persistence's
    write_score_file(scores_dir / "teacher.nc", "teacher", crps, ssr=[1.5, 1.0, 1.0])
    result, out = _gate(run_cli, tmp_path, scores_dir, timings=timings)
    assert result.code == 3, result.err
    gates = json.loads(out.read_text())["gates"]
    assert {name for name, passed in gates.items() if not passed} == {
        "z500_beats_persistence", "z500_beats_climatology", "ssr_within_0.6_1.4"}
    assert "FAIL: z500_beats_persistence" in result.out
    assert "- FAIL: `ssr_within_0.6_1.4`" in out.with_suffix(".md").read_text()


def test_an_untimed_training_fails_rather_than_pass(run_cli, tmp_path, scores_dir):
    result, out = _gate(run_cli, tmp_path, scores_dir)
    assert result.code == 3
    rule = next(rule for rule in json.loads(out.read_text())["rules"] if rule["name"] == "trained_within_30_min")
    assert not rule["passed"] and rule["value"] is None and "not measured" in rule["description"]


def test_a_nan_fails_its_rule_and_a_reported_rule_does_not_decide(tmp_path, scores_dir):
    crps = TEACHER_CRPS.copy()
    crps[3, 1] = np.nan                          # t850 at 24 h
    write_score_file(scores_dir / "teacher.nc", "teacher", crps)
    write_score_file(scores_dir / "reference.nc", "reference", TEACHER_CRPS * 1.5)   # worse than the teacher
    result = check_gate(load_rules(TEACHER_GATE), scores_by_label([scores_dir]), {"train_s": 10.0})
    failed = {rule.name for rule in result.rules if not rule.passed}
    assert failed == {"t850_beats_persistence", "t850_beats_climatology", "mean_beats_persistence",
                      "mean_beats_climatology", "reference_vs_teacher"}
    rules = {rule.name: rule for rule in result.rules}
    assert rules["mean_beats_persistence"].rows["mean crps ratio teacher / persistence"][1] is None
    # with the NaN gone, the reference's failure alone does not fail the gate
    write_score_file(scores_dir / "teacher.nc", "teacher", TEACHER_CRPS)
    result = check_gate(load_rules(TEACHER_GATE), scores_by_label([scores_dir]), {"train_s": 10.0})
    assert result.passed and [rule.name for rule in result.rules if not rule.passed] == ["reference_vs_teacher"]


def test_scores_given_as_files_equal_a_directory(tmp_path, scores_dir):
    files = sorted(scores_dir.glob("*.nc"))
    one = check_gate(load_rules(TEACHER_GATE), scores_by_label(files), {"train_s": 1.0})
    other = check_gate(load_rules(TEACHER_GATE), scores_by_label([scores_dir]), {"train_s": 1.0})
    assert one.as_json() == other.as_json()


@pytest.mark.parametrize("rules_text,phrase", [
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: beats, baseline: persistence, treshold: 1}]",
     "rules.0.beats.treshold: unknown key"),
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: within, metric: crsp, low: 0, high: 1}]",
     "unknown metric 'crsp'"),
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: within, metric: crps, low: 2, high: 1}]",
     "low 2.0 is above high 1.0"),
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: faster, timing: x, limit_s: 1}]",
     "does not match any of the expected tags"),
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: at_most, timing: x, limit_s: 1},\n"
     " {name: a, kind: at_most, timing: y, limit_s: 1}]", "repeated: a"),
    ("title: t\ncandidate: student\nrules: [{name: a, kind: at_most, timing: x, limit_s: 1}]",
     "no scores file labelled 'student'"),
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: beats, baseline: persistence, target: z500}]",
     "rule a: no target 'z500' in the scores"),
    ("title: t\ncandidate: teacher\nrules: [{name: a, kind: beats, baseline: analysis}]",
     "rule a: no scores file labelled 'analysis'"),
    ("- just a list", "expected a mapping"),
])
def test_bad_rules_exit_2_in_one_line_and_write_nothing(run_cli, tmp_path, scores_dir, rules_text, phrase):
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_text)
    result, out = _gate(run_cli, tmp_path, scores_dir, rules=rules)
    assert result.code == 2, (result.code, result.err)
    assert phrase in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_bad_arguments_exit_2_in_one_line(run_cli, tmp_path, scores_dir, timings):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_score_file(tmp_path / "again.nc", "teacher", TEACHER_CRPS)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [((empty,), {}, "holds no .nc scores file"),
             ((scores_dir, tmp_path / "again.nc"), {}, "are both labelled 'teacher'"),
             ((tmp_path / "missing.nc",), {}, "no scores file at"),
             ((scores_dir,), {"timings": tmp_path / "nope.json"}, "--timings"),
             ((scores_dir,), {"timings": broken}, "is not readable JSON"),
             ((scores_dir,), {"name": "gate.txt"}, "name the verdict NAME.json")]
    for scores, options, phrase in cases:
        name = options.pop("name", "gate")
        if name.endswith(".txt"):
            out = tmp_path / name
            result = run_cli("gate", "--rules", TEACHER_GATE, "--scores", scores_dir, "--out", out)
        else:
            result, out = _gate(run_cli, tmp_path, *scores, **options)
        assert result.code == 2, (phrase, result.code, result.err)
        assert phrase in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert not out.exists()
