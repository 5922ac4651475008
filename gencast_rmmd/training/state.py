"""Training state and the pure (jit-able) train and validation steps.

One step s, for update rules r_1..r_n (see `task.py`):

    key_s = fold_in(train_root, s)
    for i, r in enumerate(rules):
        g         = grad_{params[r.groups]} r.loss(params, frozen, fold_in(key_s, i), batch)
        params[r.groups], opt[r] = AdamW_r(clip(g), opt[r])
        (r.repeats n > 1: n such updates in a row, keys fold_in(fold_in(key_s, i), 0..n-1))
    finite = every rule's loss and gradient norm is finite
    if finite: ema <- d_n * ema + (1 - d_n) * params,  d_n = min(decay, (1 + n) / (10 + n)), n updates so far
    else:      params, opt, ema keep their values from before the step

The skip is a `jnp.where` inside the step (no host round trip, no change to
the numerics of finite steps). The step counter advances either way, so keys
and data stay aligned with an uninterrupted run; the learning-rate schedule
counts applied updates only (optax's own counter lives in the reverted state).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from gencast_rmmd.training.config import OptimizerConfig, TrainConfig
from gencast_rmmd.training.optim import ema_decay_at, ema_update, learning_rate_schedule, make_optimizer, select_tree
from gencast_rmmd.training.task import StepInputsFn, TrainableState, UpdateRule

PyTree = Any


class TrainState(NamedTuple):
    """Everything that evolves during training (a pytree; all of it is checkpointed)."""

    step: jax.Array                   # int32: steps taken, applied or skipped
    params: dict[str, PyTree]         # trainable groups
    ema_params: dict[str, PyTree]     # EMA of every group
    opt_states: dict[str, PyTree]     # rule name -> optax state
    frozen: PyTree                    # never updated
    nonfinite_total: jax.Array        # int32: skipped steps so far
    nonfinite_consecutive: jax.Array  # int32: skipped steps since the last applied one


class Optimizers(NamedTuple):
    """Per-rule optax transformations and their learning-rate schedules (for logging)."""

    transforms: dict[str, optax.GradientTransformation]
    schedules: dict[str, optax.Schedule]


def make_optimizers(rules: Sequence[UpdateRule], config: TrainConfig) -> Optimizers:
    """AdamW per rule, from the rule's own settings or the `train:` section's.

    A rule with `repeats` n counts n updates per step: its warm-up and schedule length are n times the
    loop's, so its learning rate follows the same curve over the run's steps as a rule applied once.
    """
    settings = {rule.name: _repeated((rule.optimizer or config.optimizer), rule.repeats) for rule in rules}
    total = {rule.name: config.steps * rule.repeats for rule in rules}
    return Optimizers(
        transforms={name: make_optimizer(value, total[name]) for name, value in settings.items()},
        schedules={name: learning_rate_schedule(value, total[name]) for name, value in settings.items()},
    )


def _repeated(optimizer: OptimizerConfig, repeats: int) -> OptimizerConfig:
    """`optimizer` with its warm-up counted in updates of a rule applied `repeats` times per step."""
    if repeats == 1:
        return optimizer
    return optimizer.model_copy(update={"warmup_steps": optimizer.warmup_steps * repeats})


def init_train_state(trainable: TrainableState, rules: Sequence[UpdateRule], optimizers: Optimizers) -> TrainState:
    """Step 0: EMA equal to the params, fresh optimiser states, zero counters."""
    params = jax.tree.map(jnp.asarray, dict(trainable.params))  # canonical dtypes (numpy float64 -> float32)
    opt_states = {rule.name: optimizers.transforms[rule.name].init({group: params[group] for group in rule.groups})
                  for rule in rules}
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, ema_params=jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), params),
                      opt_states=opt_states, frozen=jax.tree.map(jnp.asarray, trainable.frozen), nonfinite_total=zero,
                      nonfinite_consecutive=zero)


def make_train_step(rules: Sequence[UpdateRule], optimizers: Optimizers, ema_decay: float,
                    step_inputs: StepInputsFn | None = None
                    ) -> Callable[[TrainState, PyTree, jax.Array], tuple[TrainState, dict]]:
    """The pure step `(state, batch, train_root) -> (state, metrics)`; jit it (the loop does).

    With `step_inputs` (a task's optional hook, see `task.StepInputsFn`) the rules receive
    `sg(step_inputs(params, frozen, fold_in(step_key, len(rules)), batch, step))` instead of the batch.
    """

    def update_once(rule: UpdateRule, params: dict, opt_state: PyTree, frozen: PyTree, key: jax.Array,
                    batch: PyTree):
        trainable = {group: params[group] for group in rule.groups}

        def rule_loss(trainable_groups):
            return rule.loss({**params, **trainable_groups}, frozen, key, batch)

        (loss, task_metrics), grads = jax.value_and_grad(rule_loss, has_aux=True)(trainable)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizers.transforms[rule.name].update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, {"loss": loss, "grad_norm": grad_norm, **task_metrics}

    def apply_rule(index: int, rule: UpdateRule, params: dict, opt_state: PyTree, frozen: PyTree,
                   applied_updates: jax.Array, step_key: jax.Array, batch: PyTree):
        rule_key = jax.random.fold_in(step_key, index)
        if rule.repeats == 1:
            trainable, opt_state, metrics = update_once(rule, params, opt_state, frozen, rule_key, batch)
        else:   # n updates in a row under one scan (one compiled copy of the rule), metrics averaged over them
            def repeat(carry, key):
                trainable, state = carry
                trainable, state, metrics = update_once(rule, {**params, **trainable}, state, frozen, key, batch)
                return (trainable, state), metrics

            keys = jax.vmap(lambda r: jax.random.fold_in(rule_key, r))(jnp.arange(rule.repeats))
            start = {group: params[group] for group in rule.groups}
            (trainable, opt_state), per_update = jax.lax.scan(repeat, (start, opt_state), keys)
            finite_all = jnp.all(jnp.isfinite(per_update["loss"]) & jnp.isfinite(per_update["grad_norm"]))
            metrics = jax.tree.map(jnp.mean, per_update)
            metrics = {**metrics, "loss": jnp.where(finite_all, metrics["loss"], jnp.nan)}
        params = {**params, **trainable}
        loss, grad_norm = metrics.pop("loss"), metrics.pop("grad_norm")
        updates_so_far = applied_updates if rule.repeats == 1 else applied_updates * rule.repeats
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": optimizers.schedules[rule.name](updates_so_far),
                   **metrics}
        return params, opt_state, metrics, jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def train_step(state: TrainState, batch: PyTree, train_root: jax.Array) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(train_root, state.step)
        applied_updates = state.step - state.nonfinite_total
        params, opt_states, finite = state.params, dict(state.opt_states), jnp.bool_(True)
        if step_inputs is not None:
            batch = jax.lax.stop_gradient(step_inputs(params, state.frozen,
                                                      jax.random.fold_in(step_key, len(rules)), batch, state.step))
        rule_metrics = {}
        for index, rule in enumerate(rules):
            params, opt_states[rule.name], rule_metrics[rule.name], rule_finite = apply_rule(
                index, rule, params, state.opt_states[rule.name], state.frozen, applied_updates, step_key, batch)
            finite = finite & rule_finite
        params = select_tree(finite, params, state.params)
        opt_states = select_tree(finite, opt_states, state.opt_states)
        ema_params = ema_update(state.ema_params, params, ema_decay_at(applied_updates, ema_decay))
        ema_params = select_tree(finite, ema_params, state.ema_params)
        skipped = (~finite).astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1, params=params, ema_params=ema_params, opt_states=opt_states,
            frozen=state.frozen, nonfinite_total=state.nonfinite_total + skipped,
            nonfinite_consecutive=jnp.where(finite, 0, state.nonfinite_consecutive + 1).astype(jnp.int32))
        return new_state, {**flatten_rule_metrics(rule_metrics), "skipped": skipped}

    return train_step


def flatten_rule_metrics(rule_metrics: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, jax.Array]:
    """One rule: its metrics unprefixed. Several: `rule/metric` for each, plus the last rule's unprefixed."""
    *_, last = rule_metrics
    flat = dict(rule_metrics[last])
    if len(rule_metrics) > 1:
        for name, metrics in rule_metrics.items():
            flat.update({f"{name}/{metric}": value for metric, value in metrics.items()})
    return flat


def make_validation_step(validation_loss: Callable) -> Callable:
    """`(ema_params, frozen, key, batch) -> {'validation_loss': ..., 'validation/<metric>': ...}`."""

    def validation_step(ema_params, frozen, key, batch):
        loss, metrics = validation_loss(ema_params, frozen, key, batch)
        return {"validation_loss": loss, **{f"validation/{name}": value for name, value in metrics.items()}}

    return validation_step


def root_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(train_root, validation_root, init_root) derived from the run's seed."""
    train_root, validation_root, init_root = jax.random.split(jax.random.PRNGKey(seed), 3)
    return train_root, validation_root, init_root
