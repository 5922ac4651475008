"""DMDR: distribution matching distillation with a reward, in two stages (Jiang et al., "Distribution Matching
Distillation Meets Reinforcement Learning", arXiv 2511.13649; code github.com/vvvvvjdy/dmdr).

Symbols (paper -> code). G_theta, the few-step generator: the student Phi_theta
(`params['student']`, from the phase-1 student); the real score: the teacher
(`frozen['teacher']`); the fake score: g_psi (`params['aux']`, from the teacher,
trained as DMD's, `dmd.py`); r: the reward, per member i of a condition's group
of M = `distill.reward_samples` samples, r_i = -c_i with c_i the member's share of
the weighted fair CRPS (`reward.member_fair_crps`; mean_i c_i = -R, RMMD's
reward); beta: `distill.dmdr.tilt_temperature`; lambda: `reward_weight`; mu:
`anchor_weight` (None: 0 here, DMD being the regulariser); k: the optimiser step;
K_1: `dmdr.tilt_steps`; K_dyn: `dmdr.dynamic_steps`. Levels are the teacher's EDM
sigmas, x_s = x + s eps, and the score of a denoiser D is (D(x_s; s) - x_s) / s^2.

The objective. KL-regularised reward maximisation with the teacher as reference,

    max_theta E_{p_theta}[r] - beta KL(p_theta || p_T),

has the optimum p* = p_T exp(r / beta) / Z (the reward-tilted teacher) and equals
-beta KL(p_theta || p*) + const. Its pathwise gradient in a sample x = G_theta(z) is

    grad_x KL(p_theta || p*) = s_theta(x) - s_T(x) - grad_x r(x) / beta                 (*)

DMD's term (s_theta - s_T, estimated by fake - real at x_s) plus the reward's.
DMDR uses both halves of (*), in two stages:

Stage 1, k < K_1: reward-tilted distribution matching, no reward gradient. The
fake score is trained on the student's samples with the INVERSE tilt weights

    w_i = exp(-r_i / beta) / mean_{j in group} exp(-r_j / beta)                         (`tilt_weights`)

so (a weighted denoising regression's minimiser being the weighted posterior
mean) it estimates the score of q = p_theta exp(-r / beta) / Z_q, and the DMD
gradient fake - real = grad log q_s - grad log p_T,s. At s -> 0 this is exactly
(*): s_theta - grad r / beta - s_T; at every s its fixed point q_s = p_T,s is
q = p_T, i.e. p_theta = p*: the student matches the tilted teacher using only
reward VALUES (a bad member, large c_i, weighs more in the fake score, so the
student is pushed off it harder). beta -> infinity: w = 1 and stage 1 is DMD,
draw for draw. The two dynamic distillation strategies act here, over the first
K_dyn steps, on the cosine c_k = (1 + cos(pi min(k / K_dyn, 1))) / 2 (1 -> 0):

- DynaDG, dynamic distribution guidance (`dmdr.guidance_scale` gamma_0): the
  real score is the network at psi_real = theta_T + gamma_k (psi - theta_T),
  gamma_k = gamma_0 c_k, a share of the fake score's drift from the teacher in
  the teacher's weights (`guided_real`), so early on the target moves with the
  student's own distribution; gamma_k = 0 (the teacher) from K_dyn on.
- DynaRS, dynamic renoise sampling (`dmdr.renoise_concentration` (a_0, b_0)):
  the renoise quantile u of the fake score's states and of the DMD states is
  q_lo + (q_hi - q_lo) Beta(a_k, b_k), (a_k, b_k) = 1 + ((a_0, b_0) - 1) c_k, so
  early on mostly high levels (global structure; (4, 1.5): mean 0.73), then DMD's
  uniform law (`dmd.dmd_levels`, exactly DMD's draws at (1, 1)).

Stage 2, k >= K_1: joint DMD and reward optimisation, the other half of (*):
the fake score on unweighted samples (plain DMD, the regulariser against
reward hacking) and the reward's gradient through the student's output,

    L = 0.5 ||x - sg(x - g)||^2_W + lambda CRPS(x_1..M) + (mu/2) anchor,
    g = (fake - real) / <|x - real|>_W                                                  (DMD's, `dmd.py`)

(1 / beta of (*) is lambda here, up to DMD's normalisation of g).

One optimiser step (the loop's step index k reaches `step_inputs`):
 1. no gradient, once per step (`step_inputs`): DMD's policy draw and the
    student's one-call samples x_i on it, the schedule at k (`dmdr_schedule`) and,
    in stage 1, the tilt weights w_i (1 in stage 2).
 2. fake rule (psi), N = `dmd.fake_updates` times: L_fake = E w_i lambda(s)
    ||g_psi(x_s) - sg(x_i)||^2_W at DynaRS levels (`dmd.fake_score_loss`).
 3. student rule (theta), ONE differentiated student call: stage 1, DMD's term
    against the DynaDG real score at DynaRS levels (no CRPS gradient: its weight is
    0); stage 2, DMD's term + lambda CRPS (+ anchor) (`DistributionMatching.objective`).

What is ours, not the paper's. Only the abstract (v4), the authors' ImageNet
demo code and third-party summaries could be read here, not the method section.
From the code: the two stages as a cold start then DMD + a reward loss through
the generator's output (ReFL) with a weight; DynaDG as a LoRA on the teacher
shared by the fake (scale 2.0) and the real score (scale 0.75, cosine-annealed
to 0); DynaRS as Beta(4, 1.5) renoise times annealed to uniform; both over the
first half of the cold start. Ours:
- Stage 1's tilt as inverse-tilt weights on the fake score's regression (the
  derivation above): the abstract names reward-tilted distribution matching in
  the first stage, the demo code's cold start has no reward.
- Per-member rewards r_i = -(share of the fair CRPS) against the condition's one
  observed truth, self-normalised within the group of M (a biased estimate of
  Z per condition for small M; the table uses M = 2).
- DynaDG in full weights: psi_real = theta_T + gamma (psi - theta_T) is what a
  LoRA scale does to a LoRA, so gamma_0 = 0.75 / 2.0; our fake score is a full
  copy of the network, not a LoRA.
- DynaRS on the rho-quantile u of the teacher's EDM levels, truncated to DMD's
  [q_lo, q_hi] (their t in [0, 1] of a flow).
- The lengths (K_1 = 200, K_dyn = 100 of the table's 400 phase-2 steps) and beta:
  the authors' cold start is ~90 % of their steps from the teacher; ours starts
  from a phase-1 student, so the stages split the budget in half.
- No anchor by default (mu = 0): the paper's point is that DMD replaces the
  usual KL-to-reference regulariser.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.distill.base import DistillContext, Prepared, PyTree, by_member
from gencast_rmmd.distill.config import DmdrConfig
from gencast_rmmd.distill.dmd import DistributionMatching, fake_score_loss
from gencast_rmmd.distill.moment_matching import aux_optimizer
from gencast_rmmd.distill.reward import member_fair_crps
from gencast_rmmd.distill.rewarded import PolicyDraw, draw_policy
from gencast_rmmd.training import UpdateRule


class DmdrSchedule(NamedTuple):
    """The stage and the dynamic strategies' values at one step k (traced scalars)."""

    tilting: jax.Array          # bool: stage 1 (k < K_1)
    guidance: jax.Array         # gamma_k, DynaDG's share of the fake score's drift in the real score
    concentration: jax.Array    # (a_k, b_k) [2], DynaRS's Beta law of the renoise quantile


