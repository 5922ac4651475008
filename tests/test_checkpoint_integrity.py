"""Every array of a checkpoint is hashed and checked on load; malformed checkpoints are one-line errors.

Proves: a change to any stored leaf (params, EMA params, optimiser state, frozen
trees) is refused by both loaders; checkpoints written before `arrays_sha256`
still load and are checked against what they record; each class of malformed
checkpoint raises `UserInputError` naming the file (CLI: one line, exit 2);
and a resume past a corrupt newest checkpoint continues from the one before it,
reaching the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from training_helpers import MlpTask, small_config, synthetic_batches

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training import load_checkpoint, train
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training.state import init_train_state, make_optimizers


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 10-step run of the MLP task with checkpoints at steps 5 and 10."""
    run_dir = tmp_path_factory.mktemp("integrity") / "run"
    train(MlpTask(), small_config(steps=10), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    return run_dir


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A private copy of the run's newest checkpoint (step 10) to damage."""
    target = tmp_path / "run" / "checkpoints" / "step_00000010"
    shutil.copytree(run / "checkpoints" / "step_00000010", target)
    return target


def _template():
    task, config = MlpTask(), small_config()
    rules = task.update_rules()
    example = synthetic_batches(8)(0).__next__()
    return jax.eval_shape(lambda: init_train_state(task.init(jax.random.key(0), example), rules,
                                                   make_optimizers(rules, config)))


def _rewrite_arrays(checkpoint: Path, change) -> None:
    with np.load(checkpoint / "arrays.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    change(arrays)
    with open(checkpoint / "arrays.npz", "wb") as file:
        np.savez(file, **arrays)


def _edit_meta(checkpoint: Path, change) -> None:
    meta = json.loads((checkpoint / "meta.json").read_text())
    change(meta)
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def _first_key(checkpoint: Path, prefix: str) -> str:
    table = checkpoints.read_meta(checkpoint)["arrays"]
    return next(key for key, entry in table.items() if key.startswith(prefix) and entry["shape"])


def test_a_new_checkpoint_records_one_hash_over_every_array(run):
    meta = checkpoints.read_meta(run / "checkpoints" / "step_00000010")
    heads = {entry["path"][0] for entry in meta["arrays"].values()}
    assert {"params", "ema_params", "opt_states", "frozen"} <= heads
    assert len(meta["arrays_sha256"]) == 64
    assert checkpoints.verify_checkpoint(run / "checkpoints" / "step_00000010")["step"] == 10


@pytest.mark.parametrize("prefix", ["params/", "ema_params/", "opt_states/", "frozen/"])
def test_a_nan_in_any_stored_tree_is_refused_by_both_loaders(copy, prefix):
    key = _first_key(copy, prefix)

    def poison(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].reshape(-1)[0] = np.nan

    _rewrite_arrays(copy, poison)
    with pytest.raises(UserInputError, match=r"arrays\.npz does not match the arrays_sha256"):
        load_checkpoint(copy)
    with pytest.raises(UserInputError, match=r"arrays\.npz does not match the arrays_sha256"):
        checkpoints.restore_state(copy, _template())


def test_a_checkpoint_from_before_the_hash_loads_and_is_checked_against_what_it_records(copy):
    _edit_meta(copy, lambda meta: meta.pop("arrays_sha256"))
    loaded = load_checkpoint(copy)
    assert loaded.step == 10
    assert int(checkpoints.restore_state(copy, _template()).step) == 10
    key = _first_key(copy, "ema_params/")
    _rewrite_arrays(copy, lambda arrays: arrays.__setitem__(key, np.full_like(arrays[key], np.nan)))
    with pytest.raises(UserInputError, match="ema params do not match the ema_params_sha256"):
        load_checkpoint(copy)
    # What is not recorded cannot be checked: an old checkpoint without any hash loads as before.
    _edit_meta(copy, lambda meta: (meta.pop("params_sha256"), meta.pop("ema_params_sha256")))
    assert load_checkpoint(copy).step == 10


def _truncate(checkpoint: Path) -> None:
    data = (checkpoint / "arrays.npz").read_bytes()
    (checkpoint / "arrays.npz").write_bytes(data[: len(data) // 2])


def _flip_a_stored_byte(checkpoint: Path) -> None:
    """Flip the last value byte of an EMA leaf in place (the member's CRC, or else the hash, catches it)."""
    key = _first_key(checkpoint, "ema_params/")
    with zipfile.ZipFile(checkpoint / "arrays.npz") as archive:
        member = archive.getinfo(f"{key}.npy")
    data = bytearray((checkpoint / "arrays.npz").read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26: member.header_offset + 30])
    data[member.header_offset + 30 + name_length + extra_length + member.compress_size - 1] ^= 0xFF
    (checkpoint / "arrays.npz").write_bytes(bytes(data))


def _wrong_shape(checkpoint: Path) -> None:
    key = _first_key(checkpoint, "params/")
    _rewrite_arrays(checkpoint, lambda arrays: arrays.__setitem__(key, np.zeros((3, 3), arrays[key].dtype)))


def _text_leaf(checkpoint: Path) -> None:
    key = _first_key(checkpoint, "params/")
    _rewrite_arrays(checkpoint, lambda arrays: arrays.__setitem__(key, np.full(arrays[key].shape, "abc")))


def _missing_leaf(checkpoint: Path) -> None:
    key = _first_key(checkpoint, "ema_params/")
    _rewrite_arrays(checkpoint, lambda arrays: arrays.pop(key))


CORRUPTIONS = {
    "truncated arrays.npz": (_truncate, "arrays.npz cannot be read"),
    "flipped byte in arrays.npz": (_flip_a_stored_byte, "arrays.npz"),
    "garbage arrays.npz": (lambda c: (c / "arrays.npz").write_bytes(b"\x00garbage" * 50), "arrays.npz cannot be read"),
    "arrays.npz holds one .npy": (lambda c: np.save(open(c / "arrays.npz", "wb"), np.zeros(3)), "single array"),
    "empty arrays.npz": (lambda c: (c / "arrays.npz").write_bytes(b""), "arrays.npz cannot be read"),
    "leaf of the wrong shape": (_wrong_shape, "has shape [3, 3] but meta.json records"),
    "text leaf": (_text_leaf, "cannot hold the recorded float32"),
    "leaf missing from arrays.npz": (_missing_leaf, "lacks 1 leaves that meta.json lists"),
    "garbage meta.json": (lambda c: (c / "meta.json").write_bytes(b"\xff\xfe{not json"), "meta.json is not readable"),
    "partial meta.json": (lambda c: (c / "meta.json").write_text((c / "meta.json").read_text()[:200]),
                          "meta.json is not readable JSON"),
    "meta.json a list": (lambda c: (c / "meta.json").write_text("[1, 2]"), "holds a JSON list"),
    "meta.json without step": (lambda c: _edit_meta(c, lambda m: m.pop("step")), "records no integer step"),
    "meta.json without leaf table": (lambda c: _edit_meta(c, lambda m: m.pop("arrays")), "has no leaf table"),
    "malformed table entry": (lambda c: _edit_meta(c, lambda m: m["arrays"].__setitem__(
        next(iter(m["arrays"])), {"path": "params"})), "is malformed"),
    "unknown dtype": (lambda c: _edit_meta(c, lambda m: next(iter(m["arrays"].values())).__setitem__(
        "dtype", "float99")), "unknown dtype 'float99'"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_malformed_checkpoint_is_one_line_naming_the_file(copy, run_cli, name):
    damage, phrase = CORRUPTIONS[name]
    damage(copy)
    for load in (load_checkpoint, lambda path: checkpoints.restore_state(path, _template())):
        with pytest.raises(UserInputError) as raised:
            load(copy)
        assert phrase in str(raised.value) and str(copy) in str(raised.value), str(raised.value)
    result = run_cli("inspect", copy, "--json")
    assert result.code == 2, result.err
    assert result.err.startswith(f"error: {copy}/") and len(result.err.strip().splitlines()) == 1, result.err
    assert phrase in result.err


def _reference(tmp_path: Path):
    return train(MlpTask(), small_config(steps=10), seed=0, batches=synthetic_batches(8),
                 run_dir=tmp_path / "reference")


@pytest.mark.parametrize("damage", [_truncate, lambda c: (c / "meta.json").write_text("{"), _wrong_shape],
                         ids=["truncated arrays", "garbage meta", "wrong shape"])
def test_resume_falls_back_past_a_corrupt_newest_checkpoint_and_reaches_the_same_params(tmp_path, run, damage):
    reference = _reference(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)  # the same 10-step run, checkpoints at 5 and 10
    damage(run_dir / "checkpoints" / "step_00000010")
    notes: list[str] = []
    result = train(MlpTask(), small_config(steps=10), seed=0, batches=synthetic_batches(8), run_dir=run_dir,
                   log=notes.append)
    skipped = [note for note in notes if "skipped the corrupt checkpoint" in note]
    assert len(skipped) == 1 and "step_00000010" in skipped[0] and "resume from" in skipped[0]
    assert skipped[0].endswith(str(run_dir / "checkpoints" / "step_00000005")), skipped[0]
    assert result.params_sha256 == reference.params_sha256
    assert checkpoints.verify_checkpoint(run_dir / "checkpoints" / "step_00000010")["step"] == 10
    assert (run_dir / "checkpoints" / "step_00000010.corrupt").is_dir()  # kept for inspection, not a checkpoint
    assert [path.name for path in checkpoints.list_checkpoints(run_dir)] == ["step_00000005", "step_00000010"]


def test_resume_with_no_checkpoint_that_verifies_is_refused_and_moves_nothing(tmp_path, run):
    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)
    for step in (5, 10):
        _truncate(run_dir / "checkpoints" / f"step_{step:08d}")
    before = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    with pytest.raises(UserInputError, match="no checkpoint of .* verifies .*step_00000010"):
        train(MlpTask(), small_config(steps=10), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == before


def test_pruning_tolerates_an_older_unreadable_meta(tmp_path):
    """Pruning reads every checkpoint's validation loss; an older unreadable meta counts as unscored."""
    run_dir, config = tmp_path / "run", small_config(steps=20, keep_checkpoints=3)
    train(MlpTask(), config, seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000020")  # as if killed before step 20's checkpoint
    (run_dir / "checkpoints" / "step_00000010" / "meta.json").write_text("{")
    result = train(MlpTask(), config, seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    assert result.step == 20
    assert [path.name for path in checkpoints.list_checkpoints(run_dir)] == [
        "step_00000010", "step_00000015", "step_00000020"]
