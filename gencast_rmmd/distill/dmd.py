"""DMD: distribution matching distillation (Yin et al. 2024, "One-step Diffusion with Distribution Matching
Distillation"; DMD2, Yin et al. 2024, "Improved Distribution Matching Distillation for Fast Image Synthesis").

Symbols (paper -> code). G_theta, the generator: the student Phi_theta
(`params['student']`, started from the phase-1 student, or the teacher with
`phase1_steps: 0`); mu_real, the real denoiser: the teacher (`frozen['teacher']`);
mu_fake^psi, the fake denoiser: g_psi (`params['aux']`, started from the
TEACHER's weights as in the paper, so fake = real before it has trained);
t ~ U[T_min, T_max]: the DMD noise level s (`dmd_levels`); lambda:
`reward_weight`; mu: `anchor_weight` (None: lambda, as RMMD); beta:
`distill.dmd.pull_weight` (0, the papers'); N: `distill.dmd.fake_updates`. Every network is the
EDM-preconditioned denoiser D(x; s, cond) of the teacher's variance-exploding
levels (x_s = x + s eps; alpha_t = 1, sigma_t = s in the paper's notation).
One optimiser step:

 1. policy draw, no gradient (the loop's `step_inputs`, ONE per step): the
    policy states x_t^pol, s_t of RMMD phase 2 (`rewarded.draw_policy`: M
    chains per condition of the K-step student sampler, stopped at a grid
    level or finished and re-noised, by `policy_noise`) and the student's
    samples on them, x = sg(Phi_theta(x_t^pol; s_t)).
 2. fake rule (psi), N updates in a row (`UpdateRule.repeats`; DMD2's two
    time-scale rule), each with a fresh s, eps on the step's samples
    (`moment_matching.aux_fit`, the same regression as RMMD's live aux):

        x_s = x + s eps,  s = rho-quantile(u), u ~ U[q_lo, q_hi]                     (`dmd_state`)
        L_fake = E lambda(s) [||g_psi(x_s; s) - sg(x)||^2_W + beta ||g_psi(x_s; s) - sg(teacher(x_s; s))||^2_W]

 3. student rule (theta), `DistributionMatching.objective`, through ONE student call:

        x   = Phi_theta(x_t^pol; s_t)                                                 (differentiated)
        x_s = sg(x) + s eps                                                           (a fresh s, eps)
        real = teacher(x_s; s),  fake = g_psi(x_s; s)                                 (both held fixed)
        g   = (fake - real) / <|x - real|>_W                                          (per example)
        L   = 0.5 ||x - sg(x - g)||^2_W  -  lambda R(x_1..M)
              +  (mu/2) E lambda(s_t) ||x - sg(Phi_theta0(x_t^pol; s_t))||^2_W

    so dL/dx = W g: the DMD gradient w(s) (s_fake - s_real) = (mu_fake - mu_real) / mean|x - mu_real|
    (DMD eq. 7-8; the scores of an EDM denoiser are s(x_s) = (D(x_s; s) - x_s)/s^2, and the paper's
    weight w_t = sigma_t^2 / alpha_t * CS / ||mu_real - x||_1 cancels the 1/s^2). R = -weighted fair CRPS
    (`reward.py`), the anchor and its weight exactly RMMD's (`rewarded.anchor_penalty`); <.>_W is the
    area- and channel-weighted mean and ||.||_W the norm of the teacher's loss (`WeightedNorm.inner`).

Shared with RMMD, not copied: the policy draw and its one-draw-per-step hook,
the live auxiliary model's parameter group `aux`, its regression
(`aux_fit`, with a pull beta of its own), its optimiser (`aux_learning_rate`) and so
its checkpointing and resume; the reward; the anchor to the phase-1 student
(frozen tree `student_phase1`, present when mu > 0); the validation loss (the
K-step student's sample CRPS). Only the distribution term differs: RMMD
compares the aux and the teacher at the student's own eta-step x_s' (conditional
moments); DMD compares them at x + s eps over the teacher's whole noise range
(the student's whole output distribution against the teacher's).

Where the code departs from the papers, and why.
- The student is the K-step sampler of every distiller here, and the "sample"
  x is its one-call output at a policy state: with `policy_noise: grid` (the
  chain stopped at a grid step) this is DMD2's backward simulation of a
  multi-step generator; `continuous` (RMMD's choice, `configs/distill/dmd.yaml`)
  re-noises the finished sample. DMD2's sampler re-noises x with fresh noise
  between steps; the student's eta-step also reuses eps_hat (eta = 0.5), kept
  so that only the objective differs from RMMD.
- The N fake updates of a step reuse that step's samples x (fresh s, eps each);
  DMD2 draws a new generator batch for each. The student does not move between
  them, so the samples are the current student's, and a step costs one K-step
  chain instead of N + 1.
- Levels: the teacher's training law truncated to its [0.02, 0.98] quantiles
  (`distill.dmd`), the paper's T_min = 0.02 T, T_max = 0.98 T on the teacher's
  own schedule. The fake loss is weighted by lambda(s), the teacher's loss weight.
- Norms and means are area- and channel-weighted (the pixel means of the
  paper), so the DMD gradient, the reward and the anchor are in one norm; the
  loss is written as 0.5 ||sg(g)||^2_W + <x - sg(x), sg(g)>_W, the same value
  and gradient as 0.5 ||x - sg(x - g)||^2_W without the float32 cancellation
  of x - (x - g) when g is small. Points where the truth is missing (SST over
  land) are zeroed in x before noising, as the teacher's training targets are.
- Not built: DMD's regression loss (LPIPS to the teacher's ODE output for
  paired noise; it needs a dataset of teacher samples and a perceptual metric
  with no weather analogue, and DMD2 shows the two time-scale rule makes it
  unnecessary) and DMD2's GAN term. The reward and the anchor take their place.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.diffusion.base import per_example
from gencast_rmmd.diffusion.preconditioning import loss_weight
from gencast_rmmd.diffusion.schedules import rho_quantile
from gencast_rmmd.distill.base import DistillContext, Prepared, PyTree, StudentFineTune
from gencast_rmmd.distill.moment_matching import NoisyState, aux_fit, aux_optimizer
from gencast_rmmd.distill.rewarded import OnPolicyTask, PolicyDraw, PolicyState, anchor_penalty, draw_policy
from gencast_rmmd.training import TrainableState, UpdateRule


class DmdInputs(NamedTuple):
    """A step's shared inputs: the policy draw and the student's samples x = sg(Phi_theta(x_t^pol; s_t)) on it."""

    draw: PolicyDraw
    samples: jax.Array      # [B M, lat, lon, C]


def dmd_levels(context: DistillContext, key: jax.Array, count: int,
               concentration: jax.Array | None = None) -> jax.Array:
    """s [count]: the rho-quantile of the `distill.dmd` law at u ~ U[q_lo, q_hi].

    With `concentration` (a, b) (DMDR's dynamic renoise sampling, `dmdr.py`)
    u = q_lo + (q_hi - q_lo) v, v ~ Beta(a, b) instead: a > b favours high
    levels; at (1, 1) exactly the uniform draw above is used, so the levels
    are DMD's, draw for draw.
    """
    dmd = context.config.distill.dmd
    low, high = dmd.quantiles
    u = jax.random.uniform(key, (count,), minval=low, maxval=high)
    if concentration is not None:
        a, b = concentration[0], concentration[1]
        tilted = low + (high - low) * jax.random.beta(jax.random.fold_in(key, 1), a, b, (count,))
        u = jnp.where((a == 1.0) & (b == 1.0), u, tilted)
    return rho_quantile(u, dmd.min_noise_level, dmd.max_noise_level, dmd.rho).astype(jnp.float32)


def masked_samples(samples: jax.Array, valid: jax.Array) -> jax.Array:
    """sg(x), zero where the truth is missing (the teacher's training targets are zero there)."""
    return jnp.where(valid, jax.lax.stop_gradient(samples), 0.0)


def dmd_state(context: DistillContext, key: jax.Array, clean: jax.Array,
              concentration: jax.Array | None = None) -> NoisyState:
    """x_s = x + s eps with s by `dmd_levels` (one per row) and eps spherical white noise; no gradient."""
    level_key, noise_key = jax.random.split(key)
    levels = dmd_levels(context, level_key, clean.shape[0], concentration)
    return NoisyState(clean + per_example(levels, clean) * context.space.noise(noise_key, clean.shape), levels)


def fake_score_loss(context: DistillContext, fake_params, teacher_params, key: jax.Array, samples: jax.Array,
                    repeated: Prepared, concentration: jax.Array | None = None,
                    row_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_fake at x_s = sg(x) + s eps (`dmd_state`): g_psi's denoising regression on the student's samples x.

    `aux_fit` with beta = `distill.dmd.pull_weight`; DMD, GNDM and DMDR train
    their fake score with it (DMDR with its level law `concentration` and tilt `row_weights`).
    """
    clean = masked_samples(samples, repeated.valid)
    return aux_fit(context, fake_params, teacher_params, dmd_state(context, key, clean, concentration), clean,
                   repeated.conditioning, repeated.valid, context.config.distill.dmd.pull_weight, row_weights)


def dmd_surrogate(context: DistillContext, samples: jax.Array, fake: jax.Array, real: jax.Array,
                  noisy: NoisyState, valid: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(E 0.5 ||x - sg(x - g)||^2_W, diagnostics), g = (fake - real) / <|x - real|>_W per example.

    Written as 0.5 ||sg(g)||^2_W + <x - sg(x), sg(g)>_W (module docstring): its
    gradient in x is W g, its value 0.5 ||g||^2_W. A row whose x equals the
    real denoiser's output everywhere gets g = 0 (DMD2 zeroes the NaN). The
    diagnostic `dmd_gap` = E lambda(s) ||fake - real||^2_W does not depend on
    the normalisation (it is the `moment_gap` of RMMD at the DMD states).
    """
    fake, real = jax.lax.stop_gradient(fake), jax.lax.stop_gradient(real)
    clean = masked_samples(samples, valid)
    total_weight = context.space.norm.total_weight(clean.dtype)
    mean_abs = context.space.norm.mean(jnp.abs(clean - real), valid) / total_weight
    scale = jnp.where(mean_abs > 0.0, 1.0 / jnp.where(mean_abs > 0.0, mean_abs, 1.0), 0.0)
    direction = (fake - real) * per_example(scale, fake)
    half_square = 0.5 * context.space.norm.inner(direction, direction, valid)
    linear = context.space.norm.inner(samples - jax.lax.stop_gradient(samples), direction, valid)
    gap = jnp.mean(loss_weight(noisy.level) * context.space.norm.inner(fake - real, fake - real, valid))
    return jnp.mean(half_square + linear), {"dmd_term": jnp.mean(half_square), "dmd_gap": gap,
                                            "dmd_normaliser": jnp.mean(mean_abs)}


class FakeScoreFineTune(StudentFineTune):
    """A phase-2 method with a fake score: groups `student` and `aux` (g_psi, from the TEACHER's weights), frozen
    `teacher` and, when the anchor weight mu > 0 (None: lambda), `student_phase1` (DMD and GNDM)."""

    def __init__(self, context: DistillContext):
        super().__init__(context)
        distill = context.config.distill
        self.anchor_weight = context.reward_weight if distill.anchor_weight is None else distill.anchor_weight
        self.frozen_groups = ("teacher", *(("student_phase1",) if self.anchor_weight > 0.0 else ()))

    def init(self, key: jax.Array, example_batch: Batch) -> TrainableState:
        state = super().init(key, example_batch)
        return state._replace(params={**state.params, "aux": jax.tree.map(jnp.array, self.context.anchors.teacher)})


class DistributionMatching(FakeScoreFineTune, OnPolicyTask):
    """`dmd`: groups `student` and `aux` (the fake score, from the teacher); frozen `teacher` (and
    `student_phase1` when mu > 0); rules [aux x N, student] on one shared policy draw per step."""

    def step_inputs(self, params, frozen, key, batch: Batch, step: jax.Array) -> DmdInputs:
        """Step 1: the policy draw and the current student's samples on it (no gradient)."""
        del frozen, step
        draw = draw_policy(self.context, params["student"], key, batch)
        return DmdInputs(draw, jax.lax.stop_gradient(self._denoised(params, draw.policy)))

    def update_rules(self) -> list[UpdateRule]:
        fake = UpdateRule("aux", ("aux",), self.fake_loss, aux_optimizer(self.context),
                          repeats=self.context.config.distill.dmd.fake_updates)
        return [fake, *super().update_rules()]

    def fake_loss(self, params, frozen, key, inputs: DmdInputs):
        """Step 2: L_fake, the fake score's denoising regression on the step's student samples."""
        return fake_score_loss(self.context, params["aux"], frozen["teacher"], key, inputs.samples,
                               inputs.draw.policy.repeated)

    def loss(self, params, frozen, key, inputs: DmdInputs):
        """The student rule, at the step's shared policy draw."""
        return self.objective(params, frozen, key, inputs.draw.policy, inputs.draw.prepared)

    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared, real: PyTree = None,
                  concentration: jax.Array | None = None, reward_weight: jax.Array | float | None = None):
        """Step 3: L = DMD term + lambda CRPS + (mu/2) anchor, through one differentiated student call.

        DMDR's stages and dynamic strategies set `real` (the real score's params;
        None: the teacher), `concentration` (the DMD level law, `dmd_levels`) and
        `reward_weight` (None: lambda).
        """
        context = self.context
        state, repeated = policy.state, policy.repeated
        real = frozen["teacher"] if real is None else real
        reward_weight = context.reward_weight if reward_weight is None else reward_weight
        samples = self._denoised(params, policy)
        noisy = dmd_state(context, key, masked_samples(samples, repeated.valid), concentration)
        calls = [(params["aux"], noisy.noisy, noisy.level), (real, noisy.noisy, noisy.level)]
        if self.anchor_weight > 0.0:
            calls.append((frozen["student_phase1"], state.noisy, state.level))
        outputs = jax.lax.stop_gradient(context.denoise_together(calls, repeated.conditioning))
        loss, metrics = dmd_surrogate(context, samples, outputs[0], outputs[1], noisy, repeated.valid)
        metrics["crps"] = self._crps(samples, prepared)
        loss = loss + reward_weight * metrics["crps"]
        if self.anchor_weight > 0.0:
            metrics["anchor"] = anchor_penalty(context, samples, outputs[2], state, repeated.valid)
            loss = loss + 0.5 * self.anchor_weight * metrics["anchor"]
        return loss, metrics
