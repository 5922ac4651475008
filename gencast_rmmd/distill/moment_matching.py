"""Phase 1: moment-matching distillation (MMD; Salimans et al. 2024, alternating form; docs/DESIGN.md §5).

Symbols (paper -> code). Phi_theta: the student (`params['student']`); g_phi:
the auxiliary denoiser (`params['aux']`); the teacher (`frozen['teacher']`);
every one is the EDM-preconditioned graph denoiser D(x; s, cond), and student
and aux start from the teacher's weights. One optimiser step:

    x_0 ~ data,  s_t ~ student grid (or continuous),  x_t = x_0 + s_t eps                (`offline_state`)
    x0_hat = Phi_theta(x_t; s_t)
    s' = s_lo^(1-u) s_t^u  (log-uniform in [s_lo, s_t), u ~ U[0,1])                      (`moment_state`)
    x_s' = x0_hat + sqrt(s'^2 - gamma^2) (x_t - x0_hat)/s_t + gamma z                    (the eta-step)

    aux rule (phi):      L_aux = E lambda(s') [ ||g_phi(x_s') - sg(x0_hat)||^2_W
                                               + beta ||g_phi(x_s') - sg(teacher(x_s'))||^2_W ]
    student rule (theta): L_student = E w(s_t, s') < x0_hat, sg(g_phi(x_s') - teacher(x_s')) >_W

with lambda(s) = (s^2+1)/s^2; w = lambda(s') (`distill.moment_weight: edm`, the
paper's) or 1/(c_out(s_t) c_out(s')) (`balanced`, see `moment_weight`); and
||.||_W, <.,.>_W the teacher loss's area / level / variable weighted norm
(`WeightedNorm.inner`); x_s' is held fixed (sg) in both. The aux
model regresses the student's denoised samples, so
g_phi -> (m_student + beta m_teacher)/(1 + beta) with m = E[x0 | x_s'], and the
student's gradient J^T (g_phi - teacher) = J^T (m_student - m_teacher)/(1 + beta)
moves its conditional mean onto the teacher's: beta (`aux_pull_weight`, 1 in
the paper) only rescales the step and keeps g_phi near its teacher start.

The moment level s' is drawn below s_t rather than fixed to the next grid
level so that the last step (to s_K = 0, where x_s' = x0_hat carries no moment
information) is matched too; s_lo = `moment_min_noise_level` (the teacher's
smallest training level by default).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gencast_rmmd.diffusion.base import per_example
from gencast_rmmd.diffusion.preconditioning import c_out, loss_weight
from gencast_rmmd.diffusion.student_sampler import eta_step, student_quantile
from gencast_rmmd.distill.base import DistillContext, frozen_trees, validation_crps
from gencast_rmmd.training import TrainableState, UpdateRule


class NoisyState(NamedTuple):
    """A noisy target state and its per-example noise level."""

    noisy: jax.Array   # [B, lat, lon, C]
    level: jax.Array   # [B]


def draw_levels(context: DistillContext, key: jax.Array, count: int, mode: str) -> jax.Array:
    """s_t [count]: a uniformly drawn student grid level (`grid`) or student_quantile(u), u ~ U[0,1] (`continuous`)."""
    if mode == "grid":
        return jnp.asarray(context.levels)[jax.random.randint(key, (count,), 0, len(context.levels))]
    return student_quantile(jax.random.uniform(key, (count,)), context.config.distill.student).astype(jnp.float32)


def offline_state(context: DistillContext, key: jax.Array, clean: jax.Array) -> NoisyState:
    """Forward-diffused data: x_t = x_0 + s_t eps, eps spherical white noise, s_t by `distill.training_noise`."""
    level_key, noise_key = jax.random.split(key)
    levels = draw_levels(context, level_key, clean.shape[0], context.config.distill.training_noise)
    return NoisyState(clean + per_example(levels, clean) * context.space.noise(noise_key, clean.shape), levels)


def moment_state(context: DistillContext, key: jax.Array, state: NoisyState, denoised: jax.Array) -> NoisyState:
    """x_s' from the student's eta-step x_t -> s' with s' log-uniform in [min(s_lo, s_t), s_t); no gradient."""
    level_key, noise_key = jax.random.split(key)
    lowest = jnp.minimum(context.config.distill.moment_min_noise_level, state.level)
    u = jax.random.uniform(level_key, state.level.shape)
    level = lowest ** (1.0 - u) * state.level ** u
    eta = context.config.distill.student.eta
    fresh = context.space.noise(noise_key, denoised.shape) if eta > 0 else None
    noisy = eta_step(state.noisy, jax.lax.stop_gradient(denoised), state.level, level, eta, fresh)
    return NoisyState(jax.lax.stop_gradient(noisy), level)


def moment_weight(context: DistillContext, state: NoisyState, moment: NoisyState) -> jax.Array:
    """w [B]: the weight of the linear moment term (`distill.moment_weight`).

    `edm`: w = lambda(s') = c_out(s')^-2, the paper's (the teacher loss's weight
    at s'). `balanced`: w = 1 / (c_out(s_t) c_out(s')) = sqrt(lambda(s_t) lambda(s')).
    Why it matters: x0_hat = c_skip x_t + c_out(s_t) F_theta and an aux-teacher
    gap at s' is c_out(s') times a gap in network-output units, so the
    student's gradient is w c_out(s_t) c_out(s') J_F^T gap_F. `balanced` makes
    that J_F^T gap_F at every level pair (the scale of the teacher's own loss
    gradient); `edm` multiplies it by c_out(s_t) / c_out(s') >= 1, up to ~50 for
    s_t = 80, s' = 0.02. The fixed point (gap = 0 at every s') is the same.
    """
    if context.config.distill.moment_weight == "balanced":
        return 1.0 / (c_out(state.level) * c_out(moment.level))
    return loss_weight(moment.level)


def moment_surrogate(context: DistillContext, denoised: jax.Array, gap: jax.Array, state: NoisyState,
                     moment: NoisyState, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(E w <x0_hat, sg(gap)>_W,  E lambda(s') ||gap||^2_W), gap = g(x_s') - teacher(x_s').

    `gap` is the difference of the two denoised estimates at x_s', reached from
    `state` (x_t, s_t) by the eta-step; w is `moment_weight`. The caller forms
    the difference first and adds any correction to it (not to g), so a small
    correction is not lost to float32 cancellation against O(1) estimates. The
    first value is the student's surrogate (its gradient is J^T times the
    weighted moment gap); the second, the squared gap in network-output units,
    a diagnostic that does not depend on the weighting.
    """
    gap = jax.lax.stop_gradient(gap)
    surrogate = jnp.mean(moment_weight(context, state, moment) * context.space.norm.inner(denoised, gap, valid))
    return surrogate, jnp.mean(loss_weight(moment.level) * context.space.norm.inner(gap, gap, valid))


