"""The tiny teacher end to end on a WB2-layout store: train, resume, inspect, forecast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from conftest import REPO

TINY = REPO / "configs" / "teacher" / "tiny.yaml"
LEVELS = "data.levels=[500,850]"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, wb2_store):
    """A tiny teacher trained for 20 steps on the WB2-layout store."""
    from gencast_rmmd.cli import main
    run = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", "--config", str(TINY), "--data", str(wb2_store), "--set", LEVELS, "--out", str(run)]) == 0
    return run


def test_training_learns_and_checkpoints(tiny_run, wb2_store):
    """20 steps move every parameter array away from the run's initialisation and lower the denoising loss on
    fixed validation batches and keys by a quarter or more (measured: 15.3 -> 6.5); an optimiser that applied
    no update would fail both."""
    import itertools

    import jax

    from gencast_rmmd.config import load_config
    from gencast_rmmd.data.normalization import Normalizer
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.data.stats import load_stats
    from gencast_rmmd.teacher.config import TeacherConfig
    from gencast_rmmd.data.batches import batch_stream
    from gencast_rmmd.teacher.train import teacher_task
    from gencast_rmmd.training import load_checkpoint
    from gencast_rmmd.training.state import root_keys

    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [5, 10, 15, 20]
    assert all(np.isfinite(line["loss"]) for line in lines)
    assert sorted(path.name for path in (tiny_run / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]
    assert (tiny_run / "stats.nc").exists()

    config = load_config(TINY, TeacherConfig, [LEVELS], str(wb2_store))
    source = DataSource.open(config.data)
    task = teacher_task(config, source, Normalizer.from_stats(load_stats(tiny_run / "stats.nc"), source.layout))
    batches = list(itertools.islice(batch_stream(source, "validation", config.train.batch_size)(0), 4))
    initial = task.init(root_keys(config.seed)[2], batches[0]).params   # as the loop initialised the run
    trained = load_checkpoint(tiny_run).params
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                         initial, trained))
    assert len(moved) > 50 and min(moved) > 1e-4, sorted(moved)[:5]
    loss = jax.jit(lambda params, key, batch: task.validation_loss(params, {}, key, batch)[0])

    def mean_loss(params) -> float:
        return float(np.mean([loss(params, jax.random.PRNGKey(index), batch) for batch in batches
                              for index in range(4)]))

    before, after = mean_loss(initial), mean_loss(trained)
    assert after < 0.75 * before, (before, after)


def test_inspect_json(run_cli, tiny_run):
    result = run_cli("inspect", tiny_run, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["step"] == 20 and summary["nfe_per_step"] == 39 and summary["param_count"] > 1000
    assert len(summary["params_sha256"]) == 64 and summary["kind"] == "teacher"
    assert summary["config"]["model"]["mesh_refinement"] == 2


def test_inspect_big_configs_without_training(run_cli, tmp_path):
    for name in ("gencast_1p0_mini", "gencast_0p25"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"data: configs/data/era5_wb2_64x32.yaml\nmodel: configs/model/{name}.yaml\n")
        result = run_cli("inspect", config, "--json")
        assert result.code == 0, result.err
        assert json.loads(result.out)["param_count"] > 40_000_000


def test_resume_reaches_the_same_parameters(run_cli, tiny_run, tmp_path, wb2_store):
    run = tmp_path / "split"
    common = ["--config", TINY, "--data", wb2_store, "--set", LEVELS, "--out", run]
    assert run_cli("train", *common, "--set", "train.steps=20", "--set", "train.checkpoint_every=10").code == 0
    # Kill-free version of an interrupted run: drop the last checkpoint, resume to the end.
    import shutil
    shutil.rmtree(run / "checkpoints" / "step_00000020")
    assert run_cli("train", *common, "--resume").code == 0
    hashes = [json.loads(run_cli("inspect", path, "--json").out)["params_sha256"] for path in (run, tiny_run)]
    assert hashes[0] == hashes[1]


def test_resume_falls_back_past_a_truncated_latest_checkpoint(run_cli, tiny_run, tmp_path, wb2_store):
    """`train --resume` with a truncated newest checkpoint says which it skipped and ends where an uninterrupted run does."""
    run = tmp_path / "split"
    common = ["--config", TINY, "--data", wb2_store, "--set", LEVELS, "--out", run]
    assert run_cli("train", *common, "--set", "train.steps=20", "--set", "train.checkpoint_every=10").code == 0
    arrays = run / "checkpoints" / "step_00000020" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:1000])
    result = run_cli("inspect", run, "--json")
    assert result.code == 2 and result.err.startswith(f"error: {arrays} cannot be read"), result.err
    result = run_cli("train", *common, "--resume")
    assert result.code == 0, result.err
    assert f"skipped the corrupt checkpoint {arrays.parent}" in result.out + result.err
    hashes = [json.loads(run_cli("inspect", path, "--json").out)["params_sha256"] for path in (run, tiny_run)]
    assert hashes[0] == hashes[1]


def _snapshot(directory):
    """Every file under `directory` with its bytes' hash and modification time."""
    import hashlib

    return {path: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


def test_refuses_to_overwrite_a_run(run_cli, tiny_run, wb2_store):
    """`train` or `distill` into a run directory that holds something, without --resume: one line, exit 2,
    every file as it was. The commands own this check (`check_run_dir`); the loop continues what it is given."""
    before = _snapshot(tiny_run)
    result = run_cli("train", "--config", TINY, "--data", wb2_store, "--set", LEVELS, "--out", tiny_run)
    refusal = f"error: {tiny_run} already holds a run; pass --resume to continue or choose another --out"
    assert result.code == 2 and result.err.splitlines()[-1] == refusal, result.err
    result = run_cli("distill", "--config", REPO / "configs" / "distill" / "tiny.yaml", "--teacher", tiny_run,
                     "--data", wb2_store, "--out", tiny_run)
    assert result.code == 2 and result.err.splitlines() == [refusal], result.err
    assert _snapshot(tiny_run) == before


def test_a_typo_in_the_loss_weights_is_refused_before_any_work(run_cli, wb2_store, tmp_path):
    """A `loss.variable_weights` name that is no target variable: one line naming it and the targets, exit 2,
    before statistics or graphs (it was an internal error, exit 1, at the first traced loss)."""
    run = tmp_path / "run"
    result = run_cli("train", "--config", TINY, "--data", wb2_store, "--set", LEVELS,
                     "--set", "loss.variable_weights.2m_temprature=0.5", "--out", run)
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    assert "loss.variable_weights names 2m_temprature" in result.err and "use one of 2m_temperature" in result.err
    assert not run.exists()


def test_forecast_writes_a_valid_ensemble(run_cli, tiny_run, wb2_store, tmp_path):
    out = tmp_path / "forecast.nc"
    result = run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", "2001-01-08T00",
                     "--init", "2001-01-08T12", "--steps", "2", "--members", "3", "--out", out)
    assert result.code == 0, result.err
    forecast = xr.open_dataset(out)
    assert forecast.attrs["Conventions"] == "CF-1.8" and forecast.attrs["nfe_per_step"] == 39
    assert forecast["temperature"].dims == ("time", "prediction_timedelta", "number", "level", "latitude",
                                            "longitude")
    assert forecast.sizes["number"] == 3 and forecast["temperature"].attrs["units"] == "K"
    assert (forecast["valid_time"].values[1, 1] == np.datetime64("2001-01-09T12:00"))
    values = forecast["temperature"].values
    assert np.all(np.isfinite(values))
    assert float(forecast["temperature"].std("number").mean()) > 0.0, "members must differ"
    truth_scale = float(xr.open_zarr(wb2_store)["temperature"].std())
    assert float(np.abs(values - values.mean()).max()) < 50 * truth_scale


