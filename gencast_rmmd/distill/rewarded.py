"""Phase 2: rewarded moment matching (RMMD, on-policy or offline) and the CRPS-only fine-tune.

Symbols (paper -> code). Phi_theta: the student (`params['student']`, started
from the phase-1 student); Phi_theta0: the frozen phase-1 student
(`frozen['student_phase1']`); g_phi: the auxiliary denoiser, the moment
reference; the teacher (`frozen['teacher']`); lambda: `distill.reward_weight`;
mu: `distill.anchor_weight` (default lambda); beta: `distill.aux_pull_weight`;
M: `distill.reward_samples`. One optimiser step:

 1. policy state, no gradient (`policy_state`, with sg(theta)): per condition
    b, M independent chains. `policy_noise: grid`: draw i ~ U{0..K-1}, run
    the K-step student from s_0 z and stop at level s_i (x_t^pol = that state);
    `continuous`: run the chain to x~_0, draw s_t (student quantile of u ~ U)
    and re-noise, x_t^pol = x~_0 + s_t eps. `offline: true`: x_t^pol = x_0 + s_t eps
    (forward-diffused data). The M members of a condition share s_t.
 2. one student step with gradient: x0_hat = Phi_theta(x_t^pol; s_t).
 3. student rule (theta), `RewardedMomentMatching.objective`:

        L = E w(s_t, s') <x0_hat, sg(g(x_s') - teacher(x_s'))>_W          (the phase-1 MMD term at x_t^pol)
            - lambda R(x0_hat_1..M)                                       (R = -weighted fair CRPS, `reward.py`)
            + (mu/2) E lambda(s_t) ||x0_hat - sg(Phi_theta0(x_t^pol; s_t))||^2_W

    with x_s' the eta-step from (x_t^pol, x0_hat) to s' (`moment_state`) and w
    the phase-1 weight (`distill.moment_weight`). Gradients reach theta
    through the single call of step 2 only.

The moment reference g (`distill.moment_reference`):

    live (default):   g = g_phi, trained in phase 2 as in phase 1: before each student
                      update, an aux rule (phi) draws its own policy state (steps 1-2,
                      all without gradient) and minimises
                      L_aux = E lambda(s') [||g_phi(x_s') - x0_hat||^2_W + beta ||g_phi(x_s') - teacher(x_s')||^2_W]
                      (`moment_matching.aux_regression`), so g_phi follows the student's
                      current conditional mean: g_phi -> (m_student + beta m_teacher)/(1 + beta).
                      Both rules of a step use ONE policy draw (step 1, computed once per
                      step by the loop: `step_inputs`), each with its own moment level s'.
    posterior_drift:  g = g_phi0(x_s') + c_out(s')^2 delta / (1 + beta)
    drift_corrected:  g = g_phi0(x_s') + delta / (1 + beta)
    frozen:           g = g_phi0(x_s')

with g_phi0 the frozen phase-1 aux (`frozen['aux_phase1']`) and
delta = sg(x0_hat - Phi_theta0(x_t^pol; s_t)) the student's drift from phase 1.
`moment_term: false` drops the first term of L and the aux model altogether
(the ablation "reward + anchor"); `anchor_weight: 0` drops the third.

Why live. Repurposing the distillation loss as a KL proxy needs a term that is
zero when the student's moments are the teacher's: with a live aux the gap
g_phi - teacher = (m_student - m_teacher)/(1 + beta) at the current student,
and lambda R and the anchor trade off around that point. A frozen g_phi0
holds the phase-1 student's gap: its gradient J^T (g_phi0 - teacher) never
shrinks as the student moves, and the student drifts past the teacher without
bound (measured: +35 % CRPS, `results/rmmd_demo.md`).

Where the code departs from the paper, and why. The frozen corrections are
ours, not the paper's: `posterior_drift` assumes E[x0_hat | x_s'] follows a
shift delta of the samples by s'^2 / (s'^2 + 1) (a unit-variance Gaussian's
posterior mean), which does not hold for the states this code builds; it is
kept as a named, cheaper alternative (no aux updates), not as the method. In
phase 1 the two rules draw independent states; here they share the step's
policy draw, which saves one K-step chain per step (the aux is fitted on the
samples the student is then scored on, one small step of phi, before the
student's update). The moment weight `balanced` is ours too
(`moment_matching.moment_weight`).

Rollout (`distill.rollout`, ours, not the paper's). RMMD's reward sees one 12 h
step; its measured gain fades by 2-3 days. With `rollout` each condition also
gives a second policy state 12 h on: member m's input window moves on by its
own finished sample x~_0^m (no gradient), the chain runs again from there and
is re-noised, and the student call at that state is scored against the 24 h
truth: R_24 = -CRPS(x~_0^m + x0_hat_24^m ; x_0^24), all in the condition's own
residual space (`rollout_draw`). The gradient still reaches theta through one
call per row (the second step's), never through the first step's sample: the
student learns to step well from the states its own forecasts reach (the
"pushforward" idea), scored as the ensemble of M two-step trajectories it
forecasts. The moment term, the live aux and the anchor act on the second
step's rows as on the first's.

`CrpsOnly` keeps steps 1-2 and minimises -R alone (no distillation terms;
lambda is not used, the optimiser sets the scale).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.diffusion.base import Conditioning, per_example
from gencast_rmmd.diffusion.preconditioning import c_out, loss_weight
from gencast_rmmd.diffusion.model_space import conditioning, next_inputs, prepare_step
from gencast_rmmd.diffusion.student_sampler import bind, run_steps
from gencast_rmmd.distill.base import DistillContext, Prepared, PyTree, StudentFineTune, by_member, \
    repeat_members
from gencast_rmmd.distill.config import Policy
from gencast_rmmd.distill.moment_matching import NoisyState, aux_optimizer, aux_regression, draw_levels, \
    moment_state, moment_surrogate
from gencast_rmmd.training import TrainableState, UpdateRule


# The frozen-aux references that add the student's drift delta, shrunk by a factor of the moment level s'.
DRIFT_CORRECTED = {"posterior_drift": lambda level: jnp.square(c_out(level)),
                   "drift_corrected": jnp.ones_like}


class PolicyState(NamedTuple):
    """x_t^pol [B M, ...] and s_t [B M] (condition-major rows), with the repeated batch it was drawn for.

    `sample`: the finished chain x~_0 the states were re-noised from (kept only for `distill.rollout`);
    `offset`: what the reward adds to each row's x0_hat before scoring it (the rows of a rollout's second
    step: their first step, so that both lie in the space of the condition's own x_0; None: nothing).
    """

    state: NoisyState
    repeated: Prepared
    sample: jax.Array | None = None
    offset: jax.Array | None = None


class RewardTarget(NamedTuple):
    """What the reward scores M samples against, per condition: x_0 [B', ...] and its mask (a `Prepared`'s
    fields; with `distill.rollout`, B' = 2 B: each condition's 12 h and 24 h truth)."""

    clean: jax.Array
    valid: jax.Array


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
        return NoisyState(base + per_example(noise_levels, base) * context.space.noise(noise_key, base.shape), noise_levels)

    def chain(stop_index: jax.Array | None) -> jax.Array:
        start_key, steps_key = jax.random.split(chain_key)
        start = jnp.float32(levels[0]) * context.space.noise(start_key, clean.shape)
        return run_steps(denoise, start, levels, distill.student.eta, context.space.noise, steps_key, stop_index)

    sample = None                                        # the finished chain, kept for `distill.rollout`
    match distill.policy:
        case Policy.OFFLINE:
            state = renoise(clean, distill.training_noise)
        case Policy.STOPPED_CHAIN:
            index = jnp.repeat(jax.random.randint(level_key, (conditions,), 0, len(levels)), members)
            state = NoisyState(chain(index), jnp.asarray(levels)[index])
        case Policy.RENOISED:
            finished = denoise(chain(None), jnp.float32(levels[-1]))       # sg(theta): no gradient
            state = renoise(finished, "continuous")
            sample = finished if distill.rollout else None
    return PolicyState(NoisyState(jax.lax.stop_gradient(state.noisy), state.level), repeated, sample)


def anchor_penalty(context: DistillContext, denoised: jax.Array, reference: jax.Array, state: NoisyState,
                   valid: jax.Array) -> jax.Array:
    """E lambda(s_t) ||x0_hat - sg(Phi_theta0(x_t^pol; s_t))||^2_W: the anchor (KL proxy) to the phase-1 student.

    `reference` is the frozen phase-1 student's output at the same policy state;
    the caller weights it by mu/2 (RMMD and DMD share it).
    """
    difference = denoised - jax.lax.stop_gradient(reference)
    return jnp.mean(loss_weight(state.level) * context.space.norm.inner(difference, difference, valid))


class PolicyDraw(NamedTuple):
    """A batch's first target step (`prepared`; with `distill.rollout` its `RewardTarget`) and the policy
    state drawn for it (`policy`)."""

    prepared: Prepared | RewardTarget
    policy: PolicyState


def draw_policy(context: DistillContext, student_params: PyTree, key: jax.Array, batch: Batch) -> PolicyDraw:
    """Step 1 of the module docstring for a batch: M policy samples per condition, no gradient."""
    prepared = context.space.prepare(batch)
    repeated = repeat_members(prepared, context.config.distill.reward_samples)
    if not context.config.distill.rollout:
        return PolicyDraw(prepared, policy_state(context, student_params, key, repeated))
    first_key, second_key = jax.random.split(key)
    return rollout_draw(context, student_params, second_key, batch, prepared,
                        policy_state(context, student_params, first_key, repeated))


def rollout_draw(context: DistillContext, student_params: PyTree, key: jax.Array, batch: Batch,
                 prepared: Prepared, first: PolicyState) -> PolicyDraw:
    """`distill.rollout`: the first step's policy states and, after them, a second step's (all no gradient).

    Member m of condition b moves its input window on by its own finished 12 h sample x~_0^m (physical,
    NaN where the data has none: what a forecast feeds back), so the M chains of the second step start from
    M different states, as the M members of an ensemble forecast do. The second step's policy state is
    drawn as the first's (chain, re-noise) from that conditioning, its x_0 (the 24 h truth) residual to the
    member's own 12 h state. The reward scores the M two-step trajectories against the 24 h truth in the
    first step's space: a row's x0_hat plus its offset x~_0^m on residual channels (x0_hat alone on
    target-only ones) is the member's 24 h state in the condition's own units.
    """
    normalizer, members = context.space.normalizer, context.config.distill.reward_samples
    inputs = jnp.repeat(batch.inputs, members, axis=0)
    last = normalizer.last_frame(inputs)
    twelve_hours = normalizer.restore_nan(normalizer.denormalize_targets(first.sample, last), last)
    moved = next_inputs(normalizer, inputs, twelve_hours)
    truth = batch.targets[:, 1]
    second = policy_state(context, student_params, key, prepare_step(
        normalizer, jnp.repeat(truth, members, axis=0), moved, conditioning(
            normalizer, moved, jnp.repeat(batch.forcings[:, 1], members, axis=0), batch.static)))
    residual = jnp.asarray(normalizer.target_input_index >= 0)
    target = prepare_step(normalizer, truth, batch.inputs, prepared.conditioning)
    rows = lambda a, b: jnp.concatenate([a, b], axis=0)          # noqa: E731 (first step's rows, then second's)
    repeated, later = first.repeated, second.repeated
    policy = PolicyState(
        NoisyState(rows(first.state.noisy, second.state.noisy), rows(first.state.level, second.state.level)),
        Prepared(rows(repeated.clean, later.clean),
                 Conditioning(rows(repeated.conditioning.inputs, later.conditioning.inputs),
                              rows(repeated.conditioning.forcings, later.conditioning.forcings),
                              repeated.conditioning.static),
                 rows(repeated.valid, later.valid)),
        offset=rows(jnp.zeros_like(first.sample), jnp.where(residual, first.sample, 0.0)))
    return PolicyDraw(RewardTarget(rows(prepared.clean, target.clean), rows(prepared.valid, target.valid)), policy)



class OnPolicyTask(StudentFineTune):
    """One 'student' rule: loss = objective(theta; policy_state(sg(theta))), one differentiated student call."""

    def loss(self, params, frozen, key, batch):
        """Draw the policy state without gradient, then `objective` (which differentiates one student call)."""
        policy_key, objective_key = jax.random.split(key)
        draw = draw_policy(self.context, params["student"], policy_key, batch)
        return self.objective(params, frozen, objective_key, draw.policy, draw.prepared)

    @abc.abstractmethod
    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared):
        """Step 3: the loss at the policy state; RMMD and CRPS-only write their own."""

    def _denoised(self, params, policy: PolicyState) -> jax.Array:
        """Step 2: x0_hat = Phi_theta(x_t^pol; s_t), the only student call with gradient."""
        state = policy.state
        return self.context.denoiser(params["student"])(state.noisy, state.level, policy.repeated.conditioning)

    def _crps(self, denoised: jax.Array, prepared: Prepared | RewardTarget,
              policy: PolicyState | None = None) -> jax.Array:
        """-R: the weighted fair CRPS of the M samples x0_hat of each condition against its truth (each row
        shifted by the `policy`'s offset, if it has one: a rollout's second step)."""
        members = self.context.config.distill.reward_samples
        if policy is not None and policy.offset is not None:
            denoised = denoised + policy.offset
        return self.context.weighted_crps(by_member(denoised, members), prepared.clean, prepared.valid)


class RewardedMomentMatching(OnPolicyTask):
    """`rmmd`: groups `student` (and `aux` with the live reference); frozen trees as the variant needs them.

    Frozen: `teacher` always; `student_phase1` when the anchor or a drift
    correction uses Phi_theta0; `aux_phase1` for the frozen-aux references.
    Rules: [aux, student] with the live reference, else [student].
    """

    def __init__(self, context: DistillContext):
        super().__init__(context)
        distill = context.config.distill
        self.anchor_weight = context.reward_weight if distill.anchor_weight is None else distill.anchor_weight
        self.moment_reference = distill.moment_reference if distill.moment_term else None
        self.live = self.moment_reference == "live"
        uses_phase1_student = self.anchor_weight > 0.0 or self.moment_reference in DRIFT_CORRECTED
        self.frozen_groups = ("teacher", *(("student_phase1",) if uses_phase1_student else ()),
                              *(("aux_phase1",) if self.moment_reference not in (None, "live") else ()))
        if self.live:   # the aux and student rules share one policy draw per step (training.task.StepInputsFn)
            self.step_inputs = lambda params, frozen, key, batch, step: draw_policy(context, params["student"],
                                                                                    key, batch)

    def init(self, key: jax.Array, example_batch: Batch) -> TrainableState:
        state = super().init(key, example_batch)
        if not self.live:
            return state
        return state._replace(params={**state.params, "aux": jax.tree.map(jnp.array, self.context.anchors.aux)})

    def update_rules(self) -> list[UpdateRule]:
        student = super().update_rules()
        return [UpdateRule("aux", ("aux",), self.aux_loss, aux_optimizer(self.context)), *student] if self.live \
            else student

    def loss(self, params, frozen, key, batch):
        """The student rule. Live: `batch` is the step's shared `PolicyDraw`; otherwise drawn here."""
        if not self.live:
            return super().loss(params, frozen, key, batch)
        return self.objective(params, frozen, key, batch.policy, batch.prepared)

    def aux_loss(self, params, frozen, key, draw: PolicyDraw):
        """L_aux at the step's policy states of the current (stopped) student: the live aux follows its moments."""
        policy = draw.policy
        denoised = jax.lax.stop_gradient(self._denoised(params, policy))
        return aux_regression(self.context, params["aux"], frozen["teacher"], key, policy.state, denoised,
                              policy.repeated.conditioning, policy.repeated.valid)

    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared):
        """L = MMD term at x_t^pol (against `moment_reference`) + lambda CRPS + (mu/2) anchor (module docstring)."""
        context, distill = self.context, self.context.config.distill
        denoised = self._denoised(params, policy)
        state, repeated = policy.state, policy.repeated
        metrics = {}
        moment = moment_state(context, key, state, denoised) if self.moment_reference else None
        calls = []
        if self.moment_reference:
            aux_params = params["aux"] if self.live else frozen["aux_phase1"]
            calls += [(aux_params, moment.noisy, moment.level), (frozen["teacher"], moment.noisy, moment.level)]
        if "student_phase1" in self.frozen_groups:
            calls.append((frozen["student_phase1"], state.noisy, state.level))
        outputs = jax.lax.stop_gradient(context.denoise_together(calls, repeated.conditioning)) if calls else []
        reference = outputs[-1] if "student_phase1" in self.frozen_groups else None
        loss = jnp.float32(0.0)
        if self.moment_reference:
            aux, teacher = outputs[:2]
            gap = aux - teacher                          # g(x_s') - teacher(x_s'); a correction is added last
            if self.moment_reference in DRIFT_CORRECTED:
                drift = jax.lax.stop_gradient(denoised - reference) / (1.0 + distill.aux_pull_weight)
                shrink = DRIFT_CORRECTED[self.moment_reference](moment.level)
                gap = gap + per_example(shrink, drift) * drift
            surrogate, metrics["moment_gap"] = moment_surrogate(context, denoised, gap, state, moment, repeated.valid)
            metrics["mmd_surrogate"] = surrogate
            loss = loss + surrogate
        crps = self._crps(denoised, prepared, policy)
        metrics["crps"] = crps
        loss = loss + context.reward_weight * crps
        if self.anchor_weight > 0.0:
            anchor = anchor_penalty(context, denoised, reference, state, repeated.valid)
            metrics["anchor"] = anchor
            loss = loss + 0.5 * self.anchor_weight * anchor
        return loss, metrics


class CrpsOnly(OnPolicyTask):
    """`crps_only`: group `student`; frozen `teacher` (provenance); loss = CRPS of x0_hat alone."""

    def objective(self, params, frozen, key, policy: PolicyState, prepared: Prepared):
        """L = -R(x0_hat_1..M) = weighted fair CRPS, given the policy state."""
        del frozen, key
        crps = self._crps(self._denoised(params, policy), prepared, policy)
        return crps, {"crps": crps}