def aux_regression(context: DistillContext, aux_params, teacher_params, key: jax.Array, state: NoisyState,
                   denoised: jax.Array, conditioning, valid: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_aux = E lambda(s') [||g_phi(x_s') - x0_hat||^2_W + beta ||g_phi(x_s') - teacher(x_s')||^2_W].

    x_s' is the student's eta-step from `state` (x_t, s_t) with its stopped
    `denoised` x0_hat (`moment_state`, drawn with `key`); only g_phi (`aux_params`)
    is differentiated. Phase 1 calls it on forward-diffused data states, live
    RMMD (`rewarded.py`) on the phase-2 policy states.
    """
    moment = moment_state(context, key, state, denoised)
    return aux_fit(context, aux_params, teacher_params, moment, denoised, conditioning, valid,
                   context.config.distill.aux_pull_weight)


def aux_fit(context: DistillContext, aux_params, teacher_params, noisy: NoisyState, target: jax.Array,
            conditioning, valid: jax.Array, beta: float,
            row_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """E lambda(s) [||g(x_s) - sg(target)||^2_W + beta ||g(x_s) - sg(teacher(x_s))||^2_W] at a given noisy state.

    The denoising regression of an auxiliary model on the student's outputs,
    shared by the moment-matching aux (x_s the eta-step x_s', beta =
    `aux_pull_weight`) and DMD's fake score (x_s = x + s eps, beta =
    `dmd.pull_weight`, `dmd.py`); with beta = 0 the teacher is not called.
    `row_weights` [rows] weigh each row's terms (DMDR's tilt, `dmdr.py`: the
    regression then fits the weighted samples' distribution). Only g
    (`aux_params`) is differentiated.
    """
    target = jax.lax.stop_gradient(target)
    weight = loss_weight(noisy.level)
    if row_weights is not None:
        weight = weight * jax.lax.stop_gradient(row_weights)
    if beta == 0.0:
        aux = context.denoiser(aux_params)(noisy.noisy, noisy.level, conditioning)
    else:
        aux, teacher = context.denoise_together([(aux_params, noisy.noisy, noisy.level),
                                                 (jax.lax.stop_gradient(teacher_params), noisy.noisy, noisy.level)],
                                                conditioning)
        teacher = jax.lax.stop_gradient(teacher)
    fit = jnp.mean(weight * context.space.norm.inner(aux - target, aux - target, valid))
    if beta == 0.0:
        return fit, {"aux_fit": fit}
    pull = jnp.mean(weight * context.space.norm.inner(aux - teacher, aux - teacher, valid))
    return fit + beta * pull, {"aux_fit": fit, "aux_pull": pull}


def aux_optimizer(context: DistillContext):
    """The aux rule's optimiser: train's, at `distill.aux_learning_rate` when set (None: train's own)."""
    rate = context.config.distill.aux_learning_rate
    return None if rate is None else context.config.train.optimizer.model_copy(update={"learning_rate": rate})


class MomentMatching:
    """Phase 1 (`mmd`): groups `student`, `aux` (both from the teacher); frozen `teacher`; rules aux, student."""

    starts_from = "teacher"
    frozen_groups = ("teacher",)

    def __init__(self, context: DistillContext):
        self.context = context

    def init(self, key: jax.Array, example_batch) -> TrainableState:
        del key, example_batch  # weights come from the anchors, not from a random init
        anchors = self.context.anchors
        return TrainableState(params={"student": jax.tree.map(jnp.array, anchors.student),
                                      "aux": jax.tree.map(jnp.array, anchors.aux)},
                              frozen=frozen_trees(self.context, self.frozen_groups))

    def _states(self, params, key, batch):
        prepared = self.context.space.prepare(batch)
        state_key, moment_key = jax.random.split(key)
        state = offline_state(self.context, state_key, prepared.clean)
        denoised = self.context.denoiser(params["student"])(state.noisy, state.level, prepared.conditioning)
        return prepared, state, denoised, moment_key

    def aux_loss(self, params, frozen, key, batch):
        """L_aux (module docstring): fit the student's x0_hat, pulled towards the teacher with weight beta."""
        prepared, state, denoised, moment_key = self._states(params, key, batch)
        return aux_regression(self.context, params["aux"], frozen["teacher"], moment_key, state,
                              jax.lax.stop_gradient(denoised), prepared.conditioning, prepared.valid)

    def student_loss(self, params, frozen, key, batch):
        """L_student (module docstring): x0_hat against the stopped moment gap g_phi - teacher at x_s'."""
        context = self.context
        prepared, state, denoised, moment_key = self._states(params, key, batch)
        moment = moment_state(context, moment_key, state, denoised)
        aux, teacher = context.denoise_together([(params["aux"], moment.noisy, moment.level),
                                                 (frozen["teacher"], moment.noisy, moment.level)],
                                                prepared.conditioning)
        surrogate, gap = moment_surrogate(context, denoised, aux - teacher, state, moment, prepared.valid)
        return surrogate, {"moment_gap": gap}

    def update_rules(self) -> list[UpdateRule]:
        return [UpdateRule("aux", ("aux",), self.aux_loss, aux_optimizer(self.context)),
                UpdateRule("student", ("student",), self.student_loss)]

    def validation_loss(self, params, frozen, key, batch):
        return validation_crps(self.context, params["student"], key, batch)

    def config_payload(self) -> dict:
        return self.context.payload

