"""`tiny_select.yaml`: every choice made on validation inits, the choice forecast and scored on test inits.

Its own file (and so, under `pytest -n 2 --dist loadfile`, its own worker) because it is the suite's longest
test: nine distillation runs (phase 1, RMMD with a second seed, DMD, GNDM, DMDR, a second seed of the best of
those three) and their forecasts.
"""

from __future__ import annotations

import json
import re

import pytest
from pipeline_helpers import TINY, TINY_SELECT, manifest, pipeline, run_pipeline

pytestmark = pytest.mark.slow


def test_tiny_select_chooses_on_validation_and_forecasts_the_choice_on_test(pipeline_args, tmp_path):
    """A 2-candidate grid, `from` entries (RMMD with an extra seed, DMD, GNDM, DMDR), a `best_of` entry, a `base`
    entry and a teacher sampler row, from an empty work directory."""
    workdir = tmp_path / "select"
    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, config=TINY_SELECT,
                                   timeout=3600)           # 48 stages: a guard against a hang, not a time limit
    assert code == 0, err[-3000:]
    # Its data, teacher and test inits are tiny.yaml's: a tiny.yaml plan in this directory skips them.
    out, err = pipeline("plan", TINY, "--workdir", workdir, *pipeline_args).communicate(timeout=600)
    for name in ("data", "stats", "teacher", "forecast.inits", "forecast.teacher"):
        assert re.search(rf"^{re.escape(name)}\s+skip\s+unchanged$", out, re.MULTILINE), (name, out, err[-2000:])
    selection = json.loads((workdir / "selection" / "mmd.json").read_text())
    chosen = selection["chosen"]["index"]
    changes = [entry["crps_change_pct"] for entry in selection["candidates"]]
    assert changes[chosen] == min(changes) and len(changes) == 2
    assert [entry["values"] for entry in selection["candidates"]] == [{"train.learning_rate": 1e-4},
                                                                      {"train.learning_rate": 1e-3}]
    assert selection["validation_inits"] == json.loads((workdir / "validation" / "inits.json").read_text())["inits"]
    assert not set(selection["validation_inits"]) & set(json.loads((workdir / "forecasts" / "inits.json")
                                                                   .read_text())["inits"])
    assert (workdir / "selection" / "mmd.yaml").read_text() == \
        (workdir / "configs" / f"distill.mmd.c{chosen}.yaml").read_text()
    # The test forecast and the phase-2 students use the chosen candidate's run.
    assert f"--checkpoint students/mmd/c{chosen} " in (workdir / "logs" / "forecast.mmd.log").read_text()
    for label in ("rmmd", "rmmd_seed1", "dmd", "gndm", "dmdr"):
        assert f"--teacher students/mmd/c{chosen} " in (workdir / "logs" / f"distill.{label}.log").read_text()
    # DMDR's stages and dynamic strategies follow the loop's step: steps 1-2 tilted (DynaDG at full strength on
    # step 1 only), step 3 DMD + CRPS without the tilt.
    logged = [json.loads(line) for line in (workdir / "students" / "dmdr" / "metrics.jsonl").read_text().splitlines()]
    by_step = {entry["step"]: entry for entry in logged if "student/stage" in entry}
    assert [by_step[step]["student/stage"] for step in (1, 2, 3)] == [1.0, 1.0, 2.0]
    assert [by_step[step]["student/guidance"] for step in (1, 2, 3)] == [0.375, 0.0, 0.0]
    assert by_step[3]["aux/tilt_weight_max"] == 1.0 < by_step[1]["aux/tilt_weight_max"]
    # `best_of.family_best`: DMD, GNDM and DMDR ranked by their validation forecasts; the best one's config
    # trained again with seed 1 from the same phase-1 run, forecast and scored on test as a row of its own.
    ranking = json.loads((workdir / "selection" / "family_best.json").read_text())
    assert [entry["row"] for entry in ranking["rows"]] == ["dmd", "gndm", "dmdr"]
    ranked = [entry["crps_change_pct"] for entry in ranking["rows"]]
    best = ranking["chosen"]["row"]
    assert ranking["chosen"]["crps_change_pct"] == min(ranked) and ranking["chosen"]["forecast"] == \
        f"validation/forecasts/{best}.nc"
    seed_log = (workdir / "logs" / "distill.family_best_seed1.log").read_text()
    assert f"distill --config configs/distill.{best}.yaml --set seed=1 --teacher students/mmd/c{chosen} " in seed_log
    seeded = [json.loads(line) for line in (workdir / "students" / "family_best_seed1" / "metrics.jsonl")
              .read_text().splitlines()]
    first = [json.loads(line) for line in (workdir / "students" / best / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in seeded] == [entry["step"] for entry in first] and seeded != first
    # The `base: mmd` entry trains the chosen config with its override; configs/ holds its pre-selection view.
    assert "distill --config selection/mmd.yaml --set distill.student.steps=2 --teacher teacher " in \
        (workdir / "logs" / "distill.mmd_2step.log").read_text()
    assert (workdir / "configs" / "distill.mmd_2step.yaml").read_text().startswith("# Pre-selection view")
    for label in ("mmd", "rmmd", "rmmd_seed1", "dmd", "gndm", "dmdr", "family_best_seed1", "mmd_2step",
                  "teacher_3calls"):
        assert (workdir / "forecasts" / f"{label}.nc").is_file() and (workdir / "scores" / f"{label}.nc").is_file()
    for label in ("teacher", "mmd.c0", "mmd.c1", "rmmd", "rmmd_seed1", "dmd", "gndm", "dmdr", "family_best_seed1",
                  "mmd_2step", "teacher_3calls"):
        assert (workdir / "validation" / "forecasts" / f"{label}.nc").is_file(), label
    import xarray as xr

    for label, calls in (("teacher_3calls", 3), ("mmd_2step", 2)):
        with xr.open_dataset(workdir / "forecasts" / f"{label}.nc") as few_calls:
            assert int(few_calls.attrs["nfe_per_step"]) == calls, label
    timing = json.loads((workdir / "scorecard" / "timing.json").read_text())
    assert set(timing) == {"teacher", "mmd", "rmmd", "dmd", "gndm", "dmdr", "mmd_2step", "teacher_3calls"}
    assert timing["teacher_3calls"]["denoiser_calls_per_step"] == 3
    page = (workdir / "scorecard" / "index.html").read_text()
    assert "rmmd_seed1: fair CRPS" in page and "teacher_3calls: fair CRPS" in page
    assert all(f"a {name} student" in page for name in ("DMD", "GNDM", "DMDR"))
    assert "Chosen on validation" in page and "tiny:" not in page     # only this pipeline's rows
    assert f"its extra seeds train {best}'s config" in page and "family_best_seed1: fair CRPS" in page

    code, _, err, _ = run_pipeline("--workdir", workdir, *pipeline_args, config=TINY_SELECT)
    assert code == 0, err[-2000:]
    assert set(manifest(workdir)["runs"][-1]["actions"].values()) == {"skipped", "not_applicable"}
