"""Bad input and faults over every command: one line naming the problem, exit 2, nothing already written damaged.

The usage-error matrix lives in test_bad_input_battery.py, corrupt chunks in
test_chunk_integrity.py, malformed checkpoints in test_checkpoint_integrity.py.
Here, on files the project made (the simulated test store, the shipped demo
teacher installed on it, baseline forecasts and their scores): output paths
that cannot be written (refused before any long work), full disks, empty and
missing data, non-UTF-8 and mis-shaped configs and manifests, unreachable
schedulers, backwards ranges, negative windows, a scorecard rerun that fails
half-way, and forecasts that would be NaN. Each case states what it feeds and
what the one line must say; `CASES` runs the ones that need only the command
line, the functions below those that need a prepared file or a fault injected.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import REPO, TEST_DATA_CONFIG

TINY_TEACHER = REPO / "configs" / "teacher" / "tiny.yaml"
DEMO_TEACHER = REPO / "configs" / "teacher" / "demo.yaml"
TINY_DISTILL = REPO / "configs" / "distill" / "tiny.yaml"
TINY_PIPELINE = REPO / "configs" / "pipelines" / "tiny.yaml"
DEMO_PACKAGE = REPO / "gencast_rmmd" / "teacher" / "pretrained" / "demo"
INIT = "2000-01-04T00"          # inside the simulated store (2000-01-01 .. 2000-01-06T18)
DiskUsage = namedtuple("DiskUsage", "total used free")


def assert_bad_input(result, *phrases):
    """Exit 2, exactly one `error:` line containing every phrase, no traceback or internal error."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    errors = [line for line in (result.err + result.out).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def _write_store(dataset: xr.Dataset, path: Path) -> Path:
    dataset = dataset.copy()
    for variable in dataset.variables.values():
        variable.encoding = {}
    dataset.to_zarr(path, mode="w", zarr_format=2, consolidated=True)
    return path


@pytest.fixture(scope="module")
def store(simulated) -> Path:
    return simulated[0].path


@pytest.fixture(scope="module")
def truth(store) -> xr.Dataset:
    return xr.open_zarr(store).load()


@pytest.fixture(scope="module")
def made(tmp_path_factory, store) -> dict[str, Path]:
    """Files the project made from the simulated store: two baseline forecasts and their scores."""
    from gencast_rmmd.cli import main

    folder = tmp_path_factory.mktemp("made")
    paths = {"persistence": folder / "persistence.nc", "climatology": folder / "climatology.nc",
             "scores_persistence": folder / "scores_persistence.nc",
             "scores_climatology": folder / "scores_climatology.nc"}
    assert main(["baseline", "persistence", "--truth", str(store), "--init", INIT, "--steps", "2",
                 "--out", str(paths["persistence"])]) == 0
    assert main(["baseline", "climatology", "--truth", str(store), "--init", INIT, "--steps", "2", "--members", "2",
                 "--out", str(paths["climatology"])]) == 0
    for name in ("persistence", "climatology"):
        assert main(["evaluate", "--forecast", str(paths[name]), "--truth", str(store), "--out",
                     str(paths[f"scores_{name}"]), "--no-progress"]) == 0
    return paths


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory, truth) -> Path:
    return _write_store(truth.isel(time=slice(0, 0)), tmp_path_factory.mktemp("empty") / "empty.zarr")


@pytest.fixture
def paths(tmp_path, store, made, demo_teacher_run, empty_store) -> dict[str, str]:
    """Placeholders of the CASES table: existing files, directories and fixtures, and a scratch folder."""
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file.zarr").write_text("a file named like a zarr store")
    (tmp_path / "latin1.yaml").write_bytes("data:\n  path: 'caf\xe9.zarr'\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- data\n- model\n")
    (tmp_path / "junk.nc").write_text("not netcdf")
    return {"tmp": str(tmp_path), "file": str(tmp_path / "a_file"), "dir": str(tmp_path / "a_dir"),
            "zarr_file": str(tmp_path / "a_file.zarr"),
            "latin1": str(tmp_path / "latin1.yaml"), "list": str(tmp_path / "list.yaml"),
            "junk": str(tmp_path / "junk.nc"), "store": str(store), "empty": str(empty_store),
            "run": str(demo_teacher_run), "data_config": str(TEST_DATA_CONFIG), "tiny": str(TINY_TEACHER),
            "demo": str(DEMO_TEACHER), "distill": str(TINY_DISTILL), "pipeline": str(TINY_PIPELINE),
            "package": str(DEMO_PACKAGE), **{name: str(path) for name, path in made.items()}}


