"""An imported GenCast checkpoint is a teacher like any other: `import gencast` on a WB2-layout store, then
`inspect`, and the tiny pipeline end to end from `teacher: {gencast: ...}` (import -> distill -> forecast ->
evaluate -> scorecard). Data that do not hold the checkpoint's task are refused in one line, exit 2.

The checkpoint is tests/fixtures/gencast/grid64x32_mesh2.npz (graphcast's format, random weights, its
own parity in test_gencast_import.py); its task: 2m_temperature, temperature and geopotential at 500 and
850 hPa, total_precipitation_12hr as a target, geopotential_at_surface and land_sea_mask.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from wb2_stores import era5_like, six_hourly, write_store

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "gencast"
CHECKPOINT, STATS = FIXTURE / "grid64x32_mesh2.npz", FIXTURE / "stats"
TINY = REPO / "configs" / "pipelines" / "tiny.yaml"
TASK_VARIABLES = {"surface": ["2m_temperature"], "atmospheric": ["temperature", "geopotential"],
                  "target_only": ["total_precipitation_12hr"],
                  "static": ["geopotential_at_surface", "land_sea_mask"]}
# The tiny pipeline's splits: room for 2 test inits x 2 leads in 10 days.
SPLITS = {"train": {"fraction": [0.0, 0.5]}, "validation": {"fraction": [0.5, 0.7]},
          "test": {"fraction": [0.7, 1.0]}}


def checkpoint_noise_levels() -> int:
    """The fixture's `sampler_config:num_noise_levels` (graphcast's key): 2 N - 1 denoiser calls a step."""
    with np.load(CHECKPOINT) as stored:
        return int(stored["sampler_config:num_noise_levels"])


def task_store(path: Path, **grid) -> Path:
    """Ten days of a WB2 64x32-layout store holding the fixture task's fields (6-hourly precipitation)."""
    dataset = era5_like(six_hourly(days=10), levels=(500, 850), surface=("2m_temperature",),
                        atmospheric=("temperature", "geopotential"), extra_surface=("total_precipitation_6hr",),
                        **grid)
    return write_store(dataset, path, "64x32")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return task_store(tmp_path_factory.mktemp("gencast-store") / "era5_task.zarr")


def data_config(tmp_path: Path, store: Path, name: str = "data.yaml", **changes) -> Path:
    """configs/data/test.yaml pointed at `store`, with the task's variables and levels (and `changes`)."""
    config = yaml.safe_load((REPO / "configs" / "data" / "test.yaml").read_text())
    config["data"].update({"path": str(store), "variables": TASK_VARIABLES, "levels": [500, 850],
                           "splits": SPLITS, **changes})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory, store) -> Path:
    """The fixture checkpoint imported by the CLI for `store`."""
    from gencast_rmmd.cli import main

    folder = tmp_path_factory.mktemp("imported")
    run = folder / "teacher"
    assert main(["import", "gencast", str(CHECKPOINT), "--stats", str(STATS),
                 "--config", str(data_config(folder, store)), "--out", str(run)]) == 0
    return run


def test_import_writes_a_teacher_run_that_inspect_describes(imported_run, run_cli):
    """`inspect --json`: a teacher at step 0 with the checkpoint's sizes and sampler (2 N - 1 calls) and
    where it came from (the checkpoint's sha256, the statistics files' digests)."""
    result = run_cli("inspect", imported_run, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out.strip().splitlines()[-1])
    assert info["kind"] == "teacher" and info["step"] == 0
    assert info["nfe_per_step"] == 2 * checkpoint_noise_levels() - 1
    assert info["model"]["latent_size"] == 16 and info["model"]["mesh_refinement"] == 2
    assert info["config"]["data"]["variables"]["target_only"] == ["total_precipitation_12hr"]
    # GenCast's 0.1 loss weights, for the targets this task has (a distiller refuses weights of non-targets)
    assert info["config"]["loss"]["variable_weights"] == {"total_precipitation_12hr": 0.1}
    source = info["imported_from"]
    assert source["checkpoint"] == "sha256:" + hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    assert set(source["statistics"]) == {"mean", "std", "diffs_std", "minimum"}
    assert (imported_run / "stats.nc").is_file()


