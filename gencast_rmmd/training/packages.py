"""Weights packages on disk: parameters shipped without their training state, checked by hash when read.

A package is a directory of two files:

    weights.npz    one plain array per parameter leaf (nothing executable)
    weights.json   `format`, `kind`, the parameters' sha256, the payload that rebuilds the model, where the
                   weights came from, and `arrays` (each npz key's path in the parameter tree)

Three kinds share the layout: a teacher's EMA denoiser (`kind: teacher`, the tree `{"denoiser": params}`,
`gencast_rmmd.teacher.weights`), a phase-1 moment-matching student (`kind: phase1`, the tree
`{"student": ..., "aux": ...}`) and a phase-2 student to forecast with or continue (`kind: phase2`, its
trained groups; `gencast_rmmd.distill.weights` for both). Packages written before `kind` existed
are teachers. The recorded hash (`package_sha256`) is the one the exporting checkpoint recorded, so a
package traces to its run. This module reads and writes the files and finds where an install may write;
each kind checks and installs its own.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import atomic_path
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training.tree_io import flatten_with_segments, nested_dicts, params_sha256

FORMAT = "gencast_rmmd.weights/1"
WEIGHTS, INFO = "weights.npz", "weights.json"
# kind -> how a package of that kind is installed
INSTALL_COMMANDS = {"teacher": "gencast-rmmd weights install PACKAGE --config CONFIG --out RUN",
                    "phase1": "gencast-rmmd weights install PACKAGE --teacher RUN --out RUN",
                    "phase2": "gencast-rmmd weights install PACKAGE --teacher PHASE1_RUN --out RUN"}
KINDS = tuple(INSTALL_COMMANDS)


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def package_kind(info: dict) -> str:
    """The kind of a package's `weights.json` (`teacher` for packages older than the key)."""
    return info.get("kind", "teacher")


def package_sha256(kind: str, tree: Any) -> str:
    """The hash a package of `kind` records for `tree`: a teacher's arrays are its denoiser's leaves, hashed as
    the checkpoint's EMA group `{"denoiser": params}`; a phase-1 tree is the checkpoint's params as they are."""
    return params_sha256({"denoiser": tree} if kind == "teacher" else tree)


def write_package(out: str | os.PathLike, tree: Any, info: dict) -> dict:
    """Write `tree` and `info` (with its `kind`; plus format, hash, count and the array paths) as a package in
    `out`, atomically (a new directory renamed into place); return the full info."""
    table = flatten_with_segments(tree)
    info = {**info, "format": FORMAT, "params_sha256": package_sha256(package_kind(info), tree),
            "param_count": int(sum(np.size(leaf) for _, leaf in table.values())),
            "arrays": {key: list(segments) for key, (segments, _) in table.items()}}
    arrays = {key: np.asarray(leaf) for key, (_, leaf) in table.items()}
    with atomic_path(out) as temporary:
        temporary.mkdir()
        _write_file(temporary / WEIGHTS, lambda file: np.savez_compressed(file, allow_pickle=False, **arrays))
        _write_file(temporary / INFO, lambda file: file.write((json.dumps(info, indent=1, sort_keys=True)
                                                                + "\n").encode()))
    return info


def read_info(path: str | os.PathLike) -> dict:
    """A package's `weights.json` (UserInputError naming what is missing or unknown)."""
    path = Path(path)
    if not (path / INFO).is_file() or not (path / WEIGHTS).is_file():
        raise UserInputError(f"{path} is not a weights package (it needs {WEIGHTS} and {INFO}); write one with "
                             "`gencast-rmmd weights export`")
    try:
        info = json.loads((path / INFO).read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path / INFO} is not valid JSON ({error}); the package is damaged, fetch it "
                             "again") from None
    if info.get("format") != FORMAT:
        raise UserInputError(f"{path / INFO}: unknown weights format {info.get('format')!r} (expected {FORMAT})")
    if package_kind(info) not in KINDS:
        raise UserInputError(f"{path / INFO}: unknown package kind {info.get('kind')!r} (expected one of "
                             f"{', '.join(KINDS)})")
    return info


def read_package(path: str | os.PathLike, kind: str | None = None) -> tuple[dict, dict]:
    """`(tree, info)` of a package (of `kind` when given: another kind is refused with how to install it),
    after checking the tree against the recorded hash."""
    path = Path(path)
    info = read_info(path)
    found_kind = package_kind(info)
    if kind is not None and found_kind != kind:
        raise UserInputError(f"{path} is a {found_kind} package, not a {kind} one; install it with "
                             f"`{INSTALL_COMMANDS[found_kind]}`")
    try:
        with np.load(path / WEIGHTS, allow_pickle=False) as stored:
            leaves = {tuple(info["arrays"][key]): stored[key] for key in info["arrays"]}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise UserInputError(f"{path / WEIGHTS} cannot be read ({error}); the package is damaged, fetch it "
                             "again") from None
    tree = nested_dicts(leaves)
    found = package_sha256(found_kind, tree)
    if found != info["params_sha256"]:
        raise UserInputError(f"{path / WEIGHTS}: the parameters' sha256 is {found[:16]}…, not the "
                             f"{info['params_sha256'][:16]}… {INFO} records; the package is damaged or was "
                             "altered, fetch it again")
    return tree, info


def installed_already(out: Path, identity: dict, log) -> Path | None:
    """Where an install into the run directory `out` stands: its checkpoint when `out` already holds exactly
    this install (`identity` ⊆ its `installed_from`; logged), None when `out` is new or empty. A directory
    holding other checkpoints, or anything else, is refused: an install never writes beside other files."""
    existing = checkpoints.list_checkpoints(out)
    if existing:
        installed = checkpoints.read_meta(existing[-1]).get("installed_from") or {}
        if len(existing) == 1 and all(installed.get(key) == value for key, value in identity.items()):
            log(f"{out} already holds these weights ({existing[-1]})")
            return existing[-1]
        raise UserInputError(f"{out} already holds checkpoints; install into an empty run directory")
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"{out} is not empty; install into a new or empty run directory")
    return None


def first_difference(expected: Any, found: Any, where: str = "") -> str | None:
    """Dotted key of the first value that differs between two JSON-like trees (None when equal)."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found)):
            difference = first_difference(expected.get(key), found.get(key), f"{where}.{key}" if where else key)
            if difference:
                return difference
        return None
    return None if expected == found else where or "(root)"
