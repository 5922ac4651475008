"""Chunk integrity: every zarr chunk is checked as it is read, and `deep_check` reads them all.

Why a check of our own: numcodecs' Blosc decoder trusts the compressed size
written in a chunk's 16-byte header, not the number of bytes actually stored
(zarr-developers/numcodecs#228; the fix, #854, is not released). A truncated
chunk makes it read past the end of its buffer: depending on what lies there it
raises "error during blosc decompression" (naming no store, variable or chunk)
or returns wrong numbers without any error — measured on a store made by
`data simulate`: a chunk cut to 1,000 of its 75,611 bytes decoded "fine" to
values that are not the data.

`CheckedStore` wraps the zarr store that `stores.open_store` opens, so every
read of the product (training, statistics, forecasts, evaluation) passes
through it. For each chunk it fetches it compares the Blosc header with the
bytes stored (compressed size, and the uncompressed size the array's chunk
shape implies), then decodes the chunk once with the array's compressor; a
chunk that fails raises `CorruptChunkError` (bad input: one line, exit 2) naming
the store, the variable, the chunk index and the file. A decoder that
cannot tell (Blosc/LZ4 carry no checksum) may still accept bytes altered in
place without changing their length; truncation, an empty or foreign file and
an undecodable payload are all caught. Absent chunks are legal in zarr (they
read as the array's fill value, NaN in ERA5-like stores) and are counted by
`deep_check`, not refused.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass
from typing import Callable, Iterator

import numcodecs
import numpy as np
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from gencast_rmmd.errors import UserInputError

_METADATA_NAMES = (".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json")
_BLOSC_HEADER = struct.Struct("<BBBBiii")   # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
# Bytes-to-bytes codecs of zarr v3 arrays that numcodecs decodes without their configuration.
_V3_DECODERS = {"blosc": numcodecs.Blosc, "gzip": numcodecs.GZip, "zstd": numcodecs.Zstd}


class CorruptChunkError(UserInputError):
    """A stored chunk that cannot be what its array's metadata says (truncated, foreign, undecodable)."""


@dataclass(frozen=True)
class ArrayCodec:
    """What a chunk of one zarr array must decode to: its decoders (outermost first) and size."""

    path: str
    zarr_format: int
    chunk_shape: tuple[int, ...]
    grid_shape: tuple[int, ...]
    itemsize: int | None            # None: not a fixed-size numeric dtype (no size checks)
    decoders: tuple[tuple[str, Callable[[bytes], bytes]], ...]
    size_is_exact: bool             # the innermost decoded bytes are the raw array values (no filters)
    separator: str
    prefix_c: bool                  # v3 default chunk keys start with "c"
    checkable: bool                 # False for sharded arrays (read by byte ranges)

    @property
    def chunk_bytes(self) -> int | None:
        return None if self.itemsize is None else math.prod(self.chunk_shape) * self.itemsize

    def chunk_index(self, rest: str) -> tuple[int, ...] | None:
        """The chunk index that the key part after the array path encodes, or None if it is no chunk key."""
        if self.separator != "/" and "/" in rest:
            return None
        parts = rest.split(self.separator)
        if self.prefix_c:
            if not parts or parts[0] != "c":
                return None
            parts = parts[1:]
        if len(parts) != len(self.chunk_shape) or not all(part.isdigit() for part in parts):
            return None
        return tuple(int(part) for part in parts)

    def chunk_key(self, index: tuple[int, ...]) -> str:
        encoded = self.separator.join(str(i) for i in index) or "0"
        return f"{self.path}/{'c' + self.separator if self.prefix_c else ''}{encoded}"

    def problem(self, stored: bytes) -> str | None:
        """Why `stored` cannot be a chunk of this array, or None if it decodes to the expected size."""
        data = stored
        for position, (name, decode) in enumerate(self.decoders):
            innermost = position == len(self.decoders) - 1
            if name == "blosc":
                problem = _blosc_header_problem(data, self.chunk_bytes if innermost and self.size_is_exact else None)
                if problem:
                    return problem
            try:
                data = decode(data)
            except Exception as error:  # any decoder failure is a bad chunk; say which decoder and why
                return f"{name} cannot decode it ({type(error).__name__}: {error})"
        size = len(memoryview(data).cast("B"))
        if self.size_is_exact and self.chunk_bytes is not None and size != self.chunk_bytes:
            return f"it holds {size} bytes of values, the chunk shape {self.chunk_shape} needs {self.chunk_bytes}"
        return None


