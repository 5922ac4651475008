"""Atomic file and directory writes: write beside the destination, then rename.

A crash part-way leaves the previous file (or nothing) at the destination, never
a half-written one. Temporary siblings are named `.NAME.tmp-PID` so they are easy
to recognise and clean: the next write to the same destination removes those of
processes that no longer run on this host (a killed forecast's `.F.nc.tmp-PID`).

Output paths that cannot be written are bad input, said in one line before any
long work (`check_output_path`) and again by `atomic_path` itself: a parent
that is a file, a file where a directory goes and the reverse, and a full disk
("no space left on device writing PATH"; the destination keeps what it had).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import psutil
import yaml

from gencast_rmmd.errors import UserInputError

# Below this many free bytes a failed write is reported as a full disk: HDF5 and
# netCDF say only "HDF error" when the disk fills, so errno alone cannot tell.
_NEARLY_FULL_BYTES = 1 << 20


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto `path`.

    Works for files and directories (e.g. zarr stores). An existing destination
    is replaced only after the new one is complete. On error the temporary is
    removed and the destination is untouched.
    """
    destination = Path(path)
    _make_parent(destination)
    temporary = _temporary_sibling(destination)
    _remove(temporary)
    remove_dead_temporaries(destination)
    try:
        try:
            yield temporary
        except Exception as error:
            if not isinstance(error, UserInputError) and _disk_full(error, destination.parent):
                raise disk_full(destination) from None
            raise
        if temporary.is_dir() != destination.is_dir() and destination.exists():
            raise UserInputError(
                f"cannot write {destination}: it is an existing {'directory' if destination.is_dir() else 'file'} "
                f"and the output is a {'directory' if temporary.is_dir() else 'file'}; remove it or choose another "
                "name (nothing was written)")
        if temporary.is_dir() and destination.exists():
            # Directories cannot be renamed over a non-empty directory: move the
            # old one aside first, then swap, then delete the old one.
            retired = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            _remove(retired)
            os.replace(destination, retired)
            os.replace(temporary, destination)
            _remove(retired)
        else:
            os.replace(temporary, destination)
    except BaseException:
        _remove(temporary)
        raise


def check_output_path(path: str | os.PathLike, *, directory: bool | None = None, option: str = "--out") -> Path:
    """Refuse, before any long work, an output path that cannot be written; return it as a Path.

    `directory`: the output is a directory (a run, a zarr store) rather than a
    file; None: a directory if the name ends in `.zarr`. Refused: an existing
    directory where a file goes (and the reverse), a parent path that is a
    file, a parent that cannot be written. Nothing is created.
    """
    destination = Path(path)
    if directory is None:
        directory = destination.name.lower().endswith(".zarr")
    if destination.exists() and destination.is_dir() != directory:
        found, wanted = ("directory", "a file") if destination.is_dir() else ("file", "a directory")
        raise UserInputError(f"{option} {destination} is an existing {found}; give the path of {wanted} "
                             "(or remove it)")
    ancestor = destination.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserInputError(f"{option} {destination}: {ancestor} is a file, not a directory; choose another "
                             "location")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"{option} {destination}: cannot write in {ancestor} (permission denied)")
    return destination


def disk_full(path: str | os.PathLike) -> UserInputError:
    """The one-line error for a write that ran out of space."""
    where = Path(path).parent
    free = shutil.disk_usage(where).free if where.exists() else 0
    return UserInputError(f"no space left on device writing {path} ({free // 1024} KiB free in {where}); free some "
                          "space or write elsewhere (nothing was replaced)")


def _disk_full(error: BaseException, directory: Path) -> bool:
    """Whether `error` (raised while writing in `directory`) came from a full disk or quota."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(directory).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def _make_parent(destination: Path) -> None:
    """Create the parent directories of `destination`, or say in one line why they cannot be."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_output_path(destination, directory=False, option="output")
        raise
    except PermissionError:
        raise UserInputError(f"cannot create the directory {destination.parent} (permission denied)") from None


def remove_dead_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings `.NAME.tmp-PID` of `path` whose process no longer runs; those removed.

    A reused pid counts as running: its temporary is kept.
    """
    destination = Path(path)
    prefix = f".{destination.name}.tmp-"
    removed = []
    if not destination.parent.is_dir():
        return removed
    for leftover in destination.parent.iterdir():
        pid = leftover.name.removeprefix(prefix)
        if leftover.name.startswith(prefix) and pid.isdigit() and int(pid) > 0 and not psutil.pid_exists(int(pid)):
            _remove(leftover)
            removed.append(leftover)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write `payload` as indented JSON to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_netcdf_atomic(dataset, path: str | os.PathLike, encoding: dict | None = None) -> None:
    """Write an xarray Dataset to NetCDF-4 at `path` atomically (netCDF4 engine)."""
    with atomic_path(path) as temporary:
        dataset.to_netcdf(temporary, engine="netcdf4", encoding=encoding or {})


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """A YAML file whose top level is a mapping (a config, a rules file); `{}` when it is empty.

    Every way the file can be unreadable (missing, a directory, not UTF-8, not YAML, not a mapping) is a
    one-line `UserInputError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"config file {path} is a directory; give a YAML file")
    if not path.is_file():
        raise UserInputError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                             f"{error.start}); save the config as UTF-8") from None
    except OSError as error:
        raise UserInputError(f"cannot read config file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserInputError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: expected a mapping of sections at the top level")
    return raw


def read_json_object(path: str | os.PathLike, label: str | None = None, remedy: str = "") -> dict:
    """A JSON file holding an object, as a dict; every other case is one `UserInputError` line.

    The line names `label` (default: the path), what is wrong (missing, unreadable or not JSON, not an
    object) and ends with `; remedy` when one is given.
    """
    path = Path(path)
    label = label or str(path)
    suffix = f"; {remedy}" if remedy else ""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{label} does not exist{suffix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{label} is not readable JSON ({error}){suffix}") from None
    if not isinstance(content, dict):
        raise UserInputError(f"{label} holds a JSON {type(content).__name__}, not an object{suffix}")
    return content
