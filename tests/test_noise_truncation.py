"""`noise.max_wavenumber` / `spectral_exponent`: one diffusion noise for training, the checkpoint and every sampler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import xarray as xr

from conftest import REPO
from gencast_rmmd.diffusion.student_sampler import StudentSamplerConfig
from gencast_rmmd.forecast.build import predictor_from_card
from gencast_rmmd.training import load_checkpoint
from gencast_rmmd.training.card import read_card

TINY = REPO / "configs" / "teacher" / "tiny.yaml"
SETS = ["--set", "data.levels=[500,850]", "--set", "train.steps=4", "--set", "train.warmup_steps=1",
        "--set", "train.checkpoint_every=4", "--set", "train.log_every=2"]


def predictor_from(payload: dict):
    """The predictor a checkpoint's `meta["task"]` rebuilds, read as every reader reads it (`read_card`)."""
    return predictor_from_card(read_card({"task": payload}))


@pytest.fixture(scope="module")
def truncated_run(tmp_path_factory, wb2_store):
    from gencast_rmmd.cli import main
    run = tmp_path_factory.mktemp("truncated") / "run"
    assert main(["train", "--config", str(TINY), "--data", str(wb2_store), *SETS,
                 "--set", "noise.max_wavenumber=10", "--set", "noise.spectral_exponent=1.5", "--out", str(run)]) == 0
    return run


def test_the_checkpoint_and_its_samplers_carry_the_noise_spec(truncated_run):
    payload = load_checkpoint(truncated_run).meta["task"]
    assert payload["grid"]["noise"] == {"max_wavenumber": 10, "spectral_exponent": 1.5}
    assert predictor_from(payload).sampler.noise.spec == payload["grid"]["noise"]
    student = copy.deepcopy(payload)   # a student's payload copies its teacher's grid
    student["sampler"] = {"name": "student_kstep", "config": StudentSamplerConfig(steps=2).model_dump(mode="json"),
                          "nfe_per_step": 2}
    assert predictor_from(student).sampler.noise.spec == payload["grid"]["noise"]
    older = copy.deepcopy(payload)     # checkpoints from before the option: the grid's own truncation
    del older["grid"]["noise"]
    assert predictor_from(older).sampler.noise.spec == {"max_wavenumber": 31, "spectral_exponent": 0.0}


def test_the_default_is_the_grids_resolvable_wavenumber(run_cli, wb2_store, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--config", TINY, "--data", wb2_store, *SETS, "--out", run).code == 0
    assert load_checkpoint(run).meta["task"]["grid"]["noise"] == {"max_wavenumber": 31, "spectral_exponent": 0.0}


def test_truncated_teacher_forecasts(run_cli, truncated_run, wb2_store, tmp_path):
    out = tmp_path / "forecast.nc"
    result = run_cli("forecast", "--checkpoint", truncated_run, "--data", wb2_store, "--init", "2001-01-08T00",
                     "--steps", "1", "--members", "2", "--out", out)
    assert result.code == 0, result.err
    assert np.all(np.isfinite(xr.open_dataset(out)["geopotential"].values))


def test_a_truncation_the_grid_cannot_hold_is_bad_input(run_cli, wb2_store, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--config", TINY, "--data", wb2_store, *SETS, "--set", "noise.max_wavenumber=40",
                     "--out", run)
    assert result.code == 2 and "noise.max_wavenumber 40 is above 31" in result.err
    assert "Traceback" not in result.err and not run.exists()
    result = run_cli("train", "--config", TINY, "--data", wb2_store, *SETS, "--set", "noise.max_wavenumber=0",
                     "--out", run)
    assert result.code == 2 and "max_wavenumber" in result.err and not run.exists()