FORECAST = ("forecast", "--checkpoint", "{run}", "--data", "{store}", "--init", INIT, "--steps", "1",
            "--members", "1")
PERSISTENCE = ("baseline", "persistence", "--truth", "{store}", "--init", INIT, "--steps", "1")
CLIMATOLOGY = ("baseline", "climatology", "--truth", "{store}", "--init", INIT, "--steps", "1", "--members", "2")
EVALUATE = ("evaluate", "--forecast", "{persistence}", "--truth", "{store}", "--no-progress")
SCORECARD = ("scorecard", "--scores", "{scores_climatology}", "--baseline", "{scores_persistence}")
STATS = ("data", "stats", "--config", "{data_config}", "--data", "{store}")

# (id, command line with {placeholders}, phrases of the one error line, text that must NOT be in stderr:
#  a sign that long work started before the refusal)
CASES = [
    # Output paths: a directory where a file goes, a file where a directory goes, a parent that is a file.
    ("forecast-out-is-a-directory", (*FORECAST, "--out", "{dir}"), ("--out", "is an existing directory"),
     "forecasting"),
    ("forecast-out-under-a-file", (*FORECAST, "--out", "{file}/f.nc"), ("is a file, not a directory",),
     "forecasting"),
    ("forecast-zarr-out-is-a-file", (*FORECAST, "--out", "{zarr_file}"), ("is an existing file",), "forecasting"),
    ("stats-out-is-a-directory", (*STATS, "--out", "{dir}"), ("is an existing directory",), "computing"),
    ("stats-out-under-a-file", (*STATS, "--out", "{file}/s.nc"), ("is a file, not a directory",), "computing"),
    ("evaluate-out-is-a-directory", (*EVALUATE, "--out", "{dir}"), ("is an existing directory",), None),
    ("evaluate-out-under-a-file", (*EVALUATE, "--out", "{file}/s.nc"), ("is a file, not a directory",), None),
    ("persistence-out-is-a-directory", (*PERSISTENCE, "--out", "{dir}"), ("is an existing directory",), None),
    ("climatology-zarr-out-is-a-file", (*CLIMATOLOGY, "--out", "{zarr_file}"), ("is an existing file",), None),
    ("scorecard-out-is-a-file", (*SCORECARD, "--out", "{file}"), ("is an existing file",), None),
    ("compare-json-under-a-file", ("compare", "{climatology}", "--baseline", "{persistence}", "--truth", "{store}",
                                   "--json", "{file}/c.json"), ("--json", "is a file, not a directory"), None),
    ("train-out-is-a-file", ("train", "--config", "{tiny}", "--data", "{store}", "--out", "{file}"),
     ("is an existing file",), "training teacher"),
    ("distill-out-is-a-file", ("distill", "--config", "{distill}", "--teacher", "{run}", "--data", "{store}",
                               "--out", "{file}"), ("is an existing file",), None),
    ("simulate-out-is-a-file", ("data", "simulate", "--config", "{data_config}", "--out", "{file}"),
     ("is an existing file",), "spin"),
    ("simulate-cache-dir-is-a-file", ("data", "simulate", "--config", "{data_config}", "--out", "{tmp}/s.zarr",
                                      "--cache-dir", "{file}"), ("--cache-dir",), "spin"),
    ("simulate-reference-out-is-a-directory", ("data", "simulate", "--config", "{data_config}", "--out",
                                               "{tmp}/s.zarr", "--reference-out", "{dir}", "--init", INIT),
     ("--reference-out",), "spin"),
    ("weights-export-out-is-a-file", ("weights", "export", "{run}", "--out", "{file}"), ("is an existing file",),
     None),
    ("weights-install-out-is-a-file", ("weights", "install", "{package}", "--config", "{demo}", "--data", "{store}",
                                       "--out", "{file}"), ("is an existing file",), None),
    ("pipeline-workdir-is-a-file", ("pipeline", "run", "{pipeline}", "--workdir", "{file}"),
     ("work directory", "is an existing file"), None),
    # Configs that are not UTF-8, not a mapping, a directory, or missing.
    ("check-config-not-utf8", ("data", "check", "--config", "{latin1}", "--data", "{store}"),
     ("not UTF-8 text", "byte 0xe9"), None),
    ("train-config-not-utf8", ("train", "--config", "{latin1}", "--out", "{tmp}/run"), ("not UTF-8",), None),
    ("pipeline-config-not-utf8", ("pipeline", "run", "{latin1}", "--workdir", "{tmp}/w"), ("not UTF-8",), None),
    ("inspect-config-not-utf8", ("inspect", "{latin1}"), ("not UTF-8",), None),
    ("persistence-config-not-utf8", (*PERSISTENCE, "--out", "{tmp}/p.nc", "--config", "{latin1}"),
     ("not UTF-8",), None),
    ("config-is-a-list", ("data", "check", "--config", "{list}", "--data", "{store}"),
     ("expected a mapping",), None),
    ("config-is-a-directory", ("data", "check", "--config", "{dir}", "--data", "{store}"),
     ("is a directory",), None),
    ("distill-config-missing", ("distill", "--config", "{tmp}/none.yaml", "--teacher", "{run}", "--out",
                                "{tmp}/d"), ("does not exist",), None),
    # Empty or unusable data.
    ("check-empty-time-axis", ("data", "check", "--config", "{data_config}", "--data", "{empty}"),
     ("time axis is empty",), None),
    ("stats-empty-time-axis", ("data", "stats", "--config", "{data_config}", "--data", "{empty}", "--out",
                               "{tmp}/s.nc"), ("time axis is empty",), None),
    ("forecast-empty-time-axis", ("forecast", "--checkpoint", "{run}", "--data", "{empty}", "--init", INIT,
                                  "--steps", "1", "--members", "1", "--out", "{tmp}/f.nc"),
     ("time axis is empty",), "step 1/"),
    ("evaluate-empty-truth", ("evaluate", "--forecast", "{persistence}", "--truth", "{empty}", "--out",
                              "{tmp}/s.nc"), ("has no times at all",), None),
    ("persistence-empty-truth", ("baseline", "persistence", "--truth", "{empty}", "--init", INIT, "--steps", "1",
                                 "--out", "{tmp}/p.nc"), ("no state at init time",), None),
    ("data-is-a-netcdf-file", ("data", "check", "--config", "{data_config}", "--data", "{junk}"),
     ("is a file, not a zarr store",), None),
    ("evaluate-forecast-not-netcdf", ("evaluate", "--forecast", "{junk}", "--truth", "{store}", "--out",
                                      "{tmp}/s.nc"), ("cannot read forecast",), None),
    ("evaluate-scores-as-forecast", ("evaluate", "--forecast", "{scores_persistence}", "--truth", "{store}",
                                     "--out", "{tmp}/s.nc"), ("not in the WB2 forecast layout",), None),
    ("scorecard-scores-not-netcdf", ("scorecard", "--scores", "{junk}", "--baseline", "{scores_persistence}",
                                     "--out", "{tmp}/sc"), ("cannot read scores file",), None),
    ("inspect-not-a-checkpoint", ("inspect", "{junk}"), ("neither a checkpoint",), None),
    ("forecast-checkpoint-empty-dir", ("forecast", "--checkpoint", "{dir}", "--data", "{store}", "--init", INIT,
                                       "--steps", "1", "--members", "1", "--out", "{tmp}/f.nc"),
     ("neither a checkpoint",), "forecasting"),
    ("distill-teacher-not-a-checkpoint", ("distill", "--config", "{distill}", "--teacher", "{junk}", "--data",
                                          "{store}", "--out", "{tmp}/d"), ("neither a checkpoint",), None),
    ("weights-verify-not-a-package", ("weights", "verify", "{dir}"), ("not a weights package",), None),
    ("weights-install-wrong-config", ("weights", "install", "{package}", "--config", "{tiny}", "--data", "{store}",
                                      "--out", "{tmp}/w"), ("differs from the weights package",), None),
    # Values out of range that click cannot know.
    ("climatology-negative-window", (*CLIMATOLOGY, "--out", "{tmp}/c.nc", "--window-days", "-3"),
     ("--window-days must be 0 or more",), None),
    ("climatology-zero-members", ("baseline", "climatology", "--truth", "{store}", "--init", INIT, "--steps", "1",
                                  "--members", "0", "--out", "{tmp}/c.nc"), ("--members",), None),
    ("persistence-backwards-range", ("baseline", "persistence", "--truth", "{store}", "--init",
                                     "2000-01-05T00..2000-01-04T00", "--steps", "1", "--out", "{tmp}/p.nc"),
     ("ends before it starts",), None),
    ("persistence-zero-range-spacing", ("baseline", "persistence", "--truth", "{store}", "--init",
                                        "2000-01-04T00..2000-01-05T00", "--init-every-hours", "0", "--steps", "1",
                                        "--out", "{tmp}/p.nc"), ("--init-every-hours",), None),
    ("persistence-range-not-a-time", ("baseline", "persistence", "--truth", "{store}", "--init",
                                      "2000-01-04..later", "--steps", "1", "--out", "{tmp}/p.nc"),
     ("is not an ISO time",), None),
    ("persistence-zero-steps", ("baseline", "persistence", "--truth", "{store}", "--init", INIT, "--steps", "0",
                                "--out", "{tmp}/p.nc"), ("--steps",), None),
    ("simulate-zero-members", ("data", "simulate", "--config", "{data_config}", "--out", "{tmp}/s.zarr",
                               "--members", "0"), ("--members",), "spin"),
    ("simulate-zero-steps-with-reference", ("data", "simulate", "--config", "{data_config}", "--out",
                                            "{tmp}/s.zarr", "--reference-out", "{tmp}/r.nc", "--init", INIT,
                                            "--steps", "0"), ("--steps",), "spin"),
    ("simulate-without-simulation-section", ("data", "simulate", "--config",
                                             str(REPO / "configs" / "data" / "era5_wb2_64x32.yaml"), "--out",
                                             "{tmp}/s.zarr"), ("no data.simulation section",), None),
    ("forecast-init-outside-store", ("forecast", "--checkpoint", "{run}", "--data", "{store}", "--init",
                                     "2001-01-01", "--steps", "1", "--members", "1", "--out", "{tmp}/f.nc"),
     ("has no complete window",), "step 1/"),
    ("forecast-unknown-sampler-key", (*FORECAST, "--out", "{tmp}/f.nc", "--sampler", "nonsense=1"),
     ("nonsense: unknown key",), "forecasting"),
    ("forecast-sampler-value-not-a-number", (*FORECAST, "--out", "{tmp}/f.nc", "--sampler", "churn=abc"),
     ("churn",), "forecasting"),
    ("evaluate-unknown-region", (*EVALUATE, "--out", "{tmp}/s.nc", "--regions", "mars"), ("unknown region",), None),
    ("evaluate-unknown-variable", (*EVALUATE, "--out", "{tmp}/s.nc", "--variables", "vorticity"),
     ("vorticity",), None),
    ("evaluate-unknown-member-dim", (*EVALUATE, "--out", "{tmp}/s.nc", "--member-dim", "ensemble"),
     ("--member-dim",), None),
    ("evaluate-scheduler-unknown-scheme", (*EVALUATE, "--out", "{tmp}/s.nc", "--dask-scheduler", "carrier://x"),
     ("--dask-scheduler", "unknown scheme"), None),
    ("scorecard-unknown-region", (*SCORECARD, "--out", "{tmp}/sc", "--region", "mars"), ("unknown region",), None),
    ("compare-too-few-draws", ("compare", "{climatology}", "--baseline", "{persistence}", "--truth", "{store}",
                               "--draws", "5"), ("--draws",), None),
    ("speed-model-without-label", ("pipeline", "task", "speed", "--model", "{run}", "--out", "{tmp}/s.json",
                                   "--timing-out", "{tmp}/t.json"), ("LABEL=CHECKPOINT_OR_RUN",), None),
    ("speed-model-label-twice", ("pipeline", "task", "speed", "--model", "a={run}", "--model", "a={run}", "--out",
                                 "{tmp}/s.json", "--timing-out", "{tmp}/t.json"), ("used once",), None),
    ("speed-model-malformed-file", ("pipeline", "task", "speed", "--model", "a={junk}", "--out", "{tmp}/s.json",
                                    "--timing-out", "{tmp}/t.json"), ("neither a checkpoint",), None),
    ("pipeline-status-no-manifest", ("pipeline", "status", "{dir}"), ("no manifest.json",), None),
    ("scorecard-forecast-as-scores", ("scorecard", "--scores", "{persistence}", "--baseline", "{scores_persistence}",
                                      "--out", "{tmp}/sc"), ("holds no scores",), None),
    ("forecast-same-init-twice", (*FORECAST, "--init", "2000-01-04T00:00", "--out", "{tmp}/f.nc"),
     ("given more than once",), "forecasting"),
    ("forecast-sampler-without-value", (*FORECAST, "--out", "{tmp}/f.nc", "--sampler", "churn"),
     ("expected key=value",), "forecasting"),
    ("inspect-empty-directory", ("inspect", "{dir}"), ("neither a checkpoint",), None),
    ("pipeline-set-unknown-key", ("pipeline", "run", "{pipeline}", "--workdir", "{tmp}/w", "--set", "bogus.key=1"),
     ("bogus: unknown key",), None),
    ("train-set-out-of-range", ("train", "--config", "{tiny}", "--data", "{store}", "--out", "{tmp}/r", "--set",
                                "train.steps=-5"), ("train.steps",), "training teacher"),
    ("distill-set-unknown-key", ("distill", "--config", "{distill}", "--teacher", "{run}", "--data", "{store}",
                                 "--out", "{tmp}/d", "--set", "distill.nonsense=1"), ("distill.nonsense",), None),
    ("stats-split-selects-nothing", (*STATS, "--out", "{tmp}/s.nc", "--set", "data.splits.train.fraction=[0.0,0.01]"),
     ("selects no time",), "computing"),
]


