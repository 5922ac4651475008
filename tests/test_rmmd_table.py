"""The RMMD table (`pipelines.table`) and zonal spectra (`evaluation.spectrum`) on a tiny fake work directory.

Proves: the table's CRPS change, interval, win rate and pair equal `gencast-rmmd compare`'s; a pure zonal wave's
power lies in its band and a smoothed field has less power in the high bands; the teacher→reference gap share
is 0 for the teacher and 1 for a forecast with the reference's CRPS; absent rows are pending and their targets
"not measured yet"; table.md names the pipeline config and its hash; table.json round-trips; the task's errors.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from evaluation.compare import compare_forecasts
from evaluation.scoring import evaluate_files
from evaluation.spectrum import ZONAL_BANDS, band_powers, zonal_power_by_band
from gencast_rmmd.data.forecast_io import forecast_dataset, write_forecast
from pipelines.table import build_table, table_stage_spec, write_table

INITS = pd.date_range("2001-01-02", periods=8, freq="12h")
LEADS = pd.to_timedelta([12, 24, 48], unit="h")
VARIABLES = ("temperature", "geopotential")
DRAWS = 200
CONFIG_SHA = "0123abcd" * 8


def _forecast(truth: xr.Dataset, error: float, seed: int, members: int = 4, smooth: int = 0) -> xr.Dataset:
    """Members = truth at valid time + a shared error + member noise, both `error` x the field's std.

    `smooth` > 0 averages each member over 2 smooth + 1 neighbouring longitudes (a blurred forecast).
    """
    rng = np.random.default_rng(seed)
    fields = {}
    for name in VARIABLES:
        valid = np.stack([truth[name].sel(time=init + LEADS).values for init in INITS])   # init, lead, level, ...
        scale = error * np.nanstd(truth[name].values)
        centre = valid + scale * rng.standard_normal(valid.shape)
        values = centre[:, :, None] + scale * rng.standard_normal((*valid.shape[:2], members, *valid.shape[2:]))
        if smooth:
            values = np.mean([np.roll(values, shift, axis=-1) for shift in range(-smooth, smooth + 1)], axis=0)
        fields[name] = values.astype(np.float32)
    return forecast_dataset(fields, init_times=INITS, leads=LEADS, latitude=truth["latitude"].values,
                            longitude=truth["longitude"].values, levels=truth["level"].values)


def _persistence(truth: xr.Dataset) -> xr.Dataset:
    fields = {name: np.stack([np.repeat(truth[name].sel(time=init).values[None, None], len(LEADS), axis=0)
                              for init in INITS]).astype(np.float32) for name in VARIABLES}
    return forecast_dataset(fields, init_times=INITS, leads=LEADS, latitude=truth["latitude"].values,
                            longitude=truth["longitude"].values, levels=truth["level"].values)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, wb2_dataset, wb2_store):
    """A pipeline work directory part-way: mmd_tuned and climatology not forecast yet, no rmmd_offline at all."""
    folder = tmp_path_factory.mktemp("table") / "run"
    (folder / "forecasts").mkdir(parents=True)
    rows = {"teacher": (0.3, 0), "reference": (0.05, 1), "rmmd": (0.22, 2), "rmmd_seed1": (0.24, 3),
            "rmmd_seed2": (0.2, 4), "teacher_9calls": (0.32, 5)}
    for label, (error, seed) in rows.items():
        write_forecast(_forecast(wb2_dataset, error, seed), folder / "forecasts" / f"{label}.nc")
    write_forecast(_forecast(wb2_dataset, 0.3, 6, smooth=3), folder / "forecasts" / "mmd.nc")
    shutil.copy(folder / "forecasts" / "reference.nc", folder / "forecasts" / "draft.nc")
    write_forecast(_persistence(wb2_dataset), folder / "forecasts" / "persistence.nc")
    for path in sorted((folder / "forecasts").glob("*.nc")):
        evaluate_files(str(path), str(wb2_store), str(folder / "scores" / path.name), regions=("global",),
                       progress=False, label=path.stem)
    (folder / "configs").mkdir()
    (folder / "configs" / "pipeline.yaml").write_text(yaml.safe_dump({
        "name": "tiny_table", "data": {"simulate": True}, "reference": {"enabled": True},
        "baselines": {"climatology": True}, "teacher_samplers": {"teacher_9calls": {"sampler": {}}},
        "distill": {"rmmd": {"seeds": [1, 2]}, "mmd": {}, "mmd_tuned": {}, "draft": {}}}, sort_keys=False))
    stages = {"teacher": {"state": "done", "seconds": 3000.0, "outputs": {"run": {
        "checkpoint": "checkpoints/step_00005000", "step": 5000, "params_sha256": "p" * 64,
        "ema_params_sha256": "e" * 64}}}, "forecast.teacher": {"state": "done", "seconds": 600.0},
        "distill.mmd_tuned": {"state": "running", "seconds": None}}
    (folder / "manifest.json").write_text(json.dumps({
        "pipeline": {"name": "tiny_table", "config_file": "/nowhere/configs/pipelines/rmmd_table.yaml",
                     "config_sha256": CONFIG_SHA},
        "environment": {"git_commit": "c0ffee"}, "stages": stages}))
    (folder / "selection").mkdir()
    for name, values in {"rmmd": {"train.learning_rate": 3e-4, "distill.reward_weight": 10.0},
                         "teacher_9calls": {"sampler.churn": 2.5}}.items():
        (folder / "selection" / f"{name}.json").write_text(json.dumps({
            "name": name, "validation_inits": ["2001-01-01T00:00:00"] * 3, "chosen": {"index": 1, "values": values}}))
    (folder / "scorecard").mkdir()
    models = {"teacher": (1.0, 39), "rmmd": (0.125, 8), "mmd": (0.125, 8), "draft": (0.125, 8),
              "teacher_9calls": (0.25, 9)}
    (folder / "scorecard" / "speed.json").write_text(json.dumps({"models": {
        label: {"seconds_per_step": seconds, "nfe_per_step": calls} for label, (seconds, calls) in models.items()}}))
    return folder


@pytest.fixture(scope="module")
def table(workdir, wb2_store):
    return build_table(workdir, str(wb2_store), draws=DRAWS, seed=0)


def _rows(table: dict) -> dict:
    return {row["label"]: row for row in table["rows"]}


def test_crps_change_win_rate_and_pairs_are_compares(table, workdir, wb2_store):
    forecasts = workdir / "forecasts"
    compared = compare_forecasts(str(forecasts / "teacher.nc"), [str(forecasts / "rmmd.nc"), str(forecasts / "mmd.nc")],
                                 str(wb2_store), draws=DRAWS, seed=0)
    rows = _rows(table)
    for label in ("rmmd", "mmd"):
        expected = compared["forecasts"][str(forecasts / f"{label}.nc")]
        assert rows[label]["crps_change_pct"] == pytest.approx(expected["crps_change_pct"], rel=1e-12)
        assert rows[label]["interval_95"] == pytest.approx(expected["interval_95"], rel=1e-12)
        assert rows[label]["win_rate"] == expected["win_rate"]
        assert rows[label]["targets_won"] == expected["targets_won"] and rows[label]["cells"] == expected["cells"] == 12
    assert rows["teacher"]["crps_change_pct"] == 0.0 and rows["teacher"]["win_rate"] == 0.0
    # The ordering's present rows (mmd_tuned pending, rmmd_offline absent): rmmd − mmd, as compare's pair.
    (pair,) = table["pairs"]
    assert (pair["a"], pair["b"]) == ("rmmd", "mmd")
    assert pair["points"] == pytest.approx(compared["pairs"][0]["points"], rel=1e-12)
    assert pair["interval_95"] == pytest.approx(compared["pairs"][0]["interval_95"], rel=1e-12)
    assert table["header"]["bootstrap"]["block_inits"] == compared["block_inits"] == 4


def test_rows_order_pending_chosen_speed_and_scores(table):
    rows = _rows(table)
    assert list(rows) == ["teacher", "teacher_9calls", "rmmd", "rmmd_seed1", "rmmd_seed2", "mmd", "mmd_tuned",
                          "draft", "reference", "persistence", "climatology"]
    assert rows["mmd_tuned"]["status"] == rows["climatology"]["status"] == "pending"
    assert rows["rmmd"]["chosen"] == "train.learning_rate=0.0003, distill.reward_weight=10.0"
    assert rows["rmmd_seed1"]["chosen"].endswith("; seed 1") and rows["draft"]["chosen"] == "fixed"
    assert rows["teacher_9calls"]["chosen"] == "sampler.churn=2.5" and rows["teacher"]["chosen"] is None
    assert rows["rmmd"]["speedup"] == rows["rmmd_seed2"]["speedup"] == 8.0 and rows["rmmd"]["denoiser_calls"] == 8
    assert rows["teacher"]["rmse_change_pct"] == 0.0 and rows["reference"]["rmse_change_pct"] < 0
    assert len(rows["rmmd"]["ssr_by_lead"]) == 3 and rows["teacher"]["ssr_closer"] == [True] * 3
    assert rows["persistence"]["ssr_by_lead"] == [None] * 3          # one member: no spread/skill ratio
    # Persistence has 1 member, 2 rank bins: the truth always falls outside.
    assert rows["persistence"]["rank_outer_excess"] == pytest.approx(0.0)
    assert rows["teacher"]["rank_outer_excess"] is not None
    header = table["header"]
    assert (header["test_inits"], header["members"], header["leads_hours"]) == (8, 4, [12, 24, 48])
    assert header["validation_inits"] == 3 and header["wall_seconds"] == 3600.0
    assert header["teacher_checkpoint"]["params_sha256"] == "p" * 64 and header["git_commit"] == "c0ffee"


def test_gap_share_is_zero_for_the_teacher_and_one_at_the_references_crps(table):
    rows = _rows(table)
    assert rows["teacher"]["gap_share"] == 0.0
    assert rows["draft"]["gap_share"] == pytest.approx(1.0) and rows["reference"]["gap_share"] == pytest.approx(1.0)
    assert 0 < rows["rmmd"]["gap_share"] < 1 and rows["rmmd"]["gap_cells"] == rows["rmmd"]["gap_cells_total"] == 12


def test_seeds_sampler_pairs_and_targets(table):
    rows = _rows(table)
    (seeds,) = table["seeds"]
    labels = ["rmmd", "rmmd_seed1", "rmmd_seed2"]
    changes = [rows[label]["crps_change_pct"] for label in labels]
    assert seeds["seeds"] == labels and seeds["pending"] == []
    assert seeds["mean"] == pytest.approx(np.mean(changes)) and seeds["sd"] == pytest.approx(np.std(changes, ddof=1))
    assert seeds["interval_95"][0] < seeds["mean"] < seeds["interval_95"][1]
    by_row = {pair["a"]: pair for pair in table["sampler_pairs"]}
    assert set(by_row) == {"rmmd", "mmd", "draft"} and by_row["rmmd"]["b"] == "teacher_9calls"
    assert by_row["rmmd"]["points"] == pytest.approx(rows["rmmd"]["crps_change_pct"]
                                                     - rows["teacher_9calls"]["crps_change_pct"])
    def target(start: str) -> dict:
        return next(entry for entry in table["targets"] if entry["target"].startswith(start))

    assert target("4-step RMMD (rmmd_4step)")["status"] == "not measured yet"
    assert target("mmd_tuned beats")["status"] == "not measured yet"
    assert target("draft beats")["status"] == "met" and target("mmd beats")["status"] in ("met", "not met")
    ordering = target("ordering")
    assert ordering["status"] == "not measured yet" and "mmd_tuned, rmmd_offline" in ordering["detail"]
    main = target("8-step RMMD (rmmd): win rate")
    assert main["status"] in ("met", "not met") and main["detail"].startswith("3 seed(s)")


def test_spectrum_check_shows_the_blurred_row(table):
    spectrum = table["spectrum"]
    assert spectrum["targets"] == ["geopotential@500", "temperature@850"] and spectrum["leads_hours"] == [24]
    assert list(spectrum["ratios"]) == ["teacher", "rmmd", "mmd", "draft"]       # the teacher and student rows
    for target in spectrum["targets"]:
        high = spectrum["bands"].index("wn 22-32")
        assert spectrum["ratios"]["mmd"][target][0][high] < 0.5 * spectrum["ratios"]["teacher"][target][0][high]
        assert len(spectrum["truth"][target][0]) == len(ZONAL_BANDS)


def test_markdown_names_the_config_and_json_round_trips(table, tmp_path):
    paths = write_table(table, tmp_path / "out")
    assert json.loads(paths[0].read_text()) == table
    text = paths[1].read_text()
    assert "/nowhere/configs/pipelines/rmmd_table.yaml" in text and CONFIG_SHA in text
    assert "| mmd_tuned | student | pending |" in text and "not measured yet" in text
    assert "## Targets (as measured)" in text and "geopotential@500 at 24 h" in text


def test_stage_spec_names_every_input():
    spec = table_stage_spec(["teacher", "rmmd"], ["rmmd"])
    assert spec["inputs"] == ["forecast.inits.inits", "forecast.teacher.forecast", "forecast.rmmd.forecast",
                              "evaluate.teacher.scores", "evaluate.rmmd.scores", "select.rmmd.selection", "speed.speed"]


def test_without_the_teacher_every_row_waits(workdir, wb2_store, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(workdir / "configs", partial / "configs")
    (partial / "forecasts").mkdir()
    shutil.copy(workdir / "forecasts" / "rmmd.nc", partial / "forecasts" / "rmmd.nc")
    result = build_table(partial, str(wb2_store), draws=DRAWS)
    rows = _rows(result)
    assert rows["teacher"]["status"] == "pending" and "teacher's forecast is pending" in rows["rmmd"]["status"]
    assert {entry["status"] for entry in result["targets"]} == {"not measured yet"}
    assert "# RMMD table: partial" in write_table(result, tmp_path / "out")[1].read_text()


def test_calls_come_from_the_forecasts_before_the_speed_stage_and_each_main_row_has_its_targets(
        workdir, wb2_store, tmp_path):
    """Without speed.json a row's denoiser calls are its test forecast's `nfe_per_step`, so the partial table
    already pairs each student with the teacher sampler of the nearest calls; speedups wait for the timing.
    Every 8-step RMMD row of `MAIN_ROWS` that the config has gets D's win-rate and SSR targets."""
    partial = tmp_path / "partial"
    shutil.copytree(workdir, partial)
    (partial / "scorecard" / "speed.json").unlink()
    for label, calls in (("rmmd", 8), ("teacher_9calls", 9), ("teacher", 39)):
        path = partial / "forecasts" / f"{label}.nc"
        dataset = xr.load_dataset(path)
        dataset.attrs["nfe_per_step"] = calls
        path.unlink()
        write_forecast(dataset, path)
    # A second 8-step RMMD row (rmmd_rollout, here a copy of rmmd's files) gets D's first two targets too.
    config = yaml.safe_load((partial / "configs" / "pipeline.yaml").read_text())
    config["distill"]["rmmd_rollout"] = {}
    (partial / "configs" / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for folder in ("forecasts", "scores"):
        shutil.copy(partial / folder / "rmmd.nc", partial / folder / "rmmd_rollout.nc")
    result = build_table(partial, str(wb2_store), draws=DRAWS, rows=["rmmd", "rmmd_rollout", "teacher_9calls", "mmd"])
    rows = _rows(result)
    assert (rows["rmmd"]["denoiser_calls"], rows["teacher_9calls"]["denoiser_calls"]) == (8, 9)
    assert rows["mmd"]["denoiser_calls"] is None and rows["rmmd"]["speedup"] is None    # mmd.nc has no attribute
    pair = next(pair for pair in result["sampler_pairs"] if pair["a"] == "rmmd")
    assert (pair["b"], pair["a_calls"], pair["b_calls"]) == ("teacher_9calls", 8, 9)
    targets = {entry["target"]: entry for entry in result["targets"]}
    for row in ("rmmd", "rmmd_rollout"):
        ssr = targets[f"8-step RMMD ({row}): SSR at every lead at least as close to 1 as the teacher's"]
        assert ssr["status"] in ("met", "not met")
    rollout = next(entry for text, entry in targets.items() if text.startswith("8-step RMMD (rmmd_rollout): win"))
    assert rollout["status"] == "not measured yet" and rollout["detail"].startswith("1 seed(s)")


def test_table_task_writes_both_files_and_refuses_a_bad_workdir(run_cli, workdir, wb2_store, tmp_path):
    done = run_cli("pipeline", "task", "table", "--workdir", workdir, "--truth", wb2_store, "--out", tmp_path / "t",
                   "--draws", DRAWS, "--row", "rmmd")
    assert done.code == 0, done.err
    rows = json.loads((tmp_path / "t" / "table.json").read_text())["rows"]
    assert [row["label"] for row in rows] == ["teacher", "rmmd", "reference"]
    bad = run_cli("pipeline", "task", "table", "--workdir", tmp_path / "missing", "--truth", wb2_store, "--out",
                  tmp_path / "t")
    assert bad.code == 2 and "not a pipeline work directory" in bad.err and len(bad.err.strip().splitlines()) == 1
    few = run_cli("pipeline", "task", "table", "--workdir", workdir, "--truth", wb2_store, "--out", tmp_path / "t",
                  "--draws", "10")
    assert few.code == 2 and "--draws must be at least" in few.err


def test_a_pure_zonal_wave_puts_all_its_power_in_its_band():
    latitude, longitude = np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625
    wave = 3.0 * np.cos(np.deg2rad(longitude) * 5 + 0.7) * np.ones((latitude.size, 1))
    field = xr.DataArray(wave[None], dims=("time", "latitude", "longitude"),
                         coords={"time": [0], "latitude": latitude, "longitude": longitude})
    power = zonal_power_by_band(field).isel(time=0)
    assert power.sel(band="wn 4-7").item() == pytest.approx(3.0**2 / 2)       # Parseval: the mean of the square
    np.testing.assert_allclose(power.drop_sel(band="wn 4-7").values, 0.0, atol=1e-20)
    northern = zonal_power_by_band(field * np.where(latitude > 0, 1.0, 2.0)[:, None], lat_range=(0, 90))
    assert northern.sel(band="wn 4-7").item() == pytest.approx(4.5)           # the southern rows are left out


def test_a_smoothed_field_has_less_power_in_the_high_bands(wb2_dataset, wb2_store, tmp_path):
    rng = np.random.default_rng(0)
    noise = xr.DataArray(rng.standard_normal((3, 32, 64)), dims=("time", "latitude", "longitude"),
                         coords={"latitude": np.linspace(-87.1875, 87.1875, 32), "longitude": np.arange(64) * 5.625})
    smoothed = sum(noise.roll(longitude=shift) for shift in (-2, -1, 0, 1, 2)) / 5
    rough, smooth = zonal_power_by_band(noise).mean("time"), zonal_power_by_band(smoothed).mean("time")
    assert (smooth.values[-3:] < 0.3 * rough.values[-3:]).all() and smooth.values[0] > 0.5 * rough.values[0]
    # For forecast files: per-member power averaged; a sharp forecast is near the truth, a blurred one below it.
    write_forecast(_forecast(wb2_dataset, 0.1, 0), tmp_path / "sharp.nc")
    write_forecast(_forecast(wb2_dataset, 0.1, 0, smooth=3), tmp_path / "blurred.nc")
    sharp, blurred = (band_powers(str(tmp_path / name), str(wb2_store), lead_hours=(12, 48))
                      for name in ("sharp.nc", "blurred.nc"))
    assert sharp["forecast"].dims == ("target", "lead_hours", "band")
    np.testing.assert_allclose(sharp["truth"], blurred["truth"])
    ratio = lambda powers: (powers["forecast"] / powers["truth"]).isel(band=-1).values  # noqa: E731
    assert (ratio(blurred) < 0.5).all() and (ratio(sharp) > 0.8).all()


def test_best_of_seed_rows_join_the_row_validation_ranked_best(tmp_path):
    """A `best_of` entry's seed rows sit under (and are summarised with) the row its selection names; before the
    ranking exists they wait after the students."""
    from pipelines.table import planned_rows

    pipeline = {"distill": {"crps_only": {}, "draft": {"seeds": [3]}},
                "best_of": {"strongest": {"among": ["crps_only", "draft"], "seeds": [1, 2]}}}
    (tmp_path / "forecasts").mkdir()
    waiting = [(plan.label, plan.base) for plan in planned_rows(tmp_path, pipeline, {}) if plan.kind == "seed"]
    assert waiting == [("draft_seed3", "draft"), ("strongest_seed1", "strongest"), ("strongest_seed2", "strongest")]
    (tmp_path / "selection").mkdir()
    (tmp_path / "selection" / "strongest.json").write_text(json.dumps({"chosen": {"row": "crps_only"}}))
    plans = planned_rows(tmp_path, pipeline, {})
    labels = [plan.label for plan in plans]
    assert labels[labels.index("crps_only"):labels.index("draft") + 2] == [
        "crps_only", "strongest_seed1", "strongest_seed2", "draft", "draft_seed3"]
    assert {plan.label: (plan.base, plan.seed) for plan in plans if plan.kind == "seed"}["strongest_seed2"] == \
        ("crps_only", 2)