def one_line_refusal(result) -> str:
    assert result.code == 2, (result.code, result.out, result.err)
    message = result.err.strip()
    assert "\n" not in message and "Traceback" not in message, message
    return message


def test_data_without_the_task_are_refused_in_one_line_and_nothing_is_written(run_cli, tmp_path, store, wb2_store):
    """Variables other than the task's, other levels, and a store lacking a task field: exit 2, one line,
    no run written."""
    out = tmp_path / "teacher"

    def refused(config: Path) -> str:
        message = one_line_refusal(run_cli("import", "gencast", CHECKPOINT, "--stats", STATS, "--config", config,
                                           "--out", out))
        assert not out.exists() or not any(out.iterdir())
        return message

    other_variables = data_config(tmp_path, store, "variables.yaml",
                                  variables={**TASK_VARIABLES, "atmospheric": ["temperature"]})
    assert "GenCast checkpoint needs" in refused(other_variables)
    assert "levels are 850; the GenCast checkpoint needs 500, 850" in refused(
        data_config(tmp_path, store, "levels.yaml", levels=[850]))
    assert "total_precipitation" in refused(data_config(tmp_path, wb2_store, "no_precipitation.yaml"))


def test_a_checkpoint_naming_its_resolution_is_refused_for_a_store_on_another_grid(run_cli, tmp_path, store):
    """graphcast's descriptions and file names say the training resolution ("1deg", "GenCast 0p25deg ...");
    a store with another grid spacing is one line, exit 2, nothing written, unless --allow-other-grid."""
    from gencast_rmmd.teacher.gencast_checkpoint import read_gencast_checkpoint, trained_resolution

    fixture = read_gencast_checkpoint(CHECKPOINT, with_params=False)
    assert trained_resolution(fixture, "gs://dm_graphcast/gencast/params/GenCast 0p25deg Operational <2022.npz") \
        == 0.25
    assert trained_resolution(fixture, str(FIXTURE / "grid7p5poles_mesh2.npz")) is None    # names no resolution
    with np.load(CHECKPOINT) as stored:
        arrays = {key: stored[key] for key in stored.files}
    one_degree = tmp_path / "gencast.npz"
    np.savez(one_degree, **{**arrays, "description": np.asarray("GenCast model at 1deg resolution (test copy)")})
    arguments = ("import", "gencast", one_degree, "--stats", STATS, "--config", data_config(tmp_path, store),
                 "--out", tmp_path / "teacher")
    message = one_line_refusal(run_cli(*arguments))
    assert "5.625-degree grid; the GenCast checkpoint was trained at 1 degree" in message
    assert not (tmp_path / "teacher").exists()
    assert run_cli(*arguments, "--allow-other-grid").code == 0


def test_a_store_on_another_grid_is_refused_by_forecast_and_distill(run_cli, imported_run, tmp_path):
    """The imported teacher is for its store's grid: a 7.5-degree store is one line, exit 2."""
    other = task_store(tmp_path / "7p5.zarr", latitude=np.linspace(-90.0, 90.0, 25),
                       longitude=np.arange(48) * 7.5)
    message = one_line_refusal(run_cli("forecast", "--checkpoint", imported_run, "--data", other,
                                       "--init", "2001-01-05T00:00", "--steps", "1", "--members", "2",
                                       "--out", tmp_path / "f.nc"))
    assert "48x25 grid (longitude x latitude)" in message and not (tmp_path / "f.nc").exists()
    message = one_line_refusal(run_cli("distill", "--config", REPO / "configs" / "distill" / "tiny.yaml",
                                       "--teacher", imported_run, "--data", other, "--out", tmp_path / "student"))
    assert "48x25 grid (longitude x latitude)" in message


