"""Atomic file and directory writes: write beside the destination, then rename.

A crash part-way leaves the previous file (or nothing) at the destination, never
a half-written one. Temporary siblings are named `.NAME.tmp-PID` so they are easy
to recognise and clean: the next write to the same destination removes those of
processes that no longer run on this host (a killed forecast's `.F.nc.tmp-PID`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import psutil


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
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(destination)
    _remove(temporary)
    remove_dead_temporaries(destination)
    try:
        yield temporary
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
