"""Pytrees as flat `{path key: array}` tables, and back; canonical parameter hashes.

A leaf's path key joins its path segments with '/': dict keys and attribute
names as text, sequence indices as decimals, e.g. `params/denoiser/mlp/~/linear_0/w`
(haiku module names contain '/' themselves, so keys are not split back into
segments: the segments are stored beside them, see `checkpoint.py`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import jax
import numpy as np

PyTree = Any
Segment = str | int


def _segment(entry: Any) -> Segment:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, (jax.tree_util.SequenceKey, jax.tree_util.FlattenedIndexKey)):
        return int(entry.idx if hasattr(entry, "idx") else entry.key)
    raise TypeError(f"unsupported pytree path entry {entry!r}")


def path_key(segments: tuple[Segment, ...] | list[Segment]) -> str:
    """The flat key of a leaf: its path segments joined with '/'."""
    return "/".join(str(segment) for segment in segments)


def flatten_with_segments(tree: PyTree) -> dict[str, tuple[tuple[Segment, ...], Any]]:
    """`{path key: (segments, leaf)}` for every leaf of `tree`, in the tree's own leaf order."""
    table: dict[str, tuple[tuple[Segment, ...], Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        segments = tuple(_segment(entry) for entry in path)
        key = path_key(segments)
        if key in table:
            raise ValueError(f"two leaves share the path key {key!r}; rename one of them")
        table[key] = (segments, leaf)
    return table


def nested_dicts(entries: Mapping[tuple[Segment, ...], Any]) -> dict:
    """Rebuild nested dicts from `{segments: leaf}` (no template needed; sequences become int-keyed dicts)."""
    root: dict = {}
    for segments, leaf in entries.items():
        node = root
        for segment in segments[:-1]:
            node = node.setdefault(segment, {})
        node[segments[-1]] = leaf
    return root


def params_sha256(params: PyTree) -> str:
    """SHA-256 of parameter values in canonical order: leaves sorted by path key; key, dtype, shape, bytes hashed.

    Independent of how the tree is held (haiku dict, rebuilt nested dicts, device
    or host arrays), so a checkpoint's recorded hash can be checked after loading.
    """
    digest = hashlib.sha256()
    table = flatten_with_segments(params)
    for key in sorted(table):
        value = np.asarray(jax.device_get(table[key][1]))
        value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