def test_forecast_to_zarr_holds_the_netcdf_values_and_both_pass_the_cf_checkers(run_cli, tiny_run, wb2_store,
                                                                                tmp_path):
    """`--out F.zarr`: the same forecast as `--out F.nc`, in a store WB2's `xr.open_zarr` reads; CF-1.8 clean."""
    from cf_checkers import assert_cf_clean

    arguments = ("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", "2001-01-08T00",
                 "--steps", "2", "--members", "2")
    for suffix in ("nc", "zarr"):
        result = run_cli(*arguments, "--out", tmp_path / f"forecast.{suffix}")
        assert result.code == 0, result.err
    store = xr.open_zarr(tmp_path / "forecast.zarr")
    with xr.open_dataset(tmp_path / "forecast.nc") as netcdf:
        assert set(store.data_vars) == set(netcdf.data_vars) and store.attrs["nfe_per_step"] == 39
        for name in netcdf.data_vars:
            np.testing.assert_array_equal(store[name].values, netcdf[name].values)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forecast.nc", "forecast.zarr"]
    scratch = tmp_path / "checks"
    scratch.mkdir()
    for suffix in ("nc", "zarr"):
        assert_cf_clean(tmp_path / f"forecast.{suffix}", scratch)


def test_members_do_not_depend_on_ensemble_size(run_cli, tiny_run, wb2_store, tmp_path):
    outputs = []
    for members in (2, 3):
        out = tmp_path / f"m{members}.nc"
        assert run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", "2001-01-08T00",
                       "--steps", "2", "--members", str(members), "--out", out).code == 0
        outputs.append(xr.open_dataset(out)["geopotential"].values)
    np.testing.assert_allclose(outputs[0], outputs[1][:, :, :2], rtol=1e-5, atol=1e-3)



