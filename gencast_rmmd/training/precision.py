"""Mixed precision: parameters stay float32; a loss may compute in bfloat16.

How the loop honours `train.compute_dtype`: it wraps every update rule's
loss with `with_compute_dtype(loss_fn, dtype)` (and a task's `step_inputs`
with `inputs_in_compute_dtype`), so the loss's floating inputs (params,
frozen params, batch) are cast to `dtype` and the loss and metrics come back
as float32. Gradients reach the float32 params through the cast; params,
optimiser states and EMA stay float32.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> jnp.dtype:
    """The dtype named by `train.compute_dtype` ('float32' or 'bfloat16')."""
    return jnp.dtype(COMPUTE_DTYPES[name])


def cast_floating(tree: PyTree, dtype: jnp.dtype) -> PyTree:
    """Cast every floating-point leaf of `tree` to `dtype`; integer and boolean leaves are untouched."""
    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
    return jax.tree.map(cast, tree)


def with_compute_dtype(loss_fn: Callable, dtype_name: str) -> Callable:
    """Wrap `loss_fn(params, frozen, key, batch) -> (loss, metrics)` to compute in `dtype_name`.

    A no-op for 'float32'. For 'bfloat16' params, frozen params and batch are
    cast on entry (`inputs_in_compute_dtype`); loss and metrics are returned as float32.
    """
    reduced_inputs = inputs_in_compute_dtype(loss_fn, dtype_name)
    if reduced_inputs is loss_fn:
        return loss_fn

    def reduced_precision_loss(params, frozen, key, batch):
        loss, metrics = reduced_inputs(params, frozen, key, batch)
        return cast_floating(loss, jnp.float32), cast_floating(metrics, jnp.float32)

    return reduced_precision_loss


def inputs_in_compute_dtype(function: Callable | None, dtype_name: str) -> Callable | None:
    """`function(params, frozen, key, batch, *rest)` with params, frozen and batch cast to `dtype_name` on entry.

    `rest` (a `step_inputs` hook's step index) is passed as it is.
    """
    dtype = compute_dtype(dtype_name)
    if function is None or dtype == jnp.float32:
        return function

    def reduced_precision(params, frozen, key, batch, *rest):
        return function(cast_floating(params, dtype), cast_floating(frozen, dtype), key, cast_floating(batch, dtype),
                        *rest)

    return reduced_precision
