"""Data parallelism: a 1-D `data` mesh over every device of every process.

Params, EMA and optimiser state are replicated; each batch leaf whose leading
axis is the global batch size is split along it (other leaves, e.g. static
fields `[lat, lon, C]`, are replicated). With several processes
(`jax.distributed`), every process reads the same global batch and hands JAX
only the rows its own devices hold (`jax.make_array_from_process_local_data`);
only process 0 writes checkpoints and logs.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training.config import DistributedConfig

PyTree = Any
DATA_AXIS = "data"


def initialize_distributed(config: DistributedConfig | None) -> None:
    """Join a multi-process run when `distributed.coordinator_address` is set; otherwise do nothing.

    Must run before any other JAX call of the process (the CLI calls it first;
    `train` calls it again, which is then a no-op).
    """
    if config is None or not config.enabled or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes, process_id=config.process_id)


def is_primary() -> bool:
    """True on the process that writes checkpoints, metrics and progress (process 0)."""
    return jax.process_index() == 0


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: all devices of all processes), with Auto axes."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_on_data(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a host or device pytree on every device of `mesh` (same values on every process)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(
        sharding, np.asarray(jax.device_get(leaf))), tree)


def _process_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> slice:
    """The contiguous rows of a global array that this process's devices hold."""
    index_map = sharding.addressable_devices_indices_map(shape)
    starts = [index[0].start or 0 for index in index_map.values()]
    stops = [shape[0] if index[0].stop is None else index[0].stop for index in index_map.values()]
    return slice(min(starts), max(stops))


def shard_batch(batch: PyTree, mesh: Mesh, global_batch_size: int) -> PyTree:
    """Global arrays from a host batch: leaves with leading axis `global_batch_size` split over 'data'."""
    split, whole = split_on_data(mesh), replicated(mesh)
    if global_batch_size % mesh.size:
        raise UserInputError(f"train.batch_size={global_batch_size} does not split evenly over {mesh.size} "
                             f"devices; use a multiple of {mesh.size}")
    leaves = jax.tree.leaves(batch)
    if not any(np.ndim(leaf) >= 1 and np.shape(leaf)[0] == global_batch_size for leaf in leaves):
        shapes = [tuple(np.shape(leaf)) for leaf in leaves]
        raise UserInputError(f"no batch array has train.batch_size={global_batch_size} examples on its leading "
                             f"axis (shapes {shapes[:4]}); make the data loader's batch size match")

    def place(leaf):
        value = np.asarray(leaf)
        if value.ndim >= 1 and value.shape[0] == global_batch_size:
            local = value[_process_rows(split, value.shape)]
            return jax.make_array_from_process_local_data(split, local, value.shape)
        return jax.make_array_from_process_local_data(whole, value, value.shape)

    return jax.tree.map(place, batch)
