"""A corrupt zarr chunk is never read silently, in a store made by `data simulate`.

Proves: a chunk truncated anywhere (including cuts that numcodecs' Blosc decoder
turned into wrong numbers without error), garbled or swapped with another
variable's is refused by every reader with one line naming the store, the
variable, the chunk index and the file (exit 2), and `data stats`, `train`,
`forecast`, `evaluate` and the baselines stop on it without writing;
`data check --deep` lists every bad chunk, exit 2, and passes the intact store,
counting absent chunks (legal in zarr: they read as the fill value) without
failing; the same holds for a zarr v3 store; the checking store pickles (for
dask.distributed); and the intact store reads exactly as zarr reads it.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import REPO, TEST_DATA_CONFIG
from gencast_rmmd.data.chunks import CorruptChunkError, array_codec
from gencast_rmmd.data.stores import open_store

CHUNK = "temperature/4.0.0.0"          # time index 4 = 2000-01-02T00, a 12-hourly model step


def _cut(store: Path, key: str, keep: int) -> None:
    path = store / key
    path.write_bytes(path.read_bytes()[:keep])


def _assert_one_line(result, *phrases):
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    error_lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.err
    for phrase in phrases:
        assert phrase in error_lines[0], error_lines[0]


def test_the_intact_store_reads_exactly_as_zarr_reads_it(simulated):
    store = simulated[0].path
    checked = open_store(str(store), use_dask=False).load()
    plain = xr.open_dataset(store, engine="zarr", chunks=None).load()
    for name in plain.data_vars:
        np.testing.assert_array_equal(checked[name].values, plain[name].values, err_msg=name)


@pytest.mark.parametrize("keep", [0, 10, 16, 1000, -1], ids=lambda keep: f"keep{keep}")
def test_a_truncated_chunk_is_refused_by_name(simulated_copy, keep):
    size = (simulated_copy / CHUNK).stat().st_size
    _cut(simulated_copy, CHUNK, keep if keep >= 0 else size + keep)
    dataset = open_store(str(simulated_copy), use_dask=False)
    with pytest.raises(CorruptChunkError) as raised:
        dataset["temperature"].isel(time=4).values
    message = str(raised.value)
    for phrase in (str(simulated_copy), "variable temperature", "chunk (4, 0, 0, 0)", CHUNK):
        assert phrase in message, message
    # Before the check, zarr + numcodecs decoded some of these cuts to wrong values without any error.
    dataset["temperature"].isel(time=3).values   # its neighbours still read


def test_a_garbled_chunk_of_the_right_length_is_refused(simulated_copy):
    raw = bytearray((simulated_copy / CHUNK).read_bytes())
    raw[16:] = np.random.default_rng(0).integers(0, 256, len(raw) - 16, dtype=np.uint8).tobytes()
    (simulated_copy / CHUNK).write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match="blosc cannot decode it"):
        open_store(str(simulated_copy))["temperature"].isel(time=4).values


def test_a_chunk_of_another_variable_is_refused(simulated_copy):
    shutil.copyfile(simulated_copy / "2m_temperature" / "4.0.0", simulated_copy / CHUNK)
    with pytest.raises(CorruptChunkError, match="bytes of values, the chunk needs 106496"):
        open_store(str(simulated_copy))["temperature"].isel(time=4).values


def test_data_stats_fails_with_one_line_and_writes_nothing(run_cli, simulated_copy, tmp_path):
    _cut(simulated_copy, CHUNK, 1000)
    out = tmp_path / "stats.nc"
    out.write_bytes(b"previous")
    result = run_cli("data", "stats", "--config", TEST_DATA_CONFIG, "--data", simulated_copy, "--out", out)
    _assert_one_line(result, "corrupt chunk", "variable temperature", "chunk (4, 0, 0, 0)")
    assert out.read_bytes() == b"previous"


def test_deep_check_lists_every_bad_chunk_and_exits_2(run_cli, simulated_copy):
    _cut(simulated_copy, CHUNK, 1000)
    _cut(simulated_copy, "geopotential/9.0.0.0", 20)
    (simulated_copy / "2m_temperature" / "7.0.0").unlink()          # absent: legal, reads as NaN
    result = run_cli("data", "check", "--config", TEST_DATA_CONFIG, "--data", simulated_copy, "--deep")
    _assert_one_line(result, "2 corrupt chunk(s)", "first: temperature chunk (4, 0, 0, 0)")
    assert "corrupt chunk: temperature (4, 0, 0, 0)" in result.err
    assert "corrupt chunk: geopotential (9, 0, 0, 0)" in result.err
    assert "2m_temperature: 24 chunks, 0 bad, 1 absent" in result.err


def test_deep_check_passes_the_intact_store_and_counts_absent_chunks(run_cli, simulated_copy):
    (simulated_copy / "2m_temperature" / "7.0.0").unlink()
    result = run_cli("data", "check", "--config", TEST_DATA_CONFIG, "--data", simulated_copy, "--deep")
    assert result.code == 0, result.err
    assert "chunks of 14 arrays decode; 1 chunks are not stored" in result.err
    assert np.isnan(open_store(str(simulated_copy))["2m_temperature"].isel(time=7).values).all()


def test_the_sampling_check_alone_points_to_deep(run_cli, simulated_copy):
    """Without --deep a chunk the check does not sample is not read: the schema check passes."""
    _cut(simulated_copy, CHUNK, 1000)
    result = run_cli("data", "check", "--config", TEST_DATA_CONFIG, "--data", simulated_copy)
    assert result.code == 0, result.err


def test_training_fails_before_any_step(run_cli, simulated_copy, tmp_path):
    _cut(simulated_copy, CHUNK, 1000)
    result = run_cli("train", "--config", REPO / "configs" / "teacher" / "tiny.yaml", "--data", simulated_copy,
                     "--out", tmp_path / "run")
    _assert_one_line(result, "corrupt chunk", "variable temperature")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_forecast_from_a_corrupt_input_frame_fails_before_the_rollout(run_cli, simulated_copy, demo_teacher_run,
                                                                       tmp_path):
    _cut(simulated_copy, CHUNK, 1000)
    out = tmp_path / "forecast.nc"
    result = run_cli("forecast", "--checkpoint", demo_teacher_run, "--data", simulated_copy, "--init",
                     "2000-01-02T12", "--steps", "1", "--members", "1", "--out", out)
    _assert_one_line(result, "corrupt chunk", "variable temperature", "chunk (4, 0, 0, 0)")
    assert not out.exists() and "step 1/1" not in result.err


def test_evaluate_and_baselines_fail_on_a_corrupt_truth_chunk(run_cli, simulated, simulated_copy, tmp_path):
    forecast = tmp_path / "persistence.nc"
    assert run_cli("baseline", "persistence", "--truth", simulated[0].path, "--init", "2000-01-01T12",
                   "--steps", "2", "--out", forecast).code == 0
    _cut(simulated_copy, CHUNK, 1000)
    result = run_cli("evaluate", "--forecast", forecast, "--truth", simulated_copy, "--out", tmp_path / "s.nc")
    _assert_one_line(result, "corrupt chunk", "variable temperature")
    result = run_cli("baseline", "persistence", "--truth", simulated_copy, "--init", "2000-01-02T00",
                     "--steps", "1", "--out", tmp_path / "p.nc")
    _assert_one_line(result, "corrupt chunk", "variable temperature")
    assert not (tmp_path / "s.nc").exists() and not (tmp_path / "p.nc").exists()


def test_a_truncated_chunk_of_a_zarr_v3_store_is_refused(simulated, tmp_path):
    store = tmp_path / "v3.zarr"
    dataset = xr.open_zarr(simulated[0].path)[["temperature"]].isel(time=slice(0, 6)).load()
    for variable in dataset.variables.values():
        variable.encoding = {}
    dataset.to_zarr(store, zarr_format=3, consolidated=False, encoding={"temperature": {"chunks": (1, 13, 64, 32)}})
    key = "temperature/c/4/0/0/0"
    assert (store / key).is_file()
    _cut(store, key, 1000)
    with pytest.raises(CorruptChunkError, match=r"variable temperature, chunk \(4, 0, 0, 0\)"):
        open_store(str(store))["temperature"].isel(time=4).values


def test_the_checking_store_pickles_for_dask_distributed(simulated_copy):
    _cut(simulated_copy, CHUNK, 1000)
    dataset = pickle.loads(pickle.dumps(open_store(str(simulated_copy))))
    with pytest.raises(CorruptChunkError, match="variable temperature"):
        dataset["temperature"].isel(time=4).values


@pytest.mark.parametrize("metadata, key, index", [
    ({"zarr_format": 2, "shape": [24, 13], "chunks": [1, 13], "dtype": "<f4", "compressor": None}, "4.0", (4, 0)),
    ({"zarr_format": 2, "shape": [24, 13], "chunks": [1, 13], "dtype": "<f4", "compressor": None,
      "dimension_separator": "/"}, "4/0", (4, 0)),
    ({"zarr_format": 2, "shape": [24, 13], "chunks": [1, 13], "dtype": "<f4", "compressor": None}, "4/0", None),
    ({"zarr_format": 3, "node_type": "array", "shape": [24], "data_type": "float32",
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
      "codecs": [{"name": "bytes"}, {"name": "zstd"}]}, "c/11", (11,)),
    ({"zarr_format": 3, "node_type": "array", "shape": [24], "data_type": "float32",
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
      "codecs": [{"name": "bytes"}]}, "11", None),
])
def test_chunk_keys_are_parsed_for_each_key_encoding(metadata, key, index):
    assert array_codec("v", metadata).chunk_index(key) == index


def test_an_uncompressed_chunk_of_the_wrong_size_is_refused():
    codec = array_codec("v", {"zarr_format": 2, "shape": [4, 3], "chunks": [2, 3], "dtype": "<f8",
                              "compressor": None})
    assert codec.problem(np.zeros(6).tobytes()) is None
    assert "holds 40 bytes" in codec.problem(np.zeros(5).tobytes())