def test_members_do_not_depend_on_the_batch_size(run_cli, tiny_run, wb2_store, tmp_path):
    """6 (member, init) samples in chunks of 1, 4 (one ragged chunk) and 6 give the same forecast."""
    outputs = []
    for batch_size in (1, 4, 6):
        out = tmp_path / f"b{batch_size}.nc"
        assert run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", "2001-01-08T00",
                       "--init", "2001-01-08T12", "--steps", "2", "--members", "3", "--batch-size",
                       str(batch_size), "--out", out).code == 0
        outputs.append(xr.open_dataset(out)["geopotential"].values)
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-3)
    assert np.abs(outputs[0][:, :, 0] - outputs[0][:, :, 1]).max() > 1.0, "members must differ"


def test_forecast_in_parallel_jobs_equals_one_forecast(run_cli, tiny_run, wb2_store, tmp_path):
    """`forecast --jobs 2` (contiguous groups of inits in two processes, merged along `time`) equals one
    process's forecast, leaves no part behind, and refuses an init given twice before any work."""
    inits = ["2001-01-08T00", "2001-01-08T12", "2001-01-09T00"]
    common = ("forecast", "--checkpoint", tiny_run, "--data", wb2_store,
              *[x for init in inits for x in ("--init", init)], "--steps", "2", "--members", "2")
    whole, grouped = tmp_path / "whole.nc", tmp_path / "grouped.nc"
    assert run_cli(*common, "--out", whole).code == 0
    result = run_cli(*common, "--jobs", "2", "--out", grouped)
    assert result.code == 0, result.err
    assert "in 2 processes" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grouped.nc", "whole.nc"]
    with xr.open_dataset(whole) as one, xr.open_dataset(grouped) as merged:
        assert merged["geopotential"].dims == one["geopotential"].dims
        np.testing.assert_array_equal(merged["time"].values, one["time"].values)
        np.testing.assert_array_equal(merged["valid_time"].values, one["valid_time"].values)
        for name in one.data_vars:
            np.testing.assert_allclose(merged[name].values, one[name].values, rtol=1e-5, atol=1e-3)
        assert merged.attrs["nfe_per_step"] == one.attrs["nfe_per_step"]
        assert merged.attrs["Conventions"] == one.attrs["Conventions"]
    twice = run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", inits[0], "--init",
                    inits[1], "--init", inits[0], "--steps", "1", "--members", "2", "--jobs", "2",
                    "--out", tmp_path / "twice.nc")
    assert twice.code == 2 and "more than once" in twice.err and not (tmp_path / "twice.nc").exists()
    early = run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", "1999-01-01", "--init",
                    inits[0], "--steps", "1", "--members", "2", "--jobs", "2", "--out", tmp_path / "early.nc")
    assert early.code == 2 and "has no complete window" in early.err, early.err    # a part's one line, passed on
    assert len(early.err.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "grouped.nc", "whole.nc"]