class DmdrInputs(NamedTuple):
    """A step's shared inputs (no gradient): DMD's policy draw and samples, the tilt weights, the schedule."""

    draw: PolicyDraw
    samples: jax.Array          # x_i = sg(Phi_theta(x_t^pol; s_t)) [B M, ...]
    tilt_weights: jax.Array     # w_i [B M]: stage 1's inverse tilt, 1 in stage 2
    schedule: DmdrSchedule


def cosine_decay(step: jax.Array, length: int) -> jax.Array:
    """c_k = (1 + cos(pi k / K)) / 2 for k < K, else 0 (K = 0: always 0): from 1 at k = 0 to 0 at k = K."""
    if length == 0:
        return jnp.float32(0.0)
    progress = jnp.asarray(step, jnp.float32) / length
    return jnp.where(progress < 1.0, 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(progress, 1.0))), 0.0)


def dmdr_schedule(config: DmdrConfig, step: jax.Array) -> DmdrSchedule:
    """The stage and (gamma_k, a_k, b_k) at step k (module docstring)."""
    decay = cosine_decay(step, config.dynamic_steps)
    start = jnp.asarray(config.renoise_concentration, jnp.float32)
    return DmdrSchedule(tilting=jnp.asarray(step) < config.tilt_steps, guidance=config.guidance_scale * decay,
                        concentration=1.0 + (start - 1.0) * decay)


