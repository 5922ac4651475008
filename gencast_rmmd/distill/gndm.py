"""GNDM and GNDMR: distribution matching read as a reward, group-normalised, optimised as a policy
(R_dm, "Re-conceptualizing Distribution Matching as a Reward for Diffusion Distillation", arXiv 2603.28460).

Symbols (paper -> code). The generator / policy pi_theta: the K-step student
chain Phi_theta (`params['student']`, from the phase-1 student), stochastic for
eta > 0; mu_real: the teacher (`frozen['teacher']`); mu_fake^psi: the fake
score g_psi (`params['aux']`, from the teacher, trained as DMD's, `dmd.py`); G,
the group size: M = `distill.reward_samples` samples of one condition c (one
initial state); w_R: `distill.gndm.crps_reward_weight` (0: GNDM, > 0: GNDMR);
E: `gndm.policy_updates`; epsilon: `gndm.clip`; mu: `anchor_weight` (None:
lambda). Levels are the teacher's EDM sigmas, x_s = x + s eps, and the score of
a denoiser D is (D(x_s; s) - x_s) / s^2.

The reward. DMD minimises KL(p_fake || p_real) of the noised output
distributions; its integrand read per sample is the reward

    R_dm(x) = log p_real,s(x + s eps) - log p_fake,s(x + s eps),
    grad_x R_dm = s_real - s_fake = (mu_real(x_s) - mu_fake(x_s)) / s^2,

and DMD's update is the pathwise gradient of E[R_dm] (DMD eq. 7). Only the
gradient of R_dm is known, so its value is known up to a constant per (s, eps):
the group baseline cancels exactly that constant, which is why R_dm needs
group normalisation to be a usable reward at all. Per condition the G members
share s (the DMD law, `dmd.dmd_levels`) and eps (common random numbers), so
y_i - y_j = x_i - x_j, and the group-centred reward is the trapezoid rule along
the segment y_j -> y_i (exact when log p_real/p_fake is quadratic in x):

    R_dm,i - mean_g R_dm = (1/G) sum_j 0.5 <slope_i + slope_j, x_i - x_j>_W,   slope_i = grad R_dm(y_i)
                                                                              (`centred_log_ratio`)

GNDMR adds the CRPS reward per member, R_crps,i = -c_i with c_i the member's
share of the weighted fair CRPS (`reward.member_fair_crps`; mean_i c_i is RMMD's
-R). Advantages, GRPO-style, each reward normalised within its group on its own
(decoupled, so the two rewards' units do not matter; `group_normalised`):

    A_i = N(R_dm)_i + w_R N(R_crps)_i,   N(r)_i = (r_i - mean_g r) / std_g r      (std: `normalise_std`)

so sum_{i in g} A_i = 0 for every condition g.

The policy. With eta > 0 the eta-step s_j -> s_{j+1} (j < K - 1) is Gaussian:

    x_{j+1} = m_theta(x_j) + gamma z,   m_theta = x0_theta + kappa (x_j - x0_theta) / s_j

with x0_theta = Phi_theta(x_j; s_j) and (kappa, gamma) = `student_sampler.eta_scales`. One optimiser step:

 1. rollout, no gradient (`step_inputs`, once per step): G chains per condition
    from s_0 z; one transition j ~ U{0..K-2} per condition (shared by its G
    members) keeps x_j, z_j and x0_old = Phi_theta_old(x_j; s_j); the finished
    samples x_i; the rewards and advantages A_i above (fake and teacher once).
 2. fake rule (psi), N = `dmd.fake_updates` times: DMD's L_fake on sg(x_i)
    (`dmd.fake_score_loss`), so g_psi follows the student's output distribution.
 3. student rule (theta), E times on the same rollout, ONE differentiated student call:

        Delta = x0_theta - sg(x0_old),  a = 1 - kappa / s_j
        log rho_i = [a <z, Delta>_W / gamma - a^2 ||Delta||^2_W / (2 gamma^2)] / sum_c w_c
                  = log pi_theta(x_{j+1} | x_j) - log pi_old(x_{j+1} | x_j)
        L = -(1/BG) sum_i min(rho_i A_i, clip(rho_i, 1 - epsilon, 1 + epsilon) A_i)
            + (mu/2) E lambda(s_j) ||x0_theta - sg(Phi_theta0(x_j; s_j))||^2_W

    At the first update rho = 1 and grad L = -(1/BG) sum_i A_i grad log pi_theta
    (REINFORCE with the group baseline, GRPO); updates 2..E reuse the rollout,
    weighted by the importance ratio rho and clipped (PPO), the sample reuse
    the paper credits for its sampling efficiency. The anchor is RMMD's and
    DMD's KL proxy (`rewarded.anchor_penalty`), the GRPO KL term's role.

What is ours, not the paper's, and why. Only the paper's abstract could be
read here (the method section was not available), so the following are our
construction from it and from GRPO / Flow-GRPO; the table says GNDM as built here.
- R_dm as the log density ratio of the noised distributions, its
  group-centred trapezoid estimate, and shared (s, eps) per group.
- The policy density: the student's own eta-step, whose Gaussian is in the
  W-weighted mean of pointwise log densities (Flow-GRPO's per-element mean),
  not the exact density of the truncated spherical noise (singular on the
  grid: fewer harmonics than points); the ratio stays O(1) per update.
- One stochastic transition per chain and step, so the student's gradient
  costs one call as in every distiller here; the last step (to s = 0) is
  deterministic and is credited only through the transitions before it.
- "Adaptive weighting" of GNDMR read as decoupled group normalisation (each
  reward's own group std sets its scale) with a fixed relative weight w_R.
- Importance sampling as PPO's clipped ratio over E updates on one rollout
  (E = 1 by default, on-policy); no value model, no KL term besides the anchor.
- lambda (`reward_weight`) is not used (except as mu's default): the CRPS
  reward enters only through the advantages, with weight w_R.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.diffusion.base import per_example
from gencast_rmmd.diffusion.preconditioning import loss_weight
from gencast_rmmd.diffusion.student_sampler import bind, eta_scales, eta_step
from gencast_rmmd.distill.base import DistillContext, Prepared, PyTree, by_member, repeat_members
from gencast_rmmd.distill.dmd import FakeScoreFineTune, dmd_levels, fake_score_loss, masked_samples
from gencast_rmmd.distill.moment_matching import NoisyState, aux_optimizer
from gencast_rmmd.distill.reward import member_fair_crps
from gencast_rmmd.distill.rewarded import anchor_penalty
from gencast_rmmd.training import UpdateRule


class Transition(NamedTuple):
    """One recorded eta-step per row: x_j [B G, ...], s_j and s_{j+1} [B G], its noise z_j and sg(x0_old)."""

    state: jax.Array
    level: jax.Array
    next_level: jax.Array
    noise: jax.Array
    denoised: jax.Array


class GndmInputs(NamedTuple):
    """A step's rollout (no gradient), shared by the fake and the student rules."""

    repeated: Prepared          # the batch repeated G times (condition-major rows)
    transition: Transition
    samples: jax.Array          # x_i, the finished K-step samples [B G, ...]
    advantages: jax.Array       # A_i [B G]
    dm_reward: jax.Array        # R_dm,i - mean_g, before normalisation [B G]
    crps_reward: jax.Array      # R_crps,i = -c_i [B G]
    dm_gap: jax.Array           # E lambda(s) ||fake - real||^2_W at the reward's states (a diagnostic)