def test_sampler_overrides_apply_to_one_forecast(run_cli, tiny_run, wb2_store, tmp_path):
    """Restating the checkpoint's own sampler value changes nothing; a new one is used and recorded."""
    outputs = {}
    for name, overrides in {"plain": [], "same": ["--sampler", "num_noise_levels=20"],
                            "short": ["--sampler", "num_noise_levels=5", "--sampler", "churn=0"]}.items():
        out = tmp_path / f"{name}.nc"
        result = run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, "--init", "2001-01-08T00",
                         "--steps", "1", "--members", "2", "--out", out, *overrides)
        assert result.code == 0, result.err
        outputs[name] = xr.open_dataset(out)
    np.testing.assert_array_equal(outputs["same"]["geopotential"].values, outputs["plain"]["geopotential"].values)
    assert outputs["plain"].attrs["nfe_per_step"] == 39 and outputs["short"].attrs["nfe_per_step"] == 9
    assert "'num_noise_levels': 5" in outputs["short"].attrs["sampler_config"]
    assert "'churn': 0" in outputs["short"].attrs["sampler_config"]
    assert not np.allclose(outputs["short"]["geopotential"].values, outputs["plain"]["geopotential"].values)


@pytest.mark.parametrize("args,phrase", [
    (["--init", "1999-01-01"], "has no complete window"),
    (["--init", "yesterday-ish"], "not an ISO date-time"),
    (["--init", "2001-01-08T00", "--sampler", "bogus=1"], "bogus: unknown key"),
    (["--init", "2001-01-08T00", "--sampler", "churn=-1"], "churn: Input should be greater than or equal to 0"),
    (["--init", "2001-01-08T00", "--sampler", "churn"], "expected key=value"),
])
def test_forecast_bad_input(run_cli, tiny_run, wb2_store, tmp_path, args, phrase):
    result = run_cli("forecast", "--checkpoint", tiny_run, "--data", wb2_store, *args, "--steps", "1",
                     "--members", "1", "--out", tmp_path / "x.nc")
    assert result.code == 2 and phrase in result.err and not (tmp_path / "x.nc").exists()


def test_a_store_on_another_grid_is_refused_naming_both_grids(run_cli, tiny_run, tmp_path):
    """A forecast or distillation on a store of another grid size is one line naming both grids, exit 2,
    nothing written; a grid of the same size with other coordinates says which axis differs."""
    import numpy as np
    from wb2_stores import era5_like, six_hourly, write_store

    coarse = era5_like(six_hourly(days=10), latitude=np.linspace(-84.375, 84.375, 16),
                       longitude=np.arange(32) * 11.25)
    shifted = era5_like(six_hourly(days=10), longitude=np.arange(64) * 5.625 + 2.8125)
    for name, dataset, phrase in [("coarse", coarse, "has a 32x16 grid (longitude x latitude); the checkpoint "
                                                     "was trained on 64x32"),
                                  ("shifted", shifted, "has a 64x32 grid with longitude 2.8125..357.188; the "
                                                       "checkpoint was trained on 64x32 with longitude 0..354.375")]:
        store = write_store(dataset, tmp_path / f"{name}.zarr")
        out = tmp_path / f"{name}.nc"
        result = run_cli("forecast", "--checkpoint", tiny_run, "--data", store, "--init", "2001-01-08T00",
                         "--steps", "1", "--members", "1", "--out", out)
        assert result.code == 2, result.err
        assert result.err.count("\n") == 1 and phrase in result.err, result.err
        assert not out.exists()
    student = tmp_path / "student"   # distill checks with the same function
    result = run_cli("distill", "--config", REPO / "configs" / "distill" / "tiny.yaml", "--teacher", tiny_run,
                     "--data", tmp_path / "coarse.zarr", "--out", student)
    assert result.code == 2 and "has a 32x16 grid (longitude x latitude); the teacher was trained on 64x32" \
        in result.err, result.err
    assert not student.exists()


def test_missing_checkpoint_is_bad_input(run_cli, tmp_path):
    result = run_cli("inspect", tmp_path / "nothing")
    assert result.code == 2 and "does not exist" in result.err


@pytest.fixture(scope="module")
def package(tiny_run, tmp_path_factory):
    """The tiny teacher exported as a weights package."""
    from gencast_rmmd.cli import main
    out = tmp_path_factory.mktemp("weights") / "tiny"
    assert main(["weights", "export", str(tiny_run), "--out", str(out), "--reproduce", "pytest"]) == 0
    return out


def _install(run_cli, package, wb2_store, out, *extra):
    return run_cli("weights", "install", package, "--config", TINY, "--data", wb2_store, "--set", LEVELS,
                   "--stats", *extra, "--out", out) if extra else run_cli(
        "weights", "install", package, "--config", TINY, "--data", wb2_store, "--set", LEVELS, "--out", out)