@pytest.mark.parametrize("case, args, phrases, not_started", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_exit_2(run_cli, paths, case, args, phrases, not_started):
    before = sorted(Path(paths["tmp"]).rglob("*"))
    result = run_cli(*(arg.format(**paths) for arg in args))
    assert_bad_input(result, *phrases)
    if not_started:
        assert not_started not in result.err, f"{case}: refused only after long work started\n{result.err}"
    assert sorted(Path(paths["tmp"]).rglob("*")) == before, f"{case}: files were written"
    assert Path(paths["file"]).read_text() == "not a directory"


def test_an_unreachable_scheduler_is_refused_at_once(run_cli, paths):
    """A dask Client retries for 30 s, then raises OSError (exit 1): the address is probed first."""
    from evaluation.cli import check_scheduler_reachable

    started = time.monotonic()
    with pytest.raises(Exception, match="cannot connect"):
        check_scheduler_reachable("tcp://127.0.0.1:9")
    assert time.monotonic() - started < 5.0
    result = run_cli(*(arg.format(**paths) for arg in EVALUATE), "--out", f"{paths['tmp']}/s.nc",
                     "--dask-scheduler", "tcp://127.0.0.1:9")
    assert_bad_input(result, "--dask-scheduler tcp://127.0.0.1:9", "cannot connect")


def test_an_all_nan_forecast_variable_is_not_scored_silently(run_cli, made, store, tmp_path):
    """A forecast file with a NaN field (a rollout that turned NaN, written by another tool) gave NaN scores, exit 0."""
    forecast = xr.open_dataset(made["persistence"]).load()
    forecast["temperature"][:] = np.nan
    forecast.to_netcdf(tmp_path / "nan.nc")
    out = tmp_path / "scores.nc"
    result = run_cli("evaluate", "--forecast", tmp_path / "nan.nc", "--truth", store, "--out", out, "--no-progress")
    assert_bad_input(result, "temperature cannot be scored at 26 field(s), first lead +12 h, level 50")
    assert not out.exists()


def test_a_damaged_weights_package_is_refused(run_cli, tmp_path):
    package = Path(shutil.copytree(DEMO_PACKAGE, tmp_path / "package"))
    arrays = bytearray((package / "weights.npz").read_bytes())
    arrays[len(arrays) // 2] ^= 0xFF
    (package / "weights.npz").write_bytes(bytes(arrays))
    assert_bad_input(run_cli("weights", "verify", package), "weights.npz cannot be read", "damaged")
    (package / "weights.json").write_text('{"params_sha256": ')
    assert_bad_input(run_cli("weights", "verify", package), "weights.json is not valid JSON")


def test_unreadable_array_metadata_names_the_store(run_cli, simulated_copy):
    (simulated_copy / ".zmetadata").unlink()
    (simulated_copy / "temperature" / ".zarray").write_text("{garbage")
    result = run_cli("data", "check", "--config", TEST_DATA_CONFIG, "--data", simulated_copy)
    assert_bad_input(result, f"cannot open {simulated_copy} as a zarr store")


# --- manifests of the wrong JSON structure ---------------------------------------------------------------------

@pytest.mark.parametrize("content, phrase", [
    ("[1, 2]", "a JSON list, not an object"),
    ('"manifest"', "a JSON str, not an object"),
    ('{"stages": [1]}', "'stages' is not an object"),
    ('{"stages": {"teacher": 3}}', "'stages' is not an object of stage records"),
    ('{"stages": {}, "runs": {"a": 1}}', "'runs' is not a list"),
    ("{truncated", "not a readable manifest"),
], ids=["list", "string", "stages-list", "stage-not-a-record", "runs-dict", "not-json"])
def test_a_manifest_of_the_wrong_structure_is_refused(run_cli, tmp_path, content, phrase):
    (tmp_path / "manifest.json").write_text(content)
    assert_bad_input(run_cli("pipeline", "status", tmp_path), "manifest.json", phrase)
    assert (tmp_path / "manifest.json").read_text() == content


def test_pipeline_run_refuses_a_broken_manifest_without_touching_it(run_cli, tmp_path):
    (tmp_path / "manifest.json").write_text("[]")
    result = run_cli("pipeline", "run", TINY_PIPELINE, "--workdir", tmp_path)
    assert_bad_input(result, "not a gencast-rmmd manifest")
    assert (tmp_path / "manifest.json").read_text() == "[]" and not (tmp_path / ".lock").exists()


# --- forecasts that would be NaN ------------------------------------------------------------------------------

def test_a_missing_input_frame_is_refused_naming_init_and_variable(run_cli, truth, demo_teacher_run, tmp_path):
    """The SST land-fill path would turn a NaN frame into a forecast that is 100 % NaN for that variable."""
    damaged = truth.copy(deep=True)
    damaged["temperature"][damaged.indexes["time"].get_loc(pd.Timestamp(INIT))] = np.nan
    store = _write_store(damaged, tmp_path / "nan_frame.zarr")
    out = tmp_path / "f.nc"
    result = run_cli("forecast", "--checkpoint", demo_teacher_run, "--data", store, "--init", INIT, "--steps", "1",
                     "--members", "1", "--out", out)
    assert_bad_input(result, "init 2000-01-04 00:00:00", "temperature at 50 hPa is entirely NaN",
                     "input frame at 2000-01-04 00:00:00")
    assert not out.exists() and "step 1/" not in result.err


def test_a_nan_patch_in_the_earlier_input_frame_is_refused(run_cli, truth, demo_teacher_run, tmp_path):
    damaged = truth.copy(deep=True)
    earlier = damaged.indexes["time"].get_loc(pd.Timestamp(INIT) - pd.Timedelta(hours=12))
    damaged["2m_temperature"][earlier, :5, :5] = np.nan
    store = _write_store(damaged, tmp_path / "nan_patch.zarr")
    result = run_cli("forecast", "--checkpoint", demo_teacher_run, "--data", store, "--init", INIT, "--steps", "1",
                     "--members", "1", "--out", tmp_path / "f.nc")
    assert_bad_input(result, "2m_temperature has NaN where another input frame has values",
                     "2000-01-03 12:00:00")


def test_a_fixed_nan_mask_such_as_sst_over_land_is_accepted():
    """NaN at the same points in every frame (SST over land) is the field's mask, not missing data."""
    from gencast_rmmd.data.layout import Channel
    from gencast_rmmd.forecast.rollout import check_inputs_present

    frames = np.ones((1, 2, 4, 8, 2), np.float32)
    frames[..., :2, :, 1] = np.nan
    inits = pd.DatetimeIndex([INIT])
    times = np.array([[np.datetime64("2000-01-03T12"), np.datetime64(INIT)]])
    check_inputs_present(frames, (Channel("2m_temperature"), Channel("sea_surface_temperature")), inits, times)
    frames[0, 1, 3, 0, 1] = np.nan
    with pytest.raises(Exception, match="sea_surface_temperature has NaN where another input frame"):
        check_inputs_present(frames, (Channel("2m_temperature"), Channel("sea_surface_temperature")), inits, times)


def test_nan_arising_in_the_rollout_fails_naming_variable_and_lead():
    from gencast_rmmd.data.layout import Channel
    from gencast_rmmd.errors import UserInputError
    from gencast_rmmd.forecast.rollout import check_prediction_finite

    channels = (Channel("2m_temperature"), Channel("temperature", 850), Channel("sea_surface_temperature"))
    prediction = np.ones((2, 1, 4, 8, 3), np.float32)            # [member, init, lat, lon, channel]
    expected = np.zeros(prediction.shape, bool)
    expected[..., :2, :, 2] = True
    prediction[..., :2, :, 2] = np.nan                             # SST over land: expected
    check_prediction_finite(prediction, expected, channels, pd.DatetimeIndex([INIT]), pd.Timedelta(hours=24))
    prediction[1, 0, 3, 2, 1] = np.inf
    with pytest.raises(UserInputError, match=r"temperature at 850 hPa at lead \+24 h is NaN or infinite at 1 "
                                             r"points .* member 1\)"):
        check_prediction_finite(prediction, expected, channels, pd.DatetimeIndex([INIT]), pd.Timedelta(hours=24))


def test_a_rollout_that_turns_nan_writes_nothing(run_cli, monkeypatch, demo_teacher_run, store, tmp_path):
    """End to end: a predictor whose sample is NaN exits 2 naming variable and lead; the old file stays."""
    import jax.numpy as jnp

    from gencast_rmmd.forecast import predictor as predictor_module

    def poisoned(self, params, inputs, forcings, static, key):   # no network: compiles in a moment
        return jnp.full((*inputs.shape[:-1], self.normalizer.target_scale.shape[0]), jnp.nan)

    monkeypatch.setattr(predictor_module.Predictor, "sample", poisoned)
    out = tmp_path / "f.nc"
    out.write_bytes(b"previous")
    result = run_cli(*(arg.format(run=demo_teacher_run, store=store) for arg in FORECAST), "--out", out)
    assert_bad_input(result, "the forecast is not finite", "at lead +12 h")
    assert out.read_bytes() == b"previous"
    assert [path.name for path in tmp_path.iterdir()] == ["f.nc"]


# --- disks that fill up ----------------------------------------------------------------------------------------

def test_disk_full_while_writing_stats_says_so_and_keeps_the_old_file(run_cli, monkeypatch, store, tmp_path):
    import xarray.core.dataset as dataset_module

    def full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(dataset_module.Dataset, "to_netcdf", full)
    out = tmp_path / "stats.nc"
    out.write_bytes(b"previous")
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", store, "--out", out)
    assert_bad_input(result, f"no space left on device writing {out}")
    assert out.read_bytes() == b"previous" and [path.name for path in tmp_path.iterdir()] == ["stats.nc"]


def _hdf_error(self, path, *args, **kwargs):
    Path(path).write_bytes(b"partial")
    raise RuntimeError("NetCDF: HDF error")


def test_an_hdf_error_on_a_full_disk_is_reported_as_a_full_disk(run_cli, monkeypatch, store, tmp_path):
    """netCDF says only "NetCDF: HDF error" when the disk fills: the free space decides."""
    import xarray.core.dataset as dataset_module

    from gencast_rmmd import io_utils

    monkeypatch.setattr(dataset_module.Dataset, "to_netcdf", _hdf_error)
    monkeypatch.setattr(io_utils.shutil, "disk_usage", lambda path: DiskUsage(10 << 30, 10 << 30, 0))
    out = tmp_path / "s.nc"
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", store, "--out", out)
    assert_bad_input(result, f"no space left on device writing {out}")
    assert list(tmp_path.iterdir()) == []


def test_an_hdf_error_with_space_left_stays_an_internal_error(run_cli, monkeypatch, store, tmp_path):
    import xarray.core.dataset as dataset_module

    monkeypatch.setattr(dataset_module.Dataset, "to_netcdf", _hdf_error)
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", store, "--out", tmp_path / "s.nc")
    assert result.code == 1 and "internal error: RuntimeError: NetCDF: HDF error" in result.err
    assert list(tmp_path.iterdir()) == []


def test_disk_full_outside_an_atomic_write_is_one_line(run_cli, monkeypatch, store, tmp_path):
    """A write that is not a file replacement (a log line) hitting ENOSPC is still bad input, exit 2."""
    from gencast_rmmd.data import stats

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "log.txt"))

    monkeypatch.setattr(stats, "compute_stats", full)
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", store, "--out", tmp_path / "s.nc")
    assert_bad_input(result, f"no space left on device writing {tmp_path / 'log.txt'}")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (needs permission to mount: root in a container); unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                                                        str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)   # a failed write may still hold a handle


