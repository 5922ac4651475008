"""Self-describing, atomic checkpoints without executable serialisation.

Layout of a run directory:

    RUN/checkpoints/step_00000123/arrays.npz   every state leaf, keyed by its path key
                                 /meta.json    step, configs, data statistics, hashes, leaf table
    RUN/metrics.jsonl

`arrays.npz` holds plain numeric arrays only (loaded with `allow_pickle=False`).
`meta.json["arrays"]` maps each key to its path segments, dtype and shape, so
`load_checkpoint` rebuilds params without a template, and `restore_state`
fills a template (the task's init) after checking every shape and dtype.

A checkpoint is built in a hidden temporary sibling, fsynced, then renamed
into place (`io_utils.atomic_path`): a kill at any moment leaves either the
complete new checkpoint or none. "Latest" is the highest-step complete
directory; temporaries (hidden names) are ignored and cleaned on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import atomic_path
from gencast_rmmd.training.tree_io import flatten_with_segments, nested_dicts, params_sha256

PyTree = Any
FORMAT = "gencast_rmmd.checkpoint/1"
CHECKPOINTS = "checkpoints"
ARRAYS, META = "arrays.npz", "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class Checkpoint(NamedTuple):
    """A checkpoint loaded without a template: params as nested dicts (haiku layout) and its meta."""

    path: Path
    step: int
    params: dict      # group -> params
    ema_params: dict
    frozen: dict
    meta: dict


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return _STEP_DIR.match(path.name) is not None and (path / META).is_file() and (path / ARRAYS).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporaries and partial directories ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and is_complete(path)]
    return sorted(found, key=lambda path: int(_STEP_DIR.match(path.name).group(1)))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-step complete checkpoint of a run, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path_or_run: str | os.PathLike) -> Path:
    """A checkpoint directory as given, or a run directory's latest checkpoint."""
    path = Path(path_or_run)
    if is_complete(path):
        return path
    latest = latest_checkpoint(path.parent if path.name == CHECKPOINTS else path)
    if latest is None:
        raise UserInputError(f"{path} is neither a checkpoint (step_N/ with {META} and {ARRAYS}) nor a run "
                             f"directory holding one; give a checkpoint or a run directory")
    return latest


def read_meta(checkpoint: str | os.PathLike) -> dict:
    return json.loads((Path(checkpoint) / META).read_text())


def _to_storable(key: str, leaf: Any) -> tuple[np.ndarray, str]:
    value = np.asarray(jax.device_get(leaf))
    if value.dtype.kind in "biufc":
        return value, value.dtype.name
    if value.dtype.kind == "V" and value.dtype.itemsize in (1, 2, 4, 8):  # ml_dtypes (bfloat16, float8...)
        return value.view(f"uint{8 * value.dtype.itemsize}"), jnp.dtype(value.dtype).name
    raise TypeError(f"state leaf {key} has dtype {value.dtype}, which a checkpoint cannot store as numbers")


def _from_stored(value: np.ndarray, dtype_name: str) -> np.ndarray:
    return value if value.dtype.name == dtype_name else value.view(jnp.dtype(dtype_name))


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(run_dir: str | os.PathLike, state: PyTree, meta: dict) -> Path:
    """Write `state` (a pytree whose leaves are arrays) and `meta` as checkpoint `step_{meta['step']}` atomically."""
    destination = checkpoint_path(run_dir, int(meta["step"]))
    arrays, table = {}, {}
    for key, (segments, leaf) in flatten_with_segments(state).items():
        arrays[key], dtype_name = _to_storable(key, leaf)
        table[key] = {"path": list(segments), "dtype": dtype_name, "shape": list(arrays[key].shape)}
    meta = {**meta, "format": FORMAT, "arrays": table}
    with atomic_path(destination) as temporary:
        temporary.mkdir()
        with open(temporary / ARRAYS, "wb") as file:
            np.savez(file, allow_pickle=False, **arrays)
            file.flush()
            os.fsync(file.fileno())
        with open(temporary / META, "w") as file:
            file.write(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())
        _fsync(temporary)
    _fsync(destination.parent)
    return destination


def _read_arrays(checkpoint: Path, meta: dict) -> dict[str, np.ndarray]:
    with np.load(checkpoint / ARRAYS, allow_pickle=False) as stored:
        return {key: _from_stored(stored[key], entry["dtype"]) for key, entry in meta["arrays"].items()}


def load_checkpoint(path_or_run: str | os.PathLike, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (or a run's latest) without a template; check the params hash when `verify`."""
    path = resolve_checkpoint(path_or_run)
    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise UserInputError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    arrays = _read_arrays(path, meta)
    trees: dict[str, dict] = {"params": {}, "ema_params": {}, "frozen": {}}
    for key, entry in meta["arrays"].items():
        head, *rest = entry["path"]
        if head in trees:
            trees[head][tuple(rest)] = arrays[key]
    params, ema_params, frozen = (nested_dicts(trees[name]) for name in ("params", "ema_params", "frozen"))
    if verify and meta.get("params_sha256") and params_sha256(params) != meta["params_sha256"]:
        raise UserInputError(f"{path}: parameters do not match the hash recorded in {META}; the checkpoint is "
                             "corrupt, use an earlier one")
    return Checkpoint(path=path, step=int(meta["step"]), params=params, ema_params=ema_params, frozen=frozen,
                      meta=meta)


def restore_state(checkpoint: str | os.PathLike, template: PyTree) -> PyTree:
    """Fill `template` (arrays or `jax.ShapeDtypeStruct`s) from a checkpoint, checking every key, shape and dtype."""
    path = Path(checkpoint)
    meta = read_meta(path)
    expected = flatten_with_segments(template)
    missing = sorted(set(expected) - set(meta["arrays"]))
    unexpected = sorted(set(meta["arrays"]) - set(expected))
    if missing or unexpected:
        raise UserInputError(
            f"{path} does not match the configured model and optimiser: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; resume with the config the run was started with")
    arrays = _read_arrays(path, meta)
    leaves = []
    for key, (_, leaf) in expected.items():
        value, want_shape, want_dtype = arrays[key], tuple(np.shape(leaf)), jnp.dtype(leaf.dtype)
        if value.shape != want_shape or value.dtype != want_dtype:
            raise UserInputError(
                f"{path}: {key} is {value.dtype}{list(value.shape)} in the checkpoint but the model expects "
                f"{want_dtype}{list(want_shape)}; resume with the config the run was started with")
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints and the best one on validation loss."""
    checkpoints = list_checkpoints(run_dir)
    validated = [(meta["validation_loss"], path) for path in checkpoints
                 if (meta := read_meta(path)).get("validation_loss") is not None]
    kept = set(checkpoints[-keep:])
    if validated:
        kept.add(min(validated, key=lambda item: item[0])[1])
    removed = [path for path in checkpoints if path not in kept]
    for path in removed:  # hide first, so a kill mid-delete leaves no half checkpoint under a step name
        hidden = path.with_name(f".{path.name}.deleting")
        os.replace(path, hidden)
        shutil.rmtree(hidden)
    return removed


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete hidden temporaries left by a process killed while writing a checkpoint."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
