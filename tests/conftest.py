"""Shared fixtures: synthetic WB2-layout stores and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wb2_stores import era5_like, six_hourly, write_store

REPO = Path(__file__).resolve().parent.parent
TEST_DATA_CONFIG = REPO / "configs" / "data" / "test.yaml"
TINY_TEACHER = REPO / "configs" / "teacher" / "tiny.yaml"
TWO_LEVELS = "data.levels=[500,850]"          # the levels of `wb2_store`


@pytest.fixture(scope="session")
def wb2_dataset():
    """Ten days of 6-hourly synthetic ERA5-like data on the WB2 64x32 grid, levels 500 and 850."""
    return era5_like(six_hourly(days=10), levels=(500, 850), extra_surface=("sea_surface_temperature",))


@pytest.fixture(scope="session")
def wb2_store(tmp_path_factory, wb2_dataset):
    """`wb2_dataset` written in the WB2 64x32 layout (time, level, longitude, latitude)."""
    return write_store(wb2_dataset, tmp_path_factory.mktemp("stores") / "era5_64x32.zarr", "64x32")


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """configs/data/test.yaml simulated once (`data simulate`'s code, a fresh cache): (result, cache).

    A store made by the project: tests that damage it work on a copy (`simulated_copy`).
    """
    from gencast_rmmd.config import DataFileConfig, load_config
    from gencast_rmmd.data.simulator import TrajectoryCache, simulate_store

    simulation = load_config(TEST_DATA_CONFIG, DataFileConfig).data.simulation
    cache = TrajectoryCache.for_config(simulation, tmp_path_factory.mktemp("simulator-cache"))
    result = simulate_store(simulation, tmp_path_factory.mktemp("stores") / "test.zarr", cache, log=lambda _: None)
    return result, cache


@pytest.fixture
def simulated_copy(simulated, tmp_path) -> Path:
    """A private copy of the simulated store, to damage."""
    import shutil

    return Path(shutil.copytree(simulated[0].path, tmp_path / "copy.zarr"))


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory, wb2_store):
    """A tiny teacher (one transformer layer, for quick compiles) trained for 2 steps on `wb2_store`, shared by
    the distillation tests of every module of a session (plumbing needs no good teacher)."""
    from gencast_rmmd.cli import main
    run = tmp_path_factory.mktemp("distill_teacher") / "teacher"
    assert main(["train", "--config", str(TINY_TEACHER), "--data", str(wb2_store),
                 "--set", TWO_LEVELS, "--set", "train.steps=2", "--set", "train.warmup_steps=0",
                 "--set", "train.checkpoint_every=2", "--set", "model.processor.num_layers=1",
                 "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def demo_teacher_run(simulated, tmp_path_factory) -> Path:
    """The shipped demo teacher installed as a run on the simulated store (`weights install`; no training)."""
    from gencast_rmmd.cli import main

    run = tmp_path_factory.mktemp("demo-teacher") / "run"
    assert main(["weights", "install", str(REPO / "gencast_rmmd" / "teacher" / "pretrained" / "demo"),
                 "--config", str(REPO / "configs" / "teacher" / "demo.yaml"), "--data", str(simulated[0].path),
                 "--out", str(run)]) == 0
    return run


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture(scope="module")
def dask_scheduler():
    """A LocalCluster in this process (threads), reachable over TCP by the evaluate stages."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pipeline_args(wb2_store, dask_scheduler):
    """Arguments shared by every pipeline run of a module: the store, 2 CPU devices, the cluster.

    Runs use the default persistent compilation cache (~/.cache/gencast_rmmd/jax):
    it only ever replaces a compilation by its identical result.
    """
    return ["--data", str(wb2_store), "--set", "distributed.cpu_devices=2",
            "--set", f"evaluate.dask_scheduler={dask_scheduler.scheduler_address}"]


@pytest.fixture
def run_cli(capsys):
    """Run `gencast-rmmd ARGS...` in-process; returns exit code, stdout and stderr."""
    from gencast_rmmd.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True)
def _quiet_dask(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
