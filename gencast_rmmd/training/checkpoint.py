"""Self-describing, atomic checkpoints without executable serialisation.

Layout of a run directory:

    RUN/checkpoints/step_00000123/arrays.npz   every state leaf, keyed by its path key
                                 /meta.json    step, configs, data statistics, hashes, leaf table
    RUN/metrics.jsonl

`arrays.npz` holds plain numeric arrays only (loaded with `allow_pickle=False`).
`meta.json["arrays"]` maps each key to its path segments, dtype and shape, so
`load_checkpoint` rebuilds params without a template, and `restore_state`
fills a template (the task's init) after checking every shape and dtype.

`meta.json["arrays_sha256"]` hashes every stored array (params, EMA params,
optimiser state, frozen trees, counters), and both loaders check it: a flipped
byte or a NaN written into any leaf is refused, not forecast with. Checkpoints
written before that field existed are checked against what they record
(`params_sha256`, `ema_params_sha256`). A malformed checkpoint (unreadable
JSON, a truncated or non-numeric `arrays.npz`, a leaf missing or of another
shape than its table says) raises `UserInputError` naming the file.
`fall_back_to_verified` lets a resume skip corrupt newest checkpoints.

A checkpoint is built in a hidden temporary sibling, fsynced, then renamed
into place (`io_utils.atomic_path`): a kill at any moment leaves either the
complete new checkpoint or none. "Latest" is the highest-step complete
directory; temporaries (hidden names) are ignored and cleaned on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import atomic_path, read_json_object
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


_CORRUPT = "the checkpoint is corrupt: give an earlier one, or resume, which falls back to the newest that verifies"


def read_meta(checkpoint: str | os.PathLike) -> dict:
    """A checkpoint's `meta.json` as a dict; `UserInputError` naming the file when it is missing or not a JSON object."""
    return read_json_object(Path(checkpoint) / META, remedy=_CORRUPT)