def _blosc_header_problem(data: bytes, expected_nbytes: int | None) -> str | None:
    """Check a Blosc frame's header against the stored length (the decoder itself does not)."""
    if len(data) < _BLOSC_HEADER.size:
        return f"it has {len(data)} bytes, shorter than a Blosc header ({_BLOSC_HEADER.size})"
    _, _, _, _, nbytes, blocksize, cbytes = _BLOSC_HEADER.unpack_from(data)
    if cbytes != len(data):
        cut = "truncated" if cbytes > len(data) else "trailing bytes"
        return f"its Blosc header declares {cbytes} compressed bytes but {len(data)} are stored ({cut})"
    if expected_nbytes is not None and nbytes != expected_nbytes:
        return f"its Blosc header declares {nbytes} bytes of values, the chunk needs {expected_nbytes}"
    if nbytes < 0 or blocksize < 0:
        return "its Blosc header is not valid"
    return None


def _itemsize(dtype) -> int | None:
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        return None
    return parsed.itemsize if parsed.kind in "biufcmM" else None


def array_codec(path: str, metadata: dict) -> ArrayCodec | None:
    """The chunk checks for one array from its stored metadata (`.zarray` or v3 `zarr.json`); None if not an array."""
    if metadata.get("zarr_format") == 2 and "chunks" in metadata:
        compressor = metadata.get("compressor")
        decoders = ()
        if compressor:
            codec = numcodecs.get_codec(dict(compressor))
            decoders = ((compressor["id"], codec.decode),)
        shape, chunks = tuple(metadata["shape"]), tuple(metadata["chunks"])
        return ArrayCodec(path, 2, chunks, _grid(shape, chunks), _itemsize(metadata.get("dtype")), decoders,
                          size_is_exact=not metadata.get("filters"),
                          separator=metadata.get("dimension_separator") or ".", prefix_c=False, checkable=True)
    if metadata.get("zarr_format") == 3 and metadata.get("node_type") == "array":
        shape = tuple(metadata["shape"])
        chunks = tuple(metadata["chunk_grid"]["configuration"]["chunk_shape"])
        codecs = [codec["name"] if isinstance(codec, dict) else str(codec) for codec in metadata.get("codecs", [])]
        after_bytes = codecs[codecs.index("bytes") + 1:] if "bytes" in codecs else []
        known = all(name in _V3_DECODERS for name in after_bytes)
        decoders = tuple((name, _V3_DECODERS[name]().decode) for name in reversed(after_bytes)) if known else ()
        encoding = metadata.get("chunk_key_encoding", {"name": "default"})
        configuration = encoding.get("configuration", {}) if isinstance(encoding, dict) else {}
        default = (encoding.get("name") if isinstance(encoding, dict) else encoding) == "default"
        separator = configuration.get("separator", "/" if default else ".")
        return ArrayCodec(path, 3, chunks, _grid(shape, chunks), _itemsize(metadata.get("data_type")), decoders,
                          size_is_exact=known and codecs[:1] == ["bytes"], separator=separator, prefix_c=default,
                          checkable=known and "sharding_indexed" not in codecs)
    return None


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.ceil(size / chunk) if chunk else 0 for size, chunk in zip(shape, chunks))


