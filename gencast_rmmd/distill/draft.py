"""Baseline: DRaFT-K (Clark et al. 2024, "Directly fine-tuning diffusion models on differentiable rewards").

The reward is backpropagated through the last K_d = `distill.draft_steps`
steps of the K-step student sampler (DRaFT-K truncated backpropagation),
starting from the phase-1 student. Symbols (paper -> code): theta
(`params['student']`), theta0 the frozen phase-1 student
(`frozen['student_phase1']`), lambda `reward_weight`, mu `anchor_weight`
(default 0: plain DRaFT, which has no regulariser). Per condition, M chains:

    x_0 = s_0 z;  x_{k+1} = eta-step(x_k, Phi_sg(theta)(x_k; s_k), s_k -> s_{k+1})   for k < K - K_d   (no gradient)
    for k = K - K_d .. K - 1 (gradient through x_k and theta):
        x0_hat_k = Phi_theta(x_k; s_k);  x_{k+1} = eta-step(x_k, x0_hat_k, s_k -> s_{k+1})
    L = -lambda R(x0_hat_{K-1, 1..M}) + (mu/2) sum_k E lambda(s_k) ||x0_hat_k - sg(Phi_theta0(x_k; s_k))||^2_W

The optional anchor is the same KL proxy RMMD uses, applied at each
differentiated step, so that DRaFT and RMMD can be compared at equal
regularisation; with mu = 0 the Pareto trade-off comes from lambda alone
(through gradient clipping) and from early stopping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gencast_rmmd.diffusion.preconditioning import loss_weight
from gencast_rmmd.diffusion.student_sampler import bind, eta_step, run_steps
from gencast_rmmd.distill.base import StudentFineTune, by_member, repeat_members


class DraftK(StudentFineTune):
    """`draft`: group `student`; frozen `teacher` (provenance) and `student_phase1` (anchor); one rule."""

    frozen_groups = ("teacher", "student_phase1")

    def loss(self, params, frozen, key, batch):
        """L of the module docstring: K - K_d steps without gradient, K_d with, reward on the final sample."""
        context, distill = self.context, self.context.config.distill
        members, eta, levels = distill.reward_samples, distill.student.eta, context.levels
        anchor_weight = distill.anchor_weight or 0.0
        prepared = context.space.prepare(batch)
        repeated = repeat_members(prepared, members)
        conditioning = repeated.conditioning
        initial_key, frozen_chain_key, chain_key = jax.random.split(key, 3)
        first_differentiated = len(levels) - distill.draft_steps

        frozen_student = bind(context.denoiser(jax.lax.stop_gradient(params["student"])), conditioning)
        x = jnp.float32(levels[0]) * context.space.noise(initial_key, repeated.clean.shape)
        x = jax.lax.stop_gradient(run_steps(frozen_student, x, levels[:first_differentiated + 1], eta,
                                            context.space.noise, frozen_chain_key))

        student = bind(context.denoiser(params["student"]), conditioning)
        reference = bind(context.denoiser(jax.lax.stop_gradient(frozen["student_phase1"])), conditioning)
        step_keys = jax.random.split(chain_key, distill.draft_steps)
        anchor = jnp.float32(0.0)
        for offset, index in enumerate(range(first_differentiated, len(levels))):
            level = jnp.float32(levels[index])
            denoised = student(x, level)
            if anchor_weight > 0.0:
                difference = denoised - reference(jax.lax.stop_gradient(x), level)
                anchor = anchor + loss_weight(level) * jnp.mean(
                    context.space.norm.inner(difference, difference, repeated.valid))
            if index + 1 < len(levels):
                fresh = context.space.noise(step_keys[offset], x.shape) if eta > 0 else None
                x = eta_step(x, denoised, level, jnp.float32(levels[index + 1]), eta, fresh)
        crps = context.weighted_crps(by_member(denoised, members), prepared.clean, prepared.valid)
        loss = context.reward_weight * crps + 0.5 * anchor_weight * anchor
        return loss, {"crps": crps, "anchor": anchor}
