"""What a training task gives the loop: parameter groups, frozen trees and update rules.

One loop serves the teacher and every distiller. A task owns the maths; the
loop owns optimisation, EMA, sharding, NaN skipping, checkpoints and logging.

Parameters are a dict of named *groups* (`{'denoiser': hk_params}` for the
teacher, `{'aux': ..., 'student': ...}` for moment matching). Each optimiser
step applies the task's `UpdateRule`s in order; rule i differentiates its own
loss with respect to its groups only, with every other group held at its
current value (already updated by rules before it in the same step), and
updates them with its own AdamW state. So moment matching writes

    [UpdateRule('aux', ('aux',), aux_loss), UpdateRule('student', ('student',), student_loss)]

(auxiliary-denoiser update, then student update, alternating every step),
and the teacher is the one-rule case `[UpdateRule('denoiser', ('denoiser',), loss)]`.

`frozen` trees (teacher params, the frozen phase-1 student, the frozen aux
model) are passed to every loss, never differentiated nor updated, and are
stored in checkpoints so a run is self-contained and resumes bit-identically.

Keys: step s uses `fold_in(train_root, s)` and rule i within it
`fold_in(step_key, i)`, where `train_root, validation_root, init_root =
split(PRNGKey(seed), 3)`. A loss therefore never needs to carry RNG state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import jax

from gencast_rmmd.training.config import OptimizerConfig

PyTree = Any
Metrics = Mapping[str, jax.Array]
# loss(params, frozen, key, batch) -> (scalar loss, {name: scalar metric}); `params` holds every group.
LossFn = Callable[[Mapping[str, PyTree], PyTree, jax.Array, PyTree], tuple[jax.Array, Metrics]]


class TrainableState(NamedTuple):
    """What `TrainTask.init` returns: trainable groups and frozen trees."""

    params: dict[str, PyTree]   # group name -> params pytree (haiku: dict[module, dict[name, array]])
    frozen: PyTree = {}         # passed to losses, never updated; stored in checkpoints


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """One optimiser update inside a step: minimise `loss` over the params `groups`.

    `optimizer` None uses the `train:` section's optimiser settings; give an
    `OptimizerConfig` for, e.g., a different learning rate for an auxiliary model.
    `repeats` n > 1 applies the rule n times in a row within the step (two
    time scales: DMD2's fake score takes 5 updates per generator update), each
    with a fresh key `fold_in(rule_key, r)` and the same inputs, one AdamW
    state; its schedule then counts n updates per step (warm-up and length
    scaled by n), and its logged metrics are the means over the n updates.
    """

    name: str
    groups: tuple[str, ...]
    loss: LossFn
    optimizer: OptimizerConfig | None = None
    repeats: int = 1


class TrainTask(Protocol):
    """The slot a teacher or distiller fills to be trained by `gencast_rmmd.training.train`."""

    def init(self, key: jax.Array, example_batch: PyTree) -> TrainableState:
        """Initial params and frozen trees (may be traced under `jax.eval_shape` on resume)."""

    def update_rules(self) -> Sequence[UpdateRule]:
        """The updates applied, in order, at every step; the last one is the primary loss (logged as `loss`)."""

    def validation_loss(self, params: Mapping[str, PyTree], frozen: PyTree, key: jax.Array,
                        batch: PyTree) -> tuple[jax.Array, Metrics]:
        """Scalar validation loss (lower is better) and metrics, evaluated on the EMA params."""

    def config_payload(self) -> dict:
        """JSON-able dict stored in every checkpoint: configs to rebuild model and sampler, data statistics."""


# Optional on a task: `step_inputs(params, frozen, key, batch, step) -> PyTree`, computed ONCE per step before
# the rules, without gradient, with the step's params, key `fold_in(step_key, len(rules))` (an index no rule
# uses, so rule keys are unchanged) and index `step` (int32, the steps taken before this one: checkpointed, so
# a resumed run sees the same values); every rule's loss then receives its result in place of the batch. It
# lets alternating rules share one expensive draw (live RMMD: the aux and student rules train on the same
# policy samples of the student's K-step chain instead of drawing two), and a method's schedule over training
# follow the step (DMDR's stages and dynamic strategies).
StepInputsFn = Callable[[Mapping[str, PyTree], PyTree, jax.Array, PyTree, jax.Array], PyTree]


def validate_rules(rules: Sequence[UpdateRule], groups: Mapping[str, Any]) -> None:
    """Check that rule names are unique and every rule names existing, non-empty groups."""
    names = [rule.name for rule in rules]
    if not rules:
        raise ValueError("a task needs at least one UpdateRule")
    if len(set(names)) != len(names):
        raise ValueError(f"update rule names must be unique, got {names}")
    for rule in rules:
        if not rule.groups:
            raise ValueError(f"update rule {rule.name!r} names no parameter group")
        if rule.repeats < 1:
            raise ValueError(f"update rule {rule.name!r} has repeats {rule.repeats}; it must be at least 1")
        unknown = [group for group in rule.groups if group not in groups]
        if unknown:
            raise ValueError(f"update rule {rule.name!r} names unknown groups {unknown}; the task's "
                             f"params have {sorted(groups)}")
