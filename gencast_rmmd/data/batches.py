"""Typed batches of plain arrays, and a seeded, resumable, prefetching batch iterator.

The model side never sees xarray: a `Batch` is a NamedTuple of arrays (a JAX
pytree), with channel order given by `ChannelLayout`. Values are physical
(un-normalised), NaN kept (e.g. SST over land); normalisation and NaN filling
happen in `gencast_rmmd.data.normalization`.

Order is a pure function of (seed, step): epoch e uses the permutation drawn
from `numpy.random.default_rng([seed, e])`, so `BatchIterator(start_step=n)`
resumes at step n without replaying data, and two iterators with the same seed
yield the same batches.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import deque
from typing import Iterator, NamedTuple

import numpy as np

from gencast_rmmd.data.forcings import forcing_channels
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.windows import WindowIndex
from gencast_rmmd.errors import UserInputError


class Batch(NamedTuple):
    """Model-side arrays of one batch (B examples, K target steps, channels last)."""

    inputs: np.ndarray     # [B, lat, lon, F * C_in]  input frames t-12h*(F-1) .. t, oldest first
    forcings: np.ndarray   # [B, K, lat, lon, C_forcing]  at each target time
    targets: np.ndarray    # [B, K, lat, lon, C_target]  at t + 12h * k
    static: np.ndarray     # [lat, lon, C_static]  the same for every example


class LabeledBatch(NamedTuple):
    """A batch and the initialisation time of each example (kept outside `jit`)."""

    batch: Batch
    init_times: np.ndarray  # [B] datetime64[ns]


class FrameReader:
    """Reads frames of a split, either from the store per batch or from an in-memory copy."""

    def __init__(self, source: DataSource, windows: WindowIndex, cache_in_memory: bool):
        self.source = source
        self._offset = 0
        self._cache: np.ndarray | None = None
        if cache_in_memory and len(windows):
            offsets = windows.frame_offsets()
            first = int(windows.init_positions.min() + offsets[0])
            last = int(windows.init_positions.max() + offsets[-1])
            self._offset = first
            self._cache = source.load_frames(np.arange(first, last + 1))

    def read(self, positions: np.ndarray) -> np.ndarray:
        if self._cache is not None:
            return self._cache[np.asarray(positions) - self._offset]
        return self.source.load_frames(positions)


def assemble_batch(source: DataSource, windows: WindowIndex, reader: FrameReader,
                   examples: np.ndarray) -> LabeledBatch:
    """Build the batch of the windows at indices `examples` into `windows.init_positions`."""
    layout = source.layout
    init_positions = windows.init_positions[np.asarray(examples, dtype=np.int64)]
    offsets = windows.frame_offsets()
    positions = init_positions[:, None] + offsets[None, :]                 # [B, F + K]
    frames = reader.read(positions.reshape(-1)).reshape(*positions.shape, *reader_shape(source))
    n_in = layout.n_input_channels
    input_frames = frames[:, :layout.input_frames, ..., :n_in]              # [B, F, lat, lon, C_in]
    inputs = np.concatenate(list(np.moveaxis(input_frames, 1, 0)), axis=-1)
    targets = frames[:, layout.input_frames:]                                # [B, K, lat, lon, C_target]
    target_times = windows.times.values[positions[:, layout.input_frames:]]  # [B, K]
    forcings = forcing_channels(target_times.reshape(-1), source.latitude, source.longitude)
    forcings = forcings.reshape(*target_times.shape, *forcings.shape[1:])
    batch = Batch(inputs=np.ascontiguousarray(inputs), forcings=forcings,
                  targets=np.ascontiguousarray(targets), static=source.static_channels)
    return LabeledBatch(batch, windows.times.values[init_positions])


def reader_shape(source: DataSource) -> tuple[int, int, int]:
    """Shape of one frame: (lat, lon, C_target)."""
    return len(source.latitude), len(source.longitude), source.layout.n_target_channels


class BatchIterator:
    """Infinite, seeded, resumable iterator over the batches of one split.

    Step s of epoch e = s // steps_per_epoch takes examples
    `perm_e[i*B:(i+1)*B]` with i = s % steps_per_epoch (the last partial batch
    of an epoch is dropped). A background thread assembles up to `prefetch`
    batches ahead.
    """

    def __init__(self, source: DataSource, windows: WindowIndex, batch_size: int, seed: int,
                 shuffle: bool = True, start_step: int = 0, prefetch: int = 2,
                 cache_in_memory: bool = False):
        if len(windows) < batch_size:
            raise UserInputError(
                f"only {len(windows)} valid windows for batch size {batch_size}; use a longer split or a smaller "
                "batch (data.loader.batch_size)")
        self.source, self.windows = source, windows
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.step = start_step
        self.steps_per_epoch = len(windows) // batch_size
        self.reader = FrameReader(source, windows, cache_in_memory)
        self._prefetch = prefetch
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if prefetch else None
        self._pending: deque[tuple[int, concurrent.futures.Future]] = deque()
        self._lock = threading.Lock()

    def examples_at(self, step: int) -> np.ndarray:
        """Indices into the split's windows used at global step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        count = len(self.windows)
        order = (np.random.default_rng([self.seed, epoch]).permutation(count) if self.shuffle
                 else np.arange(count))
        return order[position * self.batch_size:(position + 1) * self.batch_size]

    def batch_at(self, step: int) -> LabeledBatch:
        """The batch of global step `step` (pure function of seed and step)."""
        return assemble_batch(self.source, self.windows, self.reader, self.examples_at(step))

    def __iter__(self) -> Iterator[LabeledBatch]:
        return self

    def __next__(self) -> LabeledBatch:
        if self._pool is None:
            batch = self.batch_at(self.step)
        else:
            while len(self._pending) < self._prefetch + 1:
                upcoming = self.step + len(self._pending)
                self._pending.append((upcoming, self._pool.submit(self.batch_at, upcoming)))
            scheduled, future = self._pending.popleft()
            assert scheduled == self.step
            batch = future.result()
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop the prefetch thread."""
        if self._pool is not None:
            for _, future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_iterator(source: DataSource, split: str = "train", start_step: int = 0,
                  batch_size: int | None = None, target_steps: int | None = None) -> BatchIterator:
    """A `BatchIterator` over `split`, configured by `source.config.loader` (`target_steps`: the data
    config's unless given)."""
    loader = source.config.loader
    return BatchIterator(source, source.windows(split, target_steps), batch_size or loader.batch_size, loader.seed,
                         shuffle=loader.shuffle and split == "train", start_step=start_step,
                         prefetch=loader.prefetch, cache_in_memory=loader.cache_in_memory)


def batch_stream(source: DataSource, split: str, batch_size: int, target_steps: int | None = None):
    """`batches(start_step)` for the training loop: plain `Batch` pytrees from the data iterator."""

    def batches(start_step: int):
        iterator = make_iterator(source, split, start_step=start_step, batch_size=batch_size,
                                 target_steps=target_steps)
        try:
            for labeled in iterator:
                yield labeled.batch
        finally:
            iterator.close()

    return batches
