"""Phase 2: rewarded moment matching (RMMD, on-policy or offline) and the CRPS-only fine-tune.

Symbols (paper -> code). Phi_theta: the student (`params['student']`, started
from the phase-1 student); Phi_theta0: the frozen phase-1 student
(`frozen['student_phase1']`); g_phi: the frozen phase-1 aux model, the moment
reference (`frozen['aux_phase1']`); the teacher (`frozen['teacher']`);
lambda: `distill.reward_weight`; mu: `distill.anchor_weight` (default lambda);
M: `distill.reward_samples`. One optimiser step, one update rule ('student'):

 1. policy state, no gradient (`policy_state`, with sg(theta)): per condition
    b, M independent chains. `policy_noise: grid`: draw i ~ U{0..K-1}, run
    the K-step student from s_0 z and stop at level s_i (x_t^pol = that state);
    `continuous`: run the chain to x~_0, draw s_t (student quantile of u ~ U)
    and re-noise, x_t^pol = x~_0 + s_t eps. `offline: true`: x_t^pol = x_0 + s_t eps
    (forward-diffused data). The M members of a condition share s_t.
 2. one student step with gradient: x0_hat = Phi_theta(x_t^pol; s_t).
 3. loss (`RewardedMomentMatching.objective`):

        L = E w(s_t, s') <x0_hat, sg(g(x_s') - teacher(x_s'))>_W          (the phase-1 MMD term at x_t^pol)
            - lambda R(x0_hat_1..M)                                       (R = -weighted fair CRPS, `reward.py`)
            + (mu/2) E lambda(s_t) ||x0_hat - sg(Phi_theta0(x_t^pol; s_t))||^2_W

    with x_s' the eta-step from (x_t^pol, x0_hat) to s' (`moment_state`), w the
    phase-1 weight (`distill.moment_weight`), and g the moment reference built
    from the frozen phase-1 aux g_phi0 (`distill.moment_reference`), with
    delta = sg(x0_hat - Phi_theta0(x_t^pol; s_t)) the student's drift from phase 1:

        posterior_drift:  g(x_s') = g_phi0(x_s') + c_out(s')^2 delta / (1 + beta)
        drift_corrected:  g(x_s') = g_phi0(x_s') + delta / (1 + beta)
        frozen:           g(x_s') = g_phi0(x_s')

    Why a correction. At the end of phase 1 g_phi0 ~ (m_student0 + beta
    m_teacher) / (1 + beta), so g_phi0 - teacher ~ (m_student0 - m_teacher) / (1 + beta):
    the gap of the phase-1 student. Held fixed, the term's gradient J^T (g_phi0
    - teacher) never shrinks as the student moves, and the student drifts past
    the teacher without bound: measured, the surrogate fell from -0.08 to -1.29
    over 150 steps and CRPS rose 35 % (`results/rmmd_demo.md`). A live aux would
    follow the student's conditional mean E[x0_hat | x_s'] as the student moves,
    so the term is zero again once the student's moments are the teacher's, and
    lambda R and the anchor trade off around that point.

    Why c_out(s')^2 = s'^2 / (s'^2 + 1). How far E[x0_hat | x_s'] follows a
    shift delta of the student's samples depends on s': for a unit-variance
    (sigma_data = 1) Gaussian, E[x | x + s' z] moves by s'^2 / (s'^2 + 1) delta.
    It follows fully only when x_s' is pure noise, and not at all as s' -> 0,
    where the denoiser returns its input. `drift_corrected` adds all of delta at
    every s'. Times lambda(s') = c_out(s')^-2 (up to 2500 at s' = 0.02) that
    made the term a stiff anchor at small s': measured, gradient norms of 2-300
    against 0.2-0.7 for the CRPS alone, and the reward hardly acted
    (`results/rmmd_demo.md`). With the shrinkage, lambda(s') c_out(s')^2 delta = delta.
    Gradients reach theta through the single call in step 2 only.

`CrpsOnly` keeps steps 1-2 and minimises -R alone (no distillation terms;
lambda is not used, the optimiser sets the scale).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gencast_rmmd.diffusion.preconditioning import c_out, loss_weight
from gencast_rmmd.distill.base import DistillContext, Prepared, PyTree, StudentFineTune, by_member, per_example, \
    prepare, repeat_members
from gencast_rmmd.distill.moment_matching import NoisyState, draw_levels, moment_state, moment_surrogate
from gencast_rmmd.distill.sampler import bind, run_steps


class PolicyState(NamedTuple):
    """x_t^pol [B M, ...] and s_t [B M] (condition-major rows), with the repeated batch it was drawn for."""

    state: NoisyState
    repeated: Prepared


def policy_state(context: DistillContext, student_params: PyTree, key: jax.Array, repeated: Prepared) -> PolicyState:
    """Step 1 of the module docstring; the result carries no gradient."""
    distill = context.config.distill
    members = distill.reward_samples
    clean = repeated.clean
    conditions = clean.shape[0] // members
    level_key, noise_key, chain_key = jax.random.split(key, 3)
    levels = context.levels
    denoise = bind(context.denoiser(jax.lax.stop_gradient(student_params)), repeated.conditioning)

    def renoise(base: jax.Array, mode: str) -> NoisyState:
        noise_levels = jnp.repeat(draw_levels(context, level_key, conditions, mode), members)
        return NoisyState(base + per_example(noise_levels, base) * context.noise(noise_key, base.shape), noise_levels)

    def chain(stop_index: jax.Array | None) -> jax.Array:
        start_key, steps_key = jax.random.split(chain_key)
        start = jnp.float32(levels[0]) * context.noise(start_key, clean.shape)
        return run_steps(denoise, start, levels, distill.student.eta, context.noise, steps_key, stop_index)

    if distill.offline:
        state = renoise(clean, distill.training_noise)
    elif distill.policy_noise == "grid":
        index = jnp.repeat(jax.random.randint(level_key, (conditions,), 0, len(levels)), members)
        state = NoisyState(chain(index), jnp.asarray(levels)[index])
    else:
        state = renoise(denoise(chain(None), jnp.float32(levels[-1])), "continuous")
    return PolicyState(NoisyState(jax.lax.stop_gradient(state.noisy), state.level), repeated)


class _OnPolicyTask(StudentFineTune):
    """One 'student' rule: loss = objective(theta; policy_state(sg(theta))), one differentiated student call."""

    def loss(self, params, frozen, key, batch):
        """Draw the policy state without gradient, then `objective` (which differentiates one student call)."""
        prepared = prepare(batch, self.context.normalizer)
        repeated = repeat_members(prepared, self.context.config.distill.reward_samples)
        policy_key, objective_key = jax.random.split(key)
        policy = policy_state(self.context, params["student"], policy_key, repeated)
        return self.objective(params, frozen, objective_key, policy, prepared)

    @abc.abstractmethod
    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared):
        """Step 3: the loss at the policy state; RMMD and CRPS-only write their own."""

    def _denoised(self, params, policy: PolicyState) -> jax.Array:
        """Step 2: x0_hat = Phi_theta(x_t^pol; s_t), the only student call with gradient."""
        state = policy.state
        return self.context.denoiser(params["student"])(state.noisy, state.level, policy.repeated.conditioning)

    def _crps(self, denoised: jax.Array, prepared: Prepared) -> jax.Array:
        """-R: the weighted fair CRPS of the M samples x0_hat of each condition against its truth."""
        members = self.context.config.distill.reward_samples
        return self.context.weighted_crps(by_member(denoised, members), prepared.clean, prepared.valid)


class RewardedMomentMatching(_OnPolicyTask):
    """`rmmd`: group `student`; frozen `teacher`, `student_phase1`, `aux_phase1`; one rule."""

    frozen_groups = ("teacher", "student_phase1", "aux_phase1")

    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared):
        """L = MMD term at x_t^pol (against `moment_reference`) + lambda CRPS + (mu/2) anchor (module docstring)."""
        context, distill = self.context, self.context.config.distill
        reward_weight = context.reward_weight
        anchor_weight = reward_weight if distill.anchor_weight is None else distill.anchor_weight
        denoised = self._denoised(params, policy)
        state, repeated = policy.state, policy.repeated
        moment = moment_state(context, key, state, denoised)
        aux, teacher, reference = jax.lax.stop_gradient(context.denoise_together(
            [(frozen["aux_phase1"], moment.noisy, moment.level), (frozen["teacher"], moment.noisy, moment.level),
             (frozen["student_phase1"], state.noisy, state.level)], repeated.conditioning))
        drift = jax.lax.stop_gradient(denoised - reference) / (1.0 + distill.aux_pull_weight)
        shrink = {"posterior_drift": jnp.square(c_out(moment.level)), "drift_corrected": jnp.ones_like(moment.level),
                  "frozen": jnp.zeros_like(moment.level)}[distill.moment_reference]
        gap = (aux - teacher) + per_example(shrink, drift) * drift   # g(x_s') - teacher(x_s'), correction last
        surrogate, gap = moment_surrogate(context, denoised, gap, state, moment, repeated.valid)
        crps = self._crps(denoised, prepared)
        anchor = jnp.mean(loss_weight(state.level)
                          * context.weighted_inner(denoised - reference, denoised - reference, repeated.valid))
        loss = surrogate + reward_weight * crps + 0.5 * anchor_weight * anchor
        return loss, {"mmd_surrogate": surrogate, "moment_gap": gap, "crps": crps, "anchor": anchor}


class CrpsOnly(_OnPolicyTask):
    """`crps_only`: group `student`; frozen `teacher` (provenance); loss = CRPS of x0_hat alone."""

    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared):
        """L = -R(x0_hat_1..M) = weighted fair CRPS, given the policy state."""
        del frozen, key
        crps = self._crps(self._denoised(params, policy), prepared)
        return crps, {"crps": crps}