def gencast_pipeline(tmp_path: Path, checkpoint: Path = CHECKPOINT, gencast_options: dict | None = None,
                     **data_overrides) -> Path:
    """configs/pipelines/tiny.yaml with `teacher: {gencast: ...}` and the task's data (no speed stage, no
    distillation phase 1)."""
    config = yaml.safe_load(TINY.read_text())
    config["data"] = {"config": "configs/data/test.yaml", "simulate": False,
                      "overrides": {"variables": TASK_VARIABLES, "levels": [500, 850], "splits": SPLITS,
                                    **data_overrides}}
    config["teacher"] = {"gencast": {"checkpoint": str(checkpoint), "stats": str(STATS), **(gencast_options or {})}}
    # The RMMD student starts from the imported teacher itself: phase 1 (moment matching first) is the
    # tiny pipeline's own test, and one compilation less here (CI time).
    config["distill"]["tiny"]["overrides"]["distill"] = {"phase1_steps": 0}
    config["speed"] = {"enabled": False}
    path = tmp_path / "tiny_gencast.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_teacher_stage_is_identified_by_the_checkpoint_and_statistics_content(tmp_path, store):
    """The stage imports; its identity holds the checkpoint's sha256 (another file at the same path
    changes it) and the configs read from it; a pipeline whose data are not the task's fails to load."""
    from pipelines.config import load_pipeline_config
    from pipelines.resolution import resolve
    from pipelines.stages import build_stages

    checkpoint = tmp_path / "gencast.npz"
    shutil.copy(CHECKPOINT, checkpoint)

    def teacher_stage(**options):
        path = gencast_pipeline(tmp_path, checkpoint, options)
        config = load_pipeline_config(path, data=str(store))
        return next(stage for stage in build_stages(config, resolve(config, path)) if stage.name == "teacher")

    stage = teacher_stage()
    assert stage.settings["gencast"]["checkpoint"] == "sha256:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert stage.settings["model"]["latent_size"] == 16
    assert stage.settings["sampler"]["num_noise_levels"] == checkpoint_noise_levels()
    command = stage.commands(None)[0].args
    assert command[:3] == ("import", "gencast", str(checkpoint.resolve())) and "--stats" in command
    assert "--allow-other-grid" not in command
    allowing = teacher_stage(allow_other_grid=True)
    assert "--allow-other-grid" in allowing.commands(None)[0].args and allowing.settings != stage.settings
    shutil.copy(FIXTURE / "grid64x32_mesh3.npz", checkpoint)
    changed = teacher_stage()
    assert changed.settings["gencast"]["checkpoint"] != stage.settings["gencast"]["checkpoint"]
    assert changed.settings["model"]["mesh_refinement"] == 3

    from gencast_rmmd.errors import UserInputError

    path = gencast_pipeline(tmp_path, checkpoint, levels=[850])
    with pytest.raises(UserInputError, match="GenCast checkpoint needs 500, 850"):
        resolve(load_pipeline_config(path, data=str(store)), path)


# graphcast's gencast.py TASK: the task_config of the published GenCast checkpoints.
GENCAST_TASK = {
    "input_variables": ["2m_temperature", "mean_sea_level_pressure", "10m_v_component_of_wind",
                        "10m_u_component_of_wind", "sea_surface_temperature", "temperature", "geopotential",
                        "u_component_of_wind", "v_component_of_wind", "vertical_velocity", "specific_humidity",
                        "year_progress_sin", "year_progress_cos", "day_progress_sin", "day_progress_cos",
                        "geopotential_at_surface", "land_sea_mask"],
    "target_variables": ["2m_temperature", "mean_sea_level_pressure", "10m_v_component_of_wind",
                         "10m_u_component_of_wind", "total_precipitation_12hr", "sea_surface_temperature",
                         "temperature", "geopotential", "u_component_of_wind", "v_component_of_wind",
                         "vertical_velocity", "specific_humidity"],
    "forcing_variables": ["year_progress_sin", "year_progress_cos", "day_progress_sin", "day_progress_cos"],
    "pressure_levels": [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000],
    "input_duration": "24h",
}


def flattened(prefix: str, value) -> dict[str, np.ndarray]:
    """graphcast's checkpoint flattening: nested keys joined by ':', tuple items by their index."""
    if isinstance(value, dict):
        return {key: array for name, item in value.items()
                for key, array in flattened(f"{prefix}:{name}", item).items()}
    if isinstance(value, list):
        return {key: array for index, item in enumerate(value)
                for key, array in flattened(f"{prefix}:{index}", item).items()}
    return {prefix: np.asarray(value)}