def test_installed_weights_forecast_exactly_as_the_run_they_came_from(run_cli, tiny_run, package, wb2_store,
                                                                       tmp_path):
    """Export -> install is lossless: the hash is the run's EMA hash and the forecasts are identical."""
    from gencast_rmmd.training.checkpoint import latest_checkpoint, read_meta

    verified = run_cli("weights", "verify", package, "--json")
    assert verified.code == 0, verified.err
    summary = json.loads(verified.out)
    assert summary["params_sha256"] == read_meta(latest_checkpoint(tiny_run))["ema_params_sha256"]
    assert summary["step"] == 20 and summary["reproduce"] == "pytest"
    installed = tmp_path / "installed"
    result = _install(run_cli, package, wb2_store, installed, tiny_run / "stats.nc")
    assert result.code == 0, result.err
    assert "agree with the package's to 0.00e+00" in result.err
    forecasts = []
    for run in (tiny_run, installed):
        out = tmp_path / f"{run.name}.nc"
        assert run_cli("forecast", "--checkpoint", run, "--data", wb2_store, "--init", "2001-01-08T00",
                       "--steps", "2", "--members", "2", "--out", out).code == 0
        forecasts.append(xr.open_dataset(out))
    for name in forecasts[0].data_vars:
        np.testing.assert_array_equal(forecasts[0][name].values, forecasts[1][name].values)
    # Installing again into the same run is a no-op; a run holding other checkpoints is refused.
    again = _install(run_cli, package, wb2_store, installed)
    assert again.code == 0 and "already holds these weights" in again.err
    assert _install(run_cli, package, wb2_store, tiny_run).code == 2
    # so is a directory holding anything else (it was written into before: a store's or a sweep's parent)
    occupied = tmp_path / "occupied"
    (occupied / "notes").mkdir(parents=True)
    refused = _install(run_cli, package, wb2_store, occupied)
    assert refused.code == 2 and "not empty" in refused.err and [p.name for p in occupied.iterdir()] == ["notes"]


def _damaged_copy(package, tmp_path, change):
    import shutil
    copy = tmp_path / "damaged"
    shutil.copytree(package, copy)
    change(copy)
    return copy


def _flip_one_weight(copy):
    with np.load(copy / "weights.npz") as stored:
        arrays = {key: stored[key].copy() for key in stored.files}
    first = sorted(arrays)[0]
    arrays[first].flat[0] += 1.0
    np.savez(copy / "weights.npz", **arrays)


@pytest.mark.parametrize("damage,phrase", [
    (_flip_one_weight, "damaged or was altered"),
    (lambda copy: (copy / "weights.json").write_text("{"), "not valid JSON"),
    (lambda copy: (copy / "weights.npz").unlink(), "is not a weights package"),
    (lambda copy: (copy / "weights.npz").write_bytes(b"PK\x03\x04 truncated"), "cannot be read"),
])
def test_a_damaged_package_is_refused_and_nothing_is_written(run_cli, package, wb2_store, tmp_path, damage,
                                                              phrase):
    copy = _damaged_copy(package, tmp_path, damage)
    result = _install(run_cli, copy, wb2_store, tmp_path / "run")
    assert result.code == 2 and phrase in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_weights_for_another_model_grid_or_data_are_refused(run_cli, tiny_run, package, wb2_store, tmp_path):
    import xarray

    other_model = run_cli("weights", "install", package, "--config", TINY, "--data", wb2_store, "--set", LEVELS,
                          "--set", "model.latent_size=8", "--out", tmp_path / "a")
    assert other_model.code == 2 and "model.latent_size differs" in other_model.err
    other_levels = run_cli("weights", "install", package, "--config", TINY, "--data", wb2_store,
                           "--set", "data.levels=[500]", "--out", tmp_path / "b")
    assert other_levels.code == 2 and "variables and levels" in other_levels.err
    stats = xarray.open_dataset(tiny_run / "stats.nc").load()
    shifted = xarray.where(stats["statistic"] == "std", stats * 1.5, stats, keep_attrs=True)
    shifted.to_netcdf(tmp_path / "other_stats.nc")
    other_data = _install(run_cli, package, wb2_store, tmp_path / "c", tmp_path / "other_stats.nc")
    assert other_data.code == 2 and "not the data the weights were trained on" in other_data.err
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))
    not_a_teacher = run_cli("weights", "export", tmp_path / "nothing", "--out", tmp_path / "d")
    assert not_a_teacher.code == 2 and not (tmp_path / "d").exists()
