"""Optimiser, learning-rate schedule and parameter EMA, as small pure functions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gencast_rmmd.training.config import OptimizerConfig

PyTree = Any


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `config.learning_rate` over `warmup_steps`, cosine decay to 0 at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=max(total_steps, config.warmup_steps + 1), end_value=0.0)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping to `grad_clip_norm`, then AdamW on the warm-up + cosine schedule."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1, b2=config.b2,
                    weight_decay=config.weight_decay),
    )


def ema_decay_at(updates: jax.Array, decay: float) -> jax.Array:
    """The EMA decay after `updates` applied updates: min(decay, (1 + n) / (10 + n)).

    The warm-up (TensorFlow's `ExponentialMovingAverage(num_updates=n)`) keeps a
    short run's average from being mostly its initial parameters: a plain
    decay of 0.999 over 300 steps would leave 74 % of the weight on the
    starting point (for a distilled student, on the teacher's weights). With
    the warm-up the EMA follows the early, fast-moving parameters and settles
    into `decay` after ~10 / (1 - decay) updates.
    """
    updates = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + updates) / (10.0 + updates))


def ema_update(ema_params: PyTree, params: PyTree, decay: jax.Array | float) -> PyTree:
    """Exponential moving average of parameters: `ema <- decay * ema + (1 - decay) * params`."""
    return jax.tree.map(lambda average, value: (decay * average + (1.0 - decay) * value).astype(average.dtype),
                        ema_params, params)


def select_tree(condition: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise `jnp.where(condition, a, b)` for a scalar boolean: keeps either whole tree, NaNs included."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)