def test_the_shipped_gencast_1p0_pipeline_plans_the_real_job(tmp_path):
    """configs/pipelines/gencast_1p0_era5.yaml, its checkpoint replaced by one holding the published
    checkpoints' configuration (GenCast's task, the 1p0 Mini architecture; no parameters): its data are
    the task, its stages run import -> 8-step RMMD -> forecasts -> scores -> scorecard."""
    from gencast_rmmd.teacher.gencast_checkpoint import MINI_1P0_ARCHITECTURE
    from pipelines.config import load_pipeline_config
    from pipelines.resolution import resolve
    from pipelines.stages import build_stages

    stand_in = tmp_path / "GenCast 1p0deg Mini <2019.npz"
    arrays = {**flattened("task_config", GENCAST_TASK), **flattened("denoiser_architecture_config",
                                                                     MINI_1P0_ARCHITECTURE)}
    np.savez(stand_in, description=np.asarray("configuration of GenCast 1p0deg Mini"), **arrays)
    path = REPO / "configs" / "pipelines" / "gencast_1p0_era5.yaml"
    config = load_pipeline_config(path, [f"teacher.gencast.checkpoint={stand_in}",
                                         f"teacher.gencast.stats={STATS}"], data=str(tmp_path / "era5.zarr"))
    resolved = resolve(config, path)
    assert resolved.teacher.model.latent_size == 512 and resolved.teacher.model.mesh_refinement == 4
    assert resolved.distill["rmmd"].candidates[0].config.distill.student.steps == 8
    stages = {stage.name: stage for stage in build_stages(config, resolved)}
    assert stages["teacher"].commands(None)[0].args[:2] == ("import", "gencast")
    assert {"distill.rmmd", "forecast.teacher", "forecast.rmmd", "evaluate.rmmd", "scorecard"} <= set(stages)


@pytest.mark.parametrize("teacher, phrase", [
    ({"gencast": {"checkpoint": "a.npz", "stats": "s"}, "config": "configs/teacher/tiny.yaml"},
     "teacher.gencast brings its own model"),
    ({"gencast": {"checkpoint": "a.npz"}}, "stats"),
    ({}, "give config: (a configs/teacher/*.yaml file) or gencast:"),
])
def test_bad_gencast_teacher_sections_are_one_line_errors(run_cli, tmp_path, teacher, phrase):
    config = yaml.safe_load(TINY.read_text())
    config["teacher"] = teacher
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert phrase in one_line_refusal(run_cli("pipeline", "run", path, "--workdir", tmp_path / "w"))


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_from_an_imported_checkpoint(tmp_path, store):
    """import -> distill -> forecast -> evaluate -> scorecard on a WB2-layout store: every stage done, the
    teacher's forecast made with the imported parameters and scored next to the student's."""
    workdir = tmp_path / "work"
    process = subprocess.run([sys.executable, "-m", "gencast_rmmd.cli", "pipeline", "run",
                              gencast_pipeline(tmp_path), "--workdir", workdir, "--data", store],
                             capture_output=True, text=True, timeout=1200)
    assert process.returncode == 0, process.stderr[-3000:]
    stages = json.loads((workdir / "manifest.json").read_text())["stages"]
    assert {name for name, record in stages.items() if record["state"] == "done"} >= {
        "teacher", "distill.tiny", "forecast.teacher", "forecast.tiny", "evaluate.teacher", "evaluate.tiny",
        "scorecard"}
    assert "imported" in (workdir / "logs" / "teacher.log").read_text()
    import xarray as xr

    with xr.open_dataset(workdir / "forecasts" / "teacher.nc") as forecast:
        assert forecast.attrs["nfe_per_step"] == 2 * checkpoint_noise_levels() - 1
        assert forecast.attrs["params_sha256"] == stages["teacher"]["outputs"]["run"]["params_sha256"]
        assert "total_precipitation_12hr" in forecast and forecast.sizes["level"] == 2
    with xr.open_dataset(workdir / "scores" / "teacher.nc") as scores, \
            xr.open_dataset(workdir / "scores" / "tiny.nc") as student:
        assert scores.sizes == student.sizes
        assert np.isfinite(scores["fair_crps"] if "fair_crps" in scores else scores[next(iter(scores))]).all()
    assert (workdir / "scorecard" / "index.html").is_file()