def tilt_weights(context: DistillContext, samples: jax.Array, prepared: Prepared) -> jax.Array:
    """w_i = exp(-r_i / beta) / mean_group exp(-r_j / beta) [B M] (condition-major rows); 1 when beta is None.

    r_i = -c_i, the member's share of the weighted fair CRPS against its
    condition's truth (reward units). Mean 1 over each group; w_i / w_j =
    exp((c_i - c_j) / beta): the worse member weighs more.
    """
    temperature = context.config.distill.dmdr.tilt_temperature
    if temperature is None:
        return jnp.ones(samples.shape[0], samples.dtype)
    members = context.config.distill.reward_samples
    shares = member_fair_crps(by_member(samples, members), prepared.clean, prepared.valid,
                              context.reward_norm)                                                       # c_i [M, B]
    exponent = shares / temperature
    tilt = jnp.exp(exponent - jnp.max(exponent, axis=0, keepdims=True))
    return jnp.swapaxes(tilt / jnp.mean(tilt, axis=0, keepdims=True), 0, 1).reshape(-1)


def guided_real(teacher: PyTree, fake: PyTree, guidance: jax.Array) -> PyTree:
    """DynaDG's real score: theta_T + gamma (psi - theta_T), no gradient (the teacher itself at gamma = 0)."""
    return jax.tree.map(lambda t, f: t + guidance * (jax.lax.stop_gradient(f) - t), teacher, fake)


class RewardTiltedDistributionMatching(DistributionMatching):
    """`dmdr`: DMD's groups (`student`, `aux` from the teacher), frozen `teacher` (and `student_phase1` when
    mu > 0; None means 0 here); rules [aux x N, student] on one shared draw per step, stage and dynamic
    strategies by the step index."""

    def __init__(self, context: DistillContext):
        super().__init__(context)
        if context.config.distill.anchor_weight is None:
            self.anchor_weight, self.frozen_groups = 0.0, ("teacher",)

    def step_inputs(self, params, frozen, key, batch: Batch, step: jax.Array) -> DmdrInputs:
        """Step 1: the policy draw, the student's samples on it, the schedule at k and the tilt weights."""
        del frozen
        context = self.context
        draw = draw_policy(context, params["student"], key, batch)
        samples = jax.lax.stop_gradient(self._denoised(params, draw.policy))
        schedule = dmdr_schedule(context.config.distill.dmdr, step)
        weights = jnp.where(schedule.tilting, tilt_weights(context, samples, draw.prepared), 1.0)
        return DmdrInputs(draw, samples, jax.lax.stop_gradient(weights), schedule)

    def update_rules(self) -> list[UpdateRule]:
        fake = UpdateRule("aux", ("aux",), self.fake_loss, aux_optimizer(self.context),
                          repeats=self.context.config.distill.dmd.fake_updates)
        student = UpdateRule("student", ("student",), self.loss)
        return [fake, student]

    def fake_loss(self, params, frozen, key, inputs: DmdrInputs):
        """Step 2: L_fake on the step's samples, tilt-weighted in stage 1, at DynaRS levels."""
        loss, metrics = fake_score_loss(self.context, params["aux"], frozen["teacher"], key, inputs.samples,
                                        inputs.draw.policy.repeated, inputs.schedule.concentration,
                                        inputs.tilt_weights)
        return loss, {**metrics, "tilt_weight_max": jnp.max(inputs.tilt_weights)}

    def loss(self, params, frozen, key, inputs: DmdrInputs):
        """Step 3: DMD's objective with the DynaDG real score and DynaRS levels; lambda CRPS in stage 2 only."""
        schedule, distill = inputs.schedule, self.context.config.distill
        real = guided_real(frozen["teacher"], params["aux"], schedule.guidance) if distill.dmdr.guidance_scale \
            else None
        reward_weight = jnp.where(schedule.tilting, 0.0, self.context.reward_weight)
        loss, metrics = self.objective(params, frozen, key, inputs.draw.policy, inputs.draw.prepared, real=real,
                                       concentration=schedule.concentration, reward_weight=reward_weight)
        return loss, {**metrics, "stage": jnp.where(schedule.tilting, 1.0, 2.0), "guidance": schedule.guidance}