class CheckedStore(WrapperStore):
    """A read-only zarr store wrapper that refuses, by name, any chunk that is not a valid chunk of its array."""

    def __init__(self, store: Store, location: str):
        super().__init__(store)
        self.location = location
        self._arrays: dict[str, ArrayCodec | None] = {}

    def _with_store(self, store: Store) -> "CheckedStore":
        return type(self)(store, self.location)

    def __reduce__(self):  # picklable for dask's distributed scheduler (the cache is rebuilt there)
        return type(self), (self._store, self.location)

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        buffer = await self._store.get(key, prototype, byte_range)
        if buffer is None or byte_range is not None or key.rsplit("/", 1)[-1] in _METADATA_NAMES:
            return buffer
        located = await self._locate(key)
        if located is not None:
            codec, index = located
            problem = codec.problem(buffer.to_bytes())
            if problem:
                raise corrupt_chunk(self.location, codec.path, index, key, problem)
        return buffer

    async def _locate(self, key: str) -> tuple[ArrayCodec, tuple[int, ...]] | None:
        """The array and chunk index of a chunk key (shortest array path first), or None."""
        parts = key.split("/")
        for cut in range(1, len(parts)):
            codec = await self._array(("/".join(parts[:cut])))
            if codec is not None:
                index = codec.chunk_index("/".join(parts[cut:]))
                return (codec, index) if index is not None and codec.checkable else None
        return None

    async def _array(self, path: str) -> ArrayCodec | None:
        if path not in self._arrays:
            self._arrays[path] = await self._read_array_codec(path)
        return self._arrays[path]

    async def _read_array_codec(self, path: str) -> ArrayCodec | None:
        prototype = default_buffer_prototype()
        for name in (".zarray", "zarr.json"):
            raw = await self._store.get(f"{path}/{name}", prototype)
            if raw is None:
                continue
            try:
                metadata = json.loads(raw.to_bytes())
                if name == ".zarray":
                    metadata.setdefault("zarr_format", 2)
                return array_codec(path, metadata)
            except (ValueError, KeyError, TypeError):
                return None      # unreadable metadata: zarr itself reports it
        return None


def corrupt_chunk(location: str, variable: str, index: tuple[int, ...], key: str, problem: str) -> CorruptChunkError:
    """The one-line error for a bad chunk: store, variable, chunk index, file, why, and what to do."""
    return CorruptChunkError(
        f"corrupt chunk in {location}: variable {variable}, chunk {index} (file {key}): {problem}; restore the "
        "store from its source (or write it again), and run `gencast-rmmd data check --deep` to list every bad chunk")


@dataclass(frozen=True)
class DeepCheckResult:
    """What reading every chunk found: problems (variable, chunk index, message) and absent chunks per variable."""

    chunks_read: int
    problems: tuple[tuple[str, tuple[int, ...], str], ...]
    absent: dict[str, int]


def chunk_indices(codec: ArrayCodec) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(count) for count in codec.grid_shape))


def deep_check(store: CheckedStore, variables: list[str], batch: int = 256,
               log: Callable[[str], None] | None = None) -> DeepCheckResult:
    """Read and decode every chunk of `variables` in `store`, with dask threads, a batch of chunks at a time.

    Memory stays bounded: each task fetches one chunk, decodes it, keeps only a
    verdict. An absent chunk (zarr reads its fill value) is counted, not a problem.
    """
    import dask
    from zarr.core.sync import sync

    def verdict(codec: ArrayCodec, index: tuple[int, ...]) -> str | None:
        key = codec.chunk_key(index)
        raw = sync(store._store.get(key, default_buffer_prototype()))
        if raw is None:
            return "absent"
        return codec.problem(raw.to_bytes()) or ""

    problems, absent, chunks_read = [], {}, 0
    for variable in variables:
        codec = sync(store._array(variable))
        if codec is None or not codec.checkable or not codec.chunk_shape:
            if log:
                log(f"deep check: {variable} skipped (not a plain chunked zarr array)")
            continue
        indices = list(chunk_indices(codec))
        absent[variable] = 0
        for start in range(0, len(indices), batch):
            part = indices[start:start + batch]
            verdicts = dask.compute(*[dask.delayed(verdict)(codec, index) for index in part], scheduler="threads")
            for index, found in zip(part, verdicts):
                if found == "absent":
                    absent[variable] += 1
                elif found:
                    problems.append((variable, index, found))
        chunks_read += len(indices) - absent[variable]
        if log:
            bad = sum(1 for name, _, _ in problems if name == variable)
            log(f"deep check: {variable}: {len(indices)} chunks, {bad} bad, {absent[variable]} absent")
    return DeepCheckResult(chunks_read, tuple(problems), absent)