def _check_meta(path: Path, meta: dict) -> None:
    """The fields a loader relies on: format, an integer step, and a well-formed leaf table."""
    where = path / META
    if meta.get("format") != FORMAT:
        raise UserInputError(f"{where}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    if not isinstance(meta.get("step"), int):
        raise UserInputError(f"{where} records no integer step; {_CORRUPT}")
    table = meta.get("arrays")
    if not isinstance(table, dict) or not table:
        raise UserInputError(f"{where} has no leaf table (arrays); {_CORRUPT}")
    for key, entry in table.items():
        well_formed = (isinstance(entry, dict) and isinstance(entry.get("path"), list) and entry["path"]
                       and all(isinstance(segment, (str, int)) for segment in entry["path"])
                       and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
                       and all(isinstance(size, int) and size >= 0 for size in entry["shape"]))
        if not well_formed:
            raise UserInputError(f"{where}: the table entry of {key} is malformed; {_CORRUPT}")


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
    meta = {**meta, "format": FORMAT, "arrays": table, "arrays_sha256": arrays_sha256(arrays, table)}
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


def arrays_sha256(stored: Mapping[str, np.ndarray], table: Mapping[str, dict]) -> str:
    """SHA-256 of every stored array: keys sorted; key, recorded dtype, shape and little-endian bytes hashed.

    `stored` holds the arrays as written to `arrays.npz` (ml_dtypes leaves as
    their unsigned-integer views), so the hash is computed before any decoding.
    """
    digest = hashlib.sha256()
    for key in sorted(table):
        value = np.asarray(stored[key])
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        digest.update(f"{key}\0{table[key]['dtype']}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _read_stored(checkpoint: Path, meta: dict) -> dict[str, np.ndarray]:
    """The arrays of `meta`'s table as stored, each checked against its recorded shape and dtype."""
    file = checkpoint / ARRAYS
    try:
        stored = np.load(file, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise UserInputError(f"{file} is a single array, not an npz archive; {_CORRUPT}")
        with stored:
            missing = sorted(set(meta["arrays"]) - set(stored.files))
            if missing:
                raise UserInputError(f"{file} lacks {len(missing)} leaves that {META} lists (e.g. {missing[0]}); "
                                     f"{_CORRUPT}")
            arrays = {key: stored[key] for key in meta["arrays"]}
    except UserInputError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise UserInputError(f"{file} cannot be read ({type(error).__name__}: {error}); {_CORRUPT}") from None
    for key, entry in meta["arrays"].items():
        value = arrays[key]
        if list(value.shape) != entry["shape"]:
            raise UserInputError(f"{file}: {key} has shape {list(value.shape)} but {META} records "
                                 f"{entry['shape']}; {_CORRUPT}")
        try:
            decoded = jnp.dtype(entry["dtype"])
        except TypeError:
            raise UserInputError(f"{file}: {key} records the unknown dtype {entry['dtype']!r}; {_CORRUPT}") from None
        as_recorded = value.dtype.name == entry["dtype"] and value.dtype.kind in "biufc"
        as_view = decoded.kind not in "biufc" and value.dtype == np.dtype(f"uint{8 * decoded.itemsize}")
        if not (as_recorded or as_view):
            raise UserInputError(f"{file}: {key} is stored as {value.dtype}, which cannot hold the recorded "
                                 f"{entry['dtype']}; {_CORRUPT}")
    return arrays


def _trees(meta: dict, arrays: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """`{"params": ..., "ema_params": ..., "frozen": ...}` rebuilt as nested dicts from the leaf table."""
    trees: dict[str, dict] = {"params": {}, "ema_params": {}, "frozen": {}}
    for key, entry in meta["arrays"].items():
        head, *rest = entry["path"]
        if head in trees and rest:
            trees[head][tuple(rest)] = arrays[key]
    return {name: nested_dicts(entries) for name, entries in trees.items()}


def _read_verified(path: Path, verify: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Meta and decoded arrays of a checkpoint, after its recorded hashes are checked (when `verify`).

    Checks `arrays_sha256` (every stored array) where recorded; a checkpoint
    written before it existed is checked against `params_sha256` and
    `ema_params_sha256`, each where recorded.
    """
    meta = read_meta(path)
    _check_meta(path, meta)
    stored = _read_stored(path, meta)
    arrays = {key: _from_stored(value, meta["arrays"][key]["dtype"]) for key, value in stored.items()}
    if not verify:
        return meta, arrays
    recorded = meta.get("arrays_sha256")
    if recorded is not None:
        if arrays_sha256(stored, meta["arrays"]) != recorded:
            raise UserInputError(f"{path / ARRAYS} does not match the arrays_sha256 recorded in {META}; "
                                 f"{_CORRUPT}")
        return meta, arrays
    trees = _trees(meta, arrays)
    for tree, field in (("params", "params_sha256"), ("ema_params", "ema_params_sha256")):
        if meta.get(field) and params_sha256(trees[tree]) != meta[field]:
            raise UserInputError(f"{path / ARRAYS}: the {tree.replace('_', ' ')} do not match the {field} "
                                 f"recorded in {META}; {_CORRUPT}")
    return meta, arrays


def verify_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """Read a whole checkpoint and check its recorded hashes; its meta, or `UserInputError` naming the file."""
    return _read_verified(Path(checkpoint))[0]


def load_checkpoint(path_or_run: str | os.PathLike, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (or a run's latest) without a template; check its recorded hashes when `verify`."""
    path = resolve_checkpoint(path_or_run)
    meta, arrays = _read_verified(path, verify)
    trees = _trees(meta, arrays)
    return Checkpoint(path=path, step=int(meta["step"]), params=trees["params"], ema_params=trees["ema_params"],
                      frozen=trees["frozen"], meta=meta)


def restore_state(checkpoint: str | os.PathLike, template: PyTree) -> PyTree:
    """Fill `template` (arrays or `jax.ShapeDtypeStruct`s) from a verified checkpoint, checking every key, shape and dtype."""
    path = Path(checkpoint)
    meta = read_meta(path)
    _check_meta(path, meta)
    expected = flatten_with_segments(template)
    missing = sorted(set(expected) - set(meta["arrays"]))
    unexpected = sorted(set(meta["arrays"]) - set(expected))
    if missing or unexpected:
        raise UserInputError(
            f"{path} does not match the configured model and optimiser: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; resume with the config the run was started with")
    _, arrays = _read_verified(path)
    leaves = []
    for key, (_, leaf) in expected.items():
        value, want_shape, want_dtype = arrays[key], tuple(np.shape(leaf)), jnp.dtype(leaf.dtype)
        if value.shape != want_shape or value.dtype != want_dtype:
            raise UserInputError(
                f"{path}: {key} is {value.dtype}{list(value.shape)} in the checkpoint but the model expects "
                f"{want_dtype}{list(want_shape)}; resume with the config the run was started with")
        leaves.append(value)
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def fall_back_to_verified(run_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Path | None:
    """Before a resume: set aside every checkpoint newer than the newest one that verifies, and return that one.

    Each checkpoint set aside is renamed `step_N.corrupt` (kept for
    inspection, no longer a checkpoint) and named through `log` with the
    reason. Returns None for a run without checkpoints; raises
    `UserInputError` (moving nothing) when none of its checkpoints verifies.
    """
    failures: list[tuple[Path, UserInputError]] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except UserInputError as error:
            failures.append((path, error))
            continue
        for corrupt, error in failures:
            aside = _set_aside(corrupt)
            log(f"warning: skipped the corrupt checkpoint {corrupt} ({error}); moved it to {aside.name} and "
                f"resume from {path}")
        return path
    if failures:
        raise UserInputError(f"no checkpoint of {run_dir} verifies (the newest: {failures[0][1]}); start the run "
                             "again in a new --out")
    return None


def _set_aside(checkpoint: Path) -> Path:
    for attempt in range(1000):
        aside = checkpoint.with_name(f"{checkpoint.name}.corrupt" + (f"-{attempt}" if attempt else ""))
        if not aside.exists():
            os.replace(checkpoint, aside)
            _fsync(checkpoint.parent)
            return aside
    raise UserInputError(f"{checkpoint.parent} holds 1000 set-aside copies of {checkpoint.name}; remove them")


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints and the best one on validation loss."""
    checkpoints = list_checkpoints(run_dir)
    validated = [(loss, path) for path in checkpoints if (loss := _validation_loss(path)) is not None]
    kept = set(checkpoints[-keep:])
    if validated:
        kept.add(min(validated, key=lambda item: item[0])[1])
    removed = [path for path in checkpoints if path not in kept]
    for path in removed:  # hide first, so a kill mid-delete leaves no half checkpoint under a step name
        hidden = path.with_name(f".{path.name}.deleting")
        os.replace(path, hidden)
        shutil.rmtree(hidden)
    return removed


def _validation_loss(checkpoint: Path) -> float | None:
    """The recorded validation loss, or None (also for an unreadable meta, which pruning then treats as unscored)."""
    try:
        loss = read_meta(checkpoint).get("validation_loss")
    except UserInputError:
        return None
    return loss if isinstance(loss, (int, float)) else None


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Delete hidden temporaries left by a process killed while writing a checkpoint."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
