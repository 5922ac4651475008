"""The `Distiller` slot and what every distiller shares.

A distiller is a factory: given a `DistillContext` (the distill config, the
teacher's network, the model's space `ModelSpace`, and the anchors: the
teacher's parameters and those of the phase-1 student and aux model) it
returns the `TrainTask` whose parameter
groups, frozen trees and `UpdateRule`s implement the method; the generic loop
(`gencast_rmmd.training.train`) does the rest. Methods are chosen by name in
`registry.DISTILLERS`, one mapping in one place.

Shared maths (all in the model's residual-normalised space, EDM sigmas):
- `context.space.norm.inner(a, b, valid)` = sum_c w_c sum_{j,i} a_j m_bjic a_bjic b_bjic / sum_{j,i} a_j m_bjic
  per example: the inner product under which the teacher's loss is a squared norm
  (latitude area a_j, validity mask m, the teacher loss's channel weights w_c;
  `diffusion.loss.WeightedNorm`, the one norm of the loss, the moment terms and the reward);
- every squared error and surrogate is weighted by the EDM weight
  lambda(s) = (s^2 + 1)/s^2 of its noise level, as the teacher's loss is;
- a batch's first target step gives clean targets x_0 (NaN zeroed, masked),
  the conditioning and the mask (`context.space.prepare`).
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.diffusion.base import Conditioning, Denoiser
from gencast_rmmd.diffusion.loss import WeightedNorm
from gencast_rmmd.diffusion.model_space import ModelSpace, Prepared
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.diffusion.student_sampler import StudentSampler, student_noise_levels
from gencast_rmmd.distill.config import DistillConfig
from gencast_rmmd.distill.reward import reward_channel_scale, weighted_fair_crps
from gencast_rmmd.models.denoiser import DenoiserNetwork
from gencast_rmmd.training import TrainableState, TrainTask, UpdateRule

PyTree = Any
StartsFrom = Literal["teacher", "phase1"]   # where a method's student and aux start (see `Distiller`)


class Anchors(NamedTuple):
    """Parameter trees a run starts from (host arrays, haiku layout).

    `teacher`: the teacher's denoiser; `student` and `aux`: the phase-1
    student and aux model (both equal to the teacher before any moment
    matching, since every student and aux starts from the teacher's weights).
    A phase-2 run that continues another (`distill.run.load_source`) starts
    from that run's student and aux but keeps its phase-1 anchors,
    `student_phase1` and `aux_phase1`; None means the same as `student` / `aux`.
    """

    teacher: PyTree
    student: PyTree
    aux: PyTree
    student_phase1: PyTree = None
    aux_phase1: PyTree = None

    def frozen(self, group: str) -> PyTree:
        """The tree behind frozen group `group` ('teacher', 'student_phase1' or 'aux_phase1')."""
        if group == "teacher":
            return self.teacher
        anchor = getattr(self, group)
        return anchor if anchor is not None else getattr(self, FROZEN_SOURCES[group])


@dataclass(frozen=True, eq=False)
class DistillContext:
    """What a distiller is given for one run (one reward weight): its config, the network, the model's space
    (normaliser, grid, noise, the weighted norm: `diffusion.model_space.ModelSpace`), the anchors, and the
    student's model card (the payload its checkpoints carry). Everything else is derived here."""

    config: DistillConfig
    network: DenoiserNetwork
    space: ModelSpace
    anchors: Anchors
    payload: dict               # the student's model card, as written to its checkpoints

    @property
    def reward_weight(self) -> float:
        """lambda of this run."""
        return float(self.config.distill.reward_weights[0])

    @functools.cached_property
    def reward_norm(self) -> WeightedNorm:
        """The loss's norm with w_c k_c: the teacher loss's channel weights times the reward-unit scale."""
        return self.space.norm.scaled(reward_channel_scale(self.space.normalizer, self.config.distill.reward_units))

    @functools.cached_property
    def levels(self) -> np.ndarray:
        """The student grid s_0 > ... > s_{K-1} (without the final 0), float32."""
        return student_noise_levels(self.config.distill.student)[:-1].astype(np.float32)

    @functools.cached_property
    def sampler(self) -> StudentSampler:
        return StudentSampler(self.config.distill.student, self.space.noise)

    def denoiser(self, params: PyTree) -> Denoiser:
        """D(x; s, cond) = c_skip x + c_out F_params(c_in x; s, cond) for any of the three networks."""
        return PreconditionedDenoiser(functools.partial(self.network.apply, params))

    def denoise_together(self, calls: list[tuple[PyTree, jax.Array, jax.Array]],
                         conditioning: Conditioning) -> list[jax.Array]:
        """[D_{p_i}(x_i; s_i, cond) for (p_i, x_i, s_i) in calls], evaluated as ONE network call vmapped over i.

        Same values as separate calls; the compiled program holds one copy of
        the network instead of len(calls) (compile time) at the price of a
        transient stacked copy of the parameter sets; gradients flow to every
        p_i and x_i that carries one.
        """
        params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[call[0] for call in calls])
        noisy = jnp.stack([call[1] for call in calls])
        levels = jnp.stack([jnp.broadcast_to(jnp.asarray(call[2], noisy.dtype), noisy.shape[1:2]) for call in calls])
        outputs = jax.vmap(lambda p, x, s: self.denoiser(p)(x, s, conditioning))(params, noisy, levels)
        return list(outputs)

    def weighted_crps(self, samples: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
        """Mean over conditions of the weighted fair CRPS; samples [M, B, ...] (reward units)."""
        return jnp.mean(weighted_fair_crps(samples, target, valid, self.reward_norm))


def repeat_members(prepared: Prepared, members: int) -> Prepared:
    """Each condition repeated M times along the batch (condition-major: row b M + m is member m of b)."""
    repeat = functools.partial(jnp.repeat, repeats=members, axis=0)
    conditioning = prepared.conditioning
    return Prepared(repeat(prepared.clean),
                    Conditioning(repeat(conditioning.inputs), repeat(conditioning.forcings), conditioning.static),
                    repeat(prepared.valid))


def by_member(rows: jax.Array, members: int) -> jax.Array:
    """[B M, ...] condition-major rows -> [M, B, ...] (the layout `weighted_fair_crps` takes)."""
    return jnp.swapaxes(rows.reshape(rows.shape[0] // members, members, *rows.shape[1:]), 0, 1)


def validation_crps(context: DistillContext, student_params: PyTree, key: jax.Array,
                    batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Fair CRPS (reward units) of M K-step student samples per condition: every distiller's validation loss."""
    members = context.config.distill.reward_samples
    prepared = context.space.prepare(batch)
    repeated = repeat_members(prepared, members)
    samples = context.sampler(context.denoiser(student_params), repeated.conditioning, key, repeated.clean.shape)
    crps = context.weighted_crps(by_member(samples, members), prepared.clean, prepared.valid)
    return crps, {"crps": crps}


class Distiller(Protocol):
    """Builds the `TrainTask` of one method from a context.

    `starts_from` is 'teacher' for a phase-1 method (moment matching: student
    and aux from the teacher) or 'phase1' for a method that fine-tunes a
    phase-1 student (RMMD and the baselines); `frozen_groups` names the
    frozen trees its checkpoints hold, a subset of ('teacher', 'student_phase1', 'aux_phase1')
    (a class attribute, or set per instance where the config decides, as in RMMD).
    """

    starts_from: ClassVar[StartsFrom]
    frozen_groups: tuple[str, ...]

    def __call__(self, context: DistillContext) -> TrainTask:
        """The task (a class constructor satisfies this)."""


FROZEN_SOURCES = {"teacher": "teacher", "student_phase1": "student", "aux_phase1": "aux"}


def frozen_trees(context: DistillContext, groups: tuple[str, ...]) -> dict:
    """The frozen trees `groups` as fresh device arrays, from the context's anchors."""
    return {group: jax.tree.map(jnp.array, context.anchors.frozen(group)) for group in groups}


class StudentFineTune(abc.ABC):
    """Shared shape of the methods that fine-tune a phase-1 student (RMMD and the baselines).

    One group `student` (started from the phase-1 student), the frozen trees
    `frozen_groups`, one update rule `student` minimising `loss`, and the
    K-step sample CRPS as validation loss. Subclasses write `loss`.
    """

    starts_from = "phase1"
    frozen_groups: tuple[str, ...] = ("teacher",)

    def __init__(self, context: DistillContext):
        self.context = context

    def init(self, key: jax.Array, example_batch: Batch) -> TrainableState:
        del key, example_batch  # weights come from the anchors, not from a random init
        return TrainableState(params={"student": jax.tree.map(jnp.array, self.context.anchors.student)},
                              frozen=frozen_trees(self.context, self.frozen_groups))

    @abc.abstractmethod
    def loss(self, params, frozen, key: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The scalar student loss and its logged parts; each method writes its own."""

    def update_rules(self) -> list[UpdateRule]:
        return [UpdateRule("student", ("student",), self.loss)]

    def validation_loss(self, params, frozen, key: jax.Array, batch: Batch):
        return validation_crps(self.context, params["student"], key, batch)

    def config_payload(self) -> dict:
        return self.context.payload