def rollout(context: DistillContext, student_params: PyTree, key: jax.Array,
            repeated: Prepared) -> tuple[jax.Array, Transition]:
    """Step 1: the K-step chains (no gradient), keeping the transition j_c of each condition; (samples, transition)."""
    members = context.config.distill.reward_samples
    eta = context.config.distill.student.eta
    levels = jnp.asarray(context.levels)
    count = len(context.levels) - 1                # stochastic steps s_j -> s_{j+1}, j = 0..K-2
    rows = repeated.clean.shape[0]
    index_key, start_key, steps_key = jax.random.split(key, 3)
    index = jnp.repeat(jax.random.randint(index_key, (rows // members,), 0, count), members)
    denoise = bind(context.denoiser(jax.lax.stop_gradient(student_params)), repeated.conditioning)
    start = levels[0] * context.space.noise(start_key, repeated.clean.shape)

    def step(carry, per_step):
        state, kept = carry
        step_index, level, next_level, step_key = per_step
        fresh = context.space.noise(step_key, state.shape).astype(state.dtype)
        denoised = denoise(state, level)
        chosen = per_example(index == step_index, state)
        kept = tuple(jnp.where(chosen, new, old) for new, old in zip((state, fresh, denoised), kept))
        return (eta_step(state, denoised, level, next_level, eta, fresh), kept), None

    zeros = jnp.zeros_like(start)
    per_step = (jnp.arange(count), levels[:-1], levels[1:], jax.random.split(steps_key, count))
    (state, (kept_state, noise, denoised)), _ = jax.lax.scan(step, (start, (zeros, zeros, zeros)), per_step)
    samples = denoise(state, levels[-1])
    transition = Transition(kept_state, levels[index], levels[index + 1], noise, denoised)
    return jax.lax.stop_gradient(samples), jax.tree.map(jax.lax.stop_gradient, transition)


def centred_log_ratio(context: DistillContext, slopes: jax.Array, points: jax.Array, valid: jax.Array,
                      members: int) -> jax.Array:
    """R_i - mean_g R [B G] from the gradients `slopes` of R at `points` (condition-major rows, groups of G).

    (1/G) sum_j 0.5 <slope_i + slope_j, x_i - x_j>_W: the trapezoid rule for
    R(x_i) - R(x_j), averaged over the group; exact for a quadratic R, and
    zero-mean per group by antisymmetry.
    """
    grouped = lambda rows: rows.reshape(-1, members, *rows.shape[1:])  # noqa: E731
    slope, point, mask = grouped(slopes), grouped(points), grouped(valid)
    pairs = (slope.shape[0], members, members, *slope.shape[2:])
    flat = lambda array: jnp.broadcast_to(array, pairs).reshape(-1, *slope.shape[2:])  # noqa: E731
    inner = context.space.norm.inner(flat(slope[:, :, None]), flat(point[:, None, :]), flat(mask[:, :, None]))
    inner = inner.reshape(pairs[:3])             # P[g, i, j] = <slope_i, x_j>_W
    own = jnp.diagonal(inner, axis1=1, axis2=2)
    centred = 0.5 * (own - inner.mean(axis=2) + inner.mean(axis=1) - own.mean(axis=1, keepdims=True))
    return centred.reshape(-1)


def dm_reward(context: DistillContext, fake_params: PyTree, teacher_params: PyTree, key: jax.Array,
              samples: jax.Array, repeated: Prepared) -> tuple[jax.Array, jax.Array]:
    """(R_dm,i - mean_g R_dm [B G], E lambda(s) ||fake - real||^2_W): one (s, eps) per group, no gradient."""
    members = context.config.distill.reward_samples
    clean = masked_samples(samples, repeated.valid)
    level_key, noise_key = jax.random.split(key)
    conditions = clean.shape[0] // members
    levels = jnp.repeat(dmd_levels(context, level_key, conditions), members)
    noise = jnp.repeat(context.space.noise(noise_key, (conditions, *clean.shape[1:])), members, axis=0)
    noisy = clean + per_example(levels, clean) * noise
    fake, real = jax.lax.stop_gradient(context.denoise_together(
        [(fake_params, noisy, levels), (teacher_params, noisy, levels)], repeated.conditioning))
    slopes = (real - fake) / per_example(jnp.square(levels), fake)
    gap = jnp.mean(loss_weight(levels) * context.space.norm.inner(fake - real, fake - real, repeated.valid))
    return centred_log_ratio(context, slopes, clean, repeated.valid, members), gap


def group_normalised(rewards: jax.Array, members: int, normalise_std: bool) -> jax.Array:
    """N(r) [B G]: r less its group mean, divided by the group's (population) std when `normalise_std`.

    A group whose rewards agree to float32 rounding (std <= 1e-6 |mean|, or 0) gets
    zero advantages rather than amplified rounding noise.
    """
    grouped = rewards.reshape(-1, members)
    mean = grouped.mean(axis=1, keepdims=True)
    centred = grouped - mean
    if normalise_std:
        std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=1, keepdims=True))
        informative = (std > 0.0) & (std > 1e-6 * jnp.abs(mean))
        centred = jnp.where(informative, centred / jnp.where(informative, std, 1.0), 0.0)
    return centred.reshape(-1)


def transition_log_ratio(context: DistillContext, denoised: jax.Array, transition: Transition, eta: float,
                         valid: jax.Array) -> jax.Array:
    """log rho [B G] = log pi_theta(x_{j+1} | x_j) - log pi_old (module docstring), W-weighted per point.

    Written in Delta = x0_theta - sg(x0_old), so it is exactly 0 at the rollout's
    params (no cancellation between two large log densities).
    """
    kept, gamma = eta_scales(transition.level, transition.next_level, eta)
    slope = 1.0 - kept / transition.level
    delta = denoised - jax.lax.stop_gradient(transition.denoised)
    total_weight = context.space.norm.total_weight(delta.dtype)
    linear = context.space.norm.inner(transition.noise, delta, valid) * slope / gamma
    quadratic = context.space.norm.inner(delta, delta, valid) * jnp.square(slope / gamma) / 2.0
    return (linear - quadratic) / total_weight


def clipped_surrogate(log_ratio: jax.Array, advantages: jax.Array, clip: float) -> tuple[jax.Array, jax.Array]:
    """(-mean min(rho A, clip(rho, 1 - eps, 1 + eps) A), the fraction of rows where the clip binds)."""
    ratio = jnp.exp(log_ratio)
    unclipped, clipped = ratio * advantages, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -jnp.mean(jnp.minimum(unclipped, clipped)), jnp.mean((clipped < unclipped).astype(jnp.float32))


class GroupNormalisedDistributionMatching(FakeScoreFineTune):
    """`gndm`: groups `student` and `aux` (the fake score, from the teacher); frozen `teacher` (and
    `student_phase1` when mu > 0); rules [aux x N, student x E] on one rollout per step."""

    def step_inputs(self, params, frozen, key, batch: Batch, step: jax.Array) -> GndmInputs:
        """Step 1: rollout, rewards and advantages, all without gradient."""
        del step
        context, distill = self.context, self.context.config.distill
        members, gndm = distill.reward_samples, distill.gndm
        prepared = context.space.prepare(batch)
        repeated = repeat_members(prepared, members)
        rollout_key, reward_key = jax.random.split(key)
        samples, transition = rollout(context, params["student"], rollout_key, repeated)
        dm, gap = dm_reward(context, params["aux"], frozen["teacher"], reward_key, samples, repeated)
        shares = member_fair_crps(by_member(samples, members), prepared.clean, prepared.valid, context.reward_norm)
        crps_reward = -jnp.swapaxes(shares, 0, 1).reshape(-1)
        advantages = group_normalised(dm, members, gndm.normalise_std)
        if gndm.crps_reward_weight > 0.0:
            advantages = advantages + gndm.crps_reward_weight * group_normalised(crps_reward, members,
                                                                                 gndm.normalise_std)
        return GndmInputs(repeated, transition, samples, advantages, dm, crps_reward, gap)

    def update_rules(self) -> list[UpdateRule]:
        distill = self.context.config.distill
        return [UpdateRule("aux", ("aux",), self.fake_loss, aux_optimizer(self.context),
                           repeats=distill.dmd.fake_updates),
                UpdateRule("student", ("student",), self.loss, repeats=distill.gndm.policy_updates)]

    def fake_loss(self, params, frozen, key, inputs: GndmInputs):
        """Step 2: L_fake on the rollout's samples (DMD's)."""
        return fake_score_loss(self.context, params["aux"], frozen["teacher"], key, inputs.samples, inputs.repeated)

    def loss(self, params, frozen, key, inputs: GndmInputs):
        """Step 3: the clipped policy-gradient surrogate + (mu/2) anchor, through one differentiated student call."""
        del key
        context, distill = self.context, self.context.config.distill
        transition, repeated = inputs.transition, inputs.repeated
        denoised = context.denoiser(params["student"])(transition.state, transition.level, repeated.conditioning)
        log_ratio = transition_log_ratio(context, denoised, transition, distill.student.eta, repeated.valid)
        loss, clipped = clipped_surrogate(log_ratio, inputs.advantages, distill.gndm.clip)
        spread = jnp.sqrt(jnp.mean(jnp.square(inputs.dm_reward)))
        metrics = {"policy": loss, "ratio": jnp.mean(jnp.exp(log_ratio)), "clipped": clipped,
                   "dm_reward_spread": spread, "dm_gap": inputs.dm_gap, "crps": -jnp.mean(inputs.crps_reward)}
        if self.anchor_weight > 0.0:
            reference = context.denoiser(frozen["student_phase1"])(transition.state, transition.level,
                                                                   repeated.conditioning)
            metrics["anchor"] = anchor_penalty(context, denoised, reference,
                                               NoisyState(transition.state, transition.level), repeated.valid)
            loss = loss + 0.5 * self.anchor_weight * metrics["anchor"]
        return loss, metrics