def test_a_real_full_disk_keeps_the_previous_forecast(run_cli, store, tiny_disk):
    out = tiny_disk / "persistence.nc"
    out.write_bytes(b"previous")
    result = run_cli("baseline", "persistence", "--truth", store, "--init", INIT, "--steps", "2", "--out", out)
    assert_bad_input(result, f"no space left on device writing {out}")
    assert out.read_bytes() == b"previous" and [path.name for path in tiny_disk.iterdir()] == ["persistence.nc"]


# --- a scorecard rerun that fails leaves the previous scorecard whole --------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def scorecard_made(made, tmp_path_factory) -> Path:
    from gencast_rmmd.cli import main

    out = tmp_path_factory.mktemp("scorecard") / "scorecard"
    assert main(["scorecard", "--scores", str(made["scores_climatology"]), "--baseline",
                 str(made["scores_persistence"]), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["index.html", "scorecard.png", "summary.md"]
    return out


@pytest.fixture
def scorecard_dir(scorecard_made, tmp_path) -> Path:
    """A private copy of a scorecard the project wrote."""
    return Path(shutil.copytree(scorecard_made, tmp_path / "scorecard"))


def test_a_scorecard_rerun_with_a_bad_timing_file_replaces_nothing(run_cli, made, scorecard_dir, tmp_path):
    before = _snapshot(scorecard_dir)
    (tmp_path / "timing.json").write_text('{"climatology": ')
    result = run_cli("scorecard", "--scores", made["scores_climatology"], "--baseline", made["scores_persistence"],
                     "--out", scorecard_dir, "--timing", tmp_path / "timing.json")
    assert_bad_input(result, "timing.json")
    assert _snapshot(scorecard_dir) == before


def test_a_scorecard_rerun_failing_after_the_png_replaces_nothing(run_cli, made, scorecard_dir, monkeypatch):
    """The PNG is rendered first: if the page then fails, the old PNG, page and summary all stay."""
    from evaluation import report

    before = _snapshot(scorecard_dir)

    def broken(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(report, "_write_markdown", broken)
    result = run_cli("scorecard", "--scores", made["scores_persistence"], "--baseline", made["scores_climatology"],
                     "--out", scorecard_dir)
    assert result.code == 1
    assert _snapshot(scorecard_dir) == before


def test_a_scorecard_rerun_replaces_all_three_files(run_cli, made, scorecard_dir):
    before = _snapshot(scorecard_dir)
    assert run_cli("scorecard", "--scores", made["scores_persistence"], "--baseline", made["scores_climatology"],
                   "--out", scorecard_dir).code == 0
    after = _snapshot(scorecard_dir)
    assert all(after[name] != before[name] for name in before)


# --- atomic writes themselves ------------------------------------------------------------------------------------

def test_atomic_path_refuses_a_file_over_a_directory_and_the_reverse(tmp_path):
    from gencast_rmmd.errors import UserInputError
    from gencast_rmmd.io_utils import atomic_path

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("kept")
    with pytest.raises(UserInputError, match="existing directory and the output is a file"):
        with atomic_path(tmp_path / "d") as temporary:
            temporary.write_text("x")
    (tmp_path / "f").write_text("kept")
    with pytest.raises(UserInputError, match="existing file and the output is a directory"):
        with atomic_path(tmp_path / "f") as temporary:
            temporary.mkdir()
    assert (tmp_path / "d" / "keep").read_text() == "kept" and (tmp_path / "f").read_text() == "kept"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d", "f"]


def test_atomic_path_under_a_file_names_the_file(tmp_path):
    from gencast_rmmd.errors import UserInputError
    from gencast_rmmd.io_utils import write_json_atomic

    (tmp_path / "f").write_text("kept")
    with pytest.raises(UserInputError, match=f"{tmp_path / 'f'} is a file, not a directory"):
        write_json_atomic(tmp_path / "f" / "sub" / "x.json", {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_output_in_a_read_only_directory_is_refused_before_work(run_cli, store, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", store, "--out", locked / "s.nc")
    assert_bad_input(result, "permission denied")
