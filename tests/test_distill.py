"""Distillation: the fair-CRPS reward, the one-step gradient of RMMD, frozen anchors, and the CLI end to end.

Structural tests use a toy network (a few parameters, compiles in a blink)
inside a real `DistillContext`; the end-to-end tests distill a 2-step tiny
teacher with `configs/distill/tiny.yaml` (phase 1 + a two-value lambda sweep).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from conftest import REPO, TINY_TEACHER, TWO_LEVELS
from crps_oracle import brute_force_fair_crps
from gencast_rmmd.data.batches import Batch
from gencast_rmmd.data.grid import latitude_cell_weights
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.config import LossConfig
from gencast_rmmd.diffusion.loss import WeightedNorm
from gencast_rmmd.diffusion.model_space import ModelSpace
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.distill.base import Anchors, DistillContext, repeat_members
from gencast_rmmd.distill.config import DistillConfig
from gencast_rmmd.distill.registry import DISTILLERS
from gencast_rmmd.distill.reward import fair_crps, reward_channel_scale, weighted_fair_crps
from gencast_rmmd.distill.rewarded import policy_state

TINY = REPO / "configs" / "distill" / "tiny.yaml"

# --------------------------------------------------------------------------- reward


@pytest.mark.parametrize("members", [2, 3, 5])
def test_fair_crps_matches_the_double_sum(members):
    rng = np.random.default_rng(members)
    samples, truth = rng.normal(size=(members, 6, 7)), rng.normal(size=(6, 7))
    np.testing.assert_allclose(fair_crps(jnp.asarray(samples), jnp.asarray(truth)),
                               brute_force_fair_crps(np.moveaxis(samples, 0, -1), truth), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("members", [2, 4, 9])
def test_the_reward_fair_crps_is_the_evaluation_fair_crps(members):
    """The CRPS that RMMD rewards is the one the scorecards report: `distill.reward.fair_crps` (JAX, float32,
    members first) equals `evaluation.metrics.fair_crps` (sorted kernel, members on `number`) point by point, to
    float32 accuracy, on fields of different scales without NaN."""
    from evaluation import metrics

    rng = np.random.default_rng(100 + members)
    scale = rng.uniform(0.1, 50.0, size=(4, 1, 1))                        # channels of different units
    samples = (rng.normal(size=(members, 4, 8, 16)) * scale).astype(np.float32)
    truth = (rng.normal(size=(4, 8, 16)) * scale).astype(np.float32)
    dims = ("channel", "latitude", "longitude")
    evaluated = metrics.fair_crps(xr.DataArray(samples, dims=("number", *dims)), xr.DataArray(truth, dims=dims))
    assert evaluated.dims == dims
    rewarded = np.asarray(fair_crps(jnp.asarray(samples), jnp.asarray(truth)))
    assert rewarded.dtype == np.float32 and np.all(np.isfinite(rewarded))
    tolerance = 1e-5 * np.broadcast_to(scale, truth.shape)             # float32 relative to each field's scale
    assert np.all(np.abs(rewarded - evaluated.values) <= tolerance)
    assert np.all(np.abs(rewarded - brute_force_fair_crps(np.moveaxis(samples, 0, -1), truth)) <= tolerance)


def test_weighted_fair_crps_masks_and_weights_like_a_direct_sum():
    rng = np.random.default_rng(0)
    members, batch, n_lat, n_lon, channels = 3, 2, 5, 4, 3
    samples = rng.normal(size=(members, batch, n_lat, n_lon, channels)).astype(np.float32)
    truth = rng.normal(size=(batch, n_lat, n_lon, channels)).astype(np.float32)
    truth[0, :2, :, 1] = np.nan                        # e.g. SST over land
    truth[1, :, :, 2] = np.nan                         # a channel with no valid point
    latitude = np.linspace(-80, 80, n_lat)
    area, weights = latitude_cell_weights(latitude), np.array([1.0, 0.5, 2.0])
    expected = np.zeros(batch)
    for b in range(batch):
        for c in range(channels):
            valid = np.isfinite(truth[b, ..., c])
            if valid.any():
                crps = brute_force_fair_crps(samples[:, b, ..., c][:, valid].T, truth[b, ..., c][valid])
                cell = np.broadcast_to(area[:, None], valid.shape)[valid]
                expected[b] += weights[c] * np.sum(cell * crps) / np.sum(cell)
    got = weighted_fair_crps(jnp.asarray(samples), jnp.asarray(truth), jnp.isfinite(truth), WeightedNorm(area, weights))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    gradient = jax.grad(lambda x: jnp.sum(weighted_fair_crps(x, jnp.asarray(truth), jnp.isfinite(truth),
                                                             WeightedNorm(area, weights))))(jnp.asarray(samples))
    assert bool(jnp.all(jnp.isfinite(gradient))) and float(jnp.abs(gradient[:, 1, ..., 2]).max()) == 0.0


def test_fair_crps_gradient_is_the_analytic_one():
    samples, truth = jnp.array([0.3, -1.2, 2.0]), jnp.array(0.5)
    members = 3
    gradient = jax.grad(lambda x: fair_crps(x, truth))(samples)
    signs = np.sign(np.asarray(samples)[:, None] - np.asarray(samples)[None, :])
    analytic = np.sign(np.asarray(samples) - 0.5) / members - signs.sum(axis=1) / (members * (members - 1))
    np.testing.assert_allclose(gradient, analytic, rtol=1e-6)


def test_weighted_fair_crps_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    samples = jnp.asarray(rng.normal(size=(2, 1, 3, 4, 2)), jnp.float32)
    truth = jnp.asarray(rng.normal(size=(1, 3, 4, 2)), jnp.float32)
    valid, area, weights = jnp.ones(truth.shape, bool), latitude_cell_weights(np.array([-45.0, 0.0, 45.0])), \
        np.array([1.0, 0.3])

    def loss(x):
        return jnp.sum(weighted_fair_crps(x, truth, valid, WeightedNorm(area, weights)))

    direction = jnp.asarray(rng.normal(size=samples.shape), jnp.float32)
    step = 1e-3  # |x| is piecewise linear: central differences are exact unless a kink is crossed
    numeric = (loss(samples + step * direction) - loss(samples - step * direction)) / (2 * step)
    assert float(jnp.vdot(jax.grad(loss)(samples), direction)) == pytest.approx(float(numeric), rel=2e-3)


def test_reward_units_scale_channels_to_climatological_std():
    normalizer = _normalizer(4)
    normalizer = Normalizer(**{**normalizer.__dict__, "target_scale": np.array([2.0, 3.0, 1.0, 5.0], np.float32),
                               "input_std": np.array([4.0, 6.0, 1.0, 1.0], np.float32),
                               "target_input_index": np.array([0, 1, 2, -1])})
    np.testing.assert_allclose(reward_channel_scale(normalizer, "climatology"), [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(reward_channel_scale(normalizer, "residual"), 1.0)


# --------------------------------------------------------------------------- toy context

LAT, LON = np.linspace(-78.75, 78.75, 8), np.arange(16) * 22.5
LAYOUT = ChannelLayout(surface=("2m_temperature", "mean_sea_level_pressure"), atmospheric=("temperature",),
                       target_only=(), static=("land_sea_mask",), levels=(500, 850), input_frames=2)


@dataclass(frozen=True)
class ToyNetwork:
    """F(x; s, cond) = sin(w x + b cond) + 0.01 log s: each call with differentiated inputs adds one `cos`."""

    def apply(self, params, x, sigma, conditioning):
        toy = params["toy"]
        return (jnp.sin(toy["w"] * x + toy["b"] * conditioning.inputs[..., :x.shape[-1]])
                + 0.01 * jnp.log(sigma)[:, None, None, None])


def _normalizer(channels: int) -> Normalizer:
    zeros, ones = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    return Normalizer(input_mean=zeros, input_std=2 * ones, input_fill=zeros, target_center=zeros,
                      target_scale=ones, target_fill=zeros, target_input_index=np.arange(channels),
                      static_mean=np.zeros(1, np.float32), static_std=np.ones(1, np.float32),
                      static_fill=np.zeros(1, np.float32), input_frames=2)


def _toy(w: float, b: float = 0.1) -> dict:
    return {"toy": {"w": np.full(4, w, np.float32), "b": np.full(4, b, np.float32)}}


def toy_context(**distill) -> DistillContext:
    config = DistillConfig(distill={"student": {"steps": 4}, **distill}, train={"steps": 2, "warmup_steps": 0})
    anchors = Anchors(teacher=_toy(1.0), student=_toy(1.1), aux=_toy(0.9))
    space = ModelSpace(_normalizer(4), LAYOUT, LAT, LON, SphericalNoise.from_spec(LAT, LON, None), LossConfig())
    return DistillContext(config, ToyNetwork(), space, anchors, {})


def toy_batch(seed: int = 0, batch: int = 2, steps: int = 1) -> Batch:
    rng = np.random.default_rng(seed)
    grid = (len(LAT), len(LON))
    targets = rng.normal(size=(batch, steps, *grid, 4)).astype(np.float32)
    targets[0, :, :3, :, 1] = np.nan
    return Batch(inputs=rng.normal(size=(batch, *grid, 8)).astype(np.float32),
                 forcings=rng.normal(size=(batch, steps, *grid, 4)).astype(np.float32), targets=targets,
                 static=rng.normal(size=(*grid, 1)).astype(np.float32))


def differentiated_calls(loss, params) -> int:
    """`cos` equations in the jaxpr of grad(loss), sub-jaxprs (scan bodies) included: one per differentiated call."""
    def count(jaxpr) -> int:
        total = 0
        for equation in jaxpr.eqns:
            total += equation.primitive.name == "cos"
            for value in equation.params.values():
                for sub in (value if isinstance(value, (list, tuple)) else [value]):
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None:
                        total += count(inner if hasattr(inner, "eqns") else inner.jaxpr)
        return total
    return count(jax.make_jaxpr(jax.grad(lambda p: loss(p)[0]))(params).jaxpr)


def rule_inputs(task, params, frozen, key, batch, step: int = 0):
    """What the loop hands every rule at `step`: the task's shared `step_inputs` (live RMMD's policy draw) or the
    batch."""
    step_inputs = getattr(task, "step_inputs", None)
    return batch if step_inputs is None else step_inputs(params, frozen, jax.random.fold_in(key, 99), batch,
                                                         jnp.int32(step))


def fit_and_gap(task, params, frozen, keys, batch, gap_metric: str) -> tuple[float, float]:
    """Mean over fixed evaluation `keys` of the aux rule's `aux_fit` and the student rule's `gap_metric`,
    each key's draw shared by both rules as in a training step."""
    aux_rule, student_rule = task.update_rules()
    draws = [rule_inputs(task, params, frozen, key, batch) for key in keys]
    fit = np.mean([float(aux_rule.loss(params, frozen, key, draw)[1]["aux_fit"]) for key, draw in zip(keys, draws)])
    gap = np.mean([float(student_rule.loss(params, frozen, key, draw)[1][gap_metric])
                   for key, draw in zip(keys, draws)])
    return float(fit), float(gap)


@pytest.mark.parametrize("distill,expected", [
    ({"method": "rmmd", "policy_noise": "grid"}, 1),
    ({"method": "rmmd", "policy_noise": "continuous"}, 1),
    ({"method": "rmmd", "offline": True}, 1),
    ({"method": "rmmd", "moment_reference": "posterior_drift"}, 1),
    ({"method": "rmmd", "moment_term": False}, 1),
    ({"method": "crps_only"}, 1),
    ({"method": "rmmd", "policy_noise": "continuous", "rollout": True}, 1),
    ({"method": "crps_only", "policy_noise": "continuous", "rollout": True}, 1),
    ({"method": "draft", "draft_steps": 2}, 2),
    ({"method": "draft", "draft_steps": 3, "anchor_weight": 0.5}, 3),
])
def test_gradient_reaches_the_student_through_the_expected_steps(distill, expected):
    """On-policy methods differentiate ONE student call (the K-step chain runs without gradient); DRaFT-K, K."""
    context = toy_context(**distill)
    task = DISTILLERS[distill["method"]](context)
    state, batch, key = task.init(None, None), toy_batch(steps=2 if distill.get("rollout") else 1), \
        jax.random.PRNGKey(3)
    rule = task.update_rules()[-1]
    assert rule.groups == ("student",)
    params = {**state.params, "student": state.params["student"]}
    inputs = rule_inputs(task, params, state.frozen, key, batch)
    assert differentiated_calls(lambda p: rule.loss({**params, **p}, state.frozen, key, inputs),
                                {"student": params["student"]}) == expected
    loss, metrics = rule.loss(params, state.frozen, key, inputs)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(value)) for value in metrics.values())
    crps, _ = task.validation_loss(state.params, state.frozen, key, batch)   # K-step samples, M per condition
    assert np.isfinite(float(crps)) and float(crps) > 0


@pytest.mark.parametrize("policy_noise", ["grid", "continuous"])
def test_rmmd_gradient_equals_the_one_step_objective_with_the_chain_held_fixed(policy_noise):
    context = toy_context(method="rmmd", policy_noise=policy_noise, reward_weight=0.7,
                          moment_reference="posterior_drift")
    task = DISTILLERS["rmmd"](context)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(0)
    full = jax.grad(lambda p: task.loss(p, state.frozen, key, batch)[0])(state.params)
    prepared = context.space.prepare(batch)
    policy_key, objective_key = jax.random.split(key)
    policy = policy_state(context, state.params["student"], policy_key, repeat_members(prepared, 2))
    assert float(policy.state.level.min()) < context.levels[0], "some chain must have run (stop index > 0)"
    fixed = jax.grad(lambda p: task.objective(p, state.frozen, objective_key, policy, prepared)[0])(state.params)
    for got, want in zip(jax.tree.leaves(full), jax.tree.leaves(fixed)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(full["student"]["toy"]["w"]).max()) > 0


VARIANTS = {   # name: (distill settings, parameter groups, frozen trees, rules)
    "live": ({}, ["aux", "student"], ["student_phase1", "teacher"], ["aux", "student"]),
    "live_offline": ({"offline": True}, ["aux", "student"], ["student_phase1", "teacher"], ["aux", "student"]),
    "posterior_drift": ({"moment_reference": "posterior_drift"}, ["student"],
                        ["aux_phase1", "student_phase1", "teacher"], ["student"]),
    "frozen": ({"moment_reference": "frozen"}, ["student"], ["aux_phase1", "student_phase1", "teacher"], ["student"]),
    "no_moment": ({"moment_term": False}, ["student"], ["student_phase1", "teacher"], ["student"]),
    "no_anchor": ({"anchor_weight": 0.0}, ["aux", "student"], ["teacher"], ["aux", "student"]),
    "frozen_no_anchor": ({"moment_reference": "frozen", "anchor_weight": 0.0}, ["student"],
                         ["aux_phase1", "teacher"], ["student"]),
}


def _nonzero(tree) -> bool:
    return any(float(jnp.abs(leaf).max()) > 0.0 for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_rmmd_variant_has_its_groups_and_gradients_flow_only_where_its_docstring_says(variant):
    """Per variant: which trees train and which stay frozen; the student rule moves theta only and the live aux
    rule phi only (each through exactly one differentiated call); nothing reaches a frozen tree."""
    settings, groups, frozen_groups, rules = VARIANTS[variant]
    context = toy_context(**{"method": "rmmd", "reward_weight": 0.7, "anchor_weight": 0.4, **settings})
    task = DISTILLERS["rmmd"](context)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(11)
    assert sorted(state.params) == groups and sorted(state.frozen) == frozen_groups
    assert [rule.name for rule in task.update_rules()] == rules
    assert hasattr(task, "step_inputs") == ("aux" in groups), "live RMMD shares one policy draw per step"
    inputs = rule_inputs(task, state.params, state.frozen, key, batch)
    for rule in task.update_rules():
        everything = {**state.params, **{f"frozen.{name}": tree for name, tree in state.frozen.items()}}

        def loss(trees, rule=rule):
            params = {name: tree for name, tree in trees.items() if not name.startswith("frozen.")}
            frozen = {name[len("frozen."):]: tree for name, tree in trees.items() if name.startswith("frozen.")}
            return rule.loss(params, frozen, key, inputs)

        gradient = jax.grad(lambda trees: loss(trees)[0])(everything)
        for name, tree in gradient.items():
            assert _nonzero(tree) == (name in rule.groups), (variant, rule.name, name)
        assert differentiated_calls(lambda trees: loss({**everything, **trees}),
                                    {group: everything[group] for group in rule.groups}) == 1
    _, metrics = task.update_rules()[-1].loss(state.params, state.frozen, key, inputs)
    assert ("mmd_surrogate" in metrics) == (settings.get("moment_term", True))
    assert ("anchor" in metrics) == (settings.get("anchor_weight", 0.4) > 0)


def test_rmmd_ablations_are_the_full_loss_less_one_term():
    """anchor_weight: 0 is the moment term + lambda CRPS of the same draw; moment_term: false is lambda CRPS +
    (mu/2) anchor, the same CRPS and anchor as a frozen-reference RMMD of the same draw (both draw in the rule)."""
    batch, key = toy_batch(), jax.random.PRNGKey(2)
    parts = {}
    for name, settings in {"live": {}, "live_no_anchor": {"anchor_weight": 0.0},
                           "posterior_drift": {"moment_reference": "posterior_drift"},
                           "no_moment": {"moment_term": False}}.items():
        task = DISTILLERS["rmmd"](toy_context(**{"method": "rmmd", "reward_weight": 0.7, "anchor_weight": 0.4,
                                                 **settings}))
        state = task.init(None, None)
        params = {**state.params, "student": _toy(1.07, b=0.13)}
        parts[name] = task.update_rules()[-1].loss(params, state.frozen, key,
                                                   rule_inputs(task, params, state.frozen, key, batch))
    for full, ablated in (("live", "live_no_anchor"), ("posterior_drift", "no_moment")):
        loss, metrics = parts[full]
        np.testing.assert_allclose(loss, metrics["mmd_surrogate"] + 0.7 * metrics["crps"] + 0.2 * metrics["anchor"],
                                   rtol=1e-5)
        assert float(metrics["mmd_surrogate"]) != 0.0 and float(metrics["anchor"]) > 0.0
    live = parts["live"][1]
    np.testing.assert_allclose(parts["live_no_anchor"][0], live["mmd_surrogate"] + 0.7 * live["crps"], rtol=1e-5)
    drift = parts["posterior_drift"][1]
    np.testing.assert_allclose(parts["no_moment"][0], 0.7 * drift["crps"] + 0.2 * drift["anchor"], rtol=1e-5)


def test_live_aux_follows_a_moved_student_and_the_moment_gap_opens():
    """The live aux regresses the current student's denoised samples (beta = 0: g_phi -> E[x0_hat | x_s']).

    Start: teacher = aux = phase-1 student (phase 1 at its fixed point); then the
    student is moved. A frozen aux would keep the old moments (gap 0, no pull).
    Descending the live aux rule lowers its fit to the moved student's samples
    (on fixed evaluation draws), and the student rule's moment gap opens: the
    aux now carries the student's new moments and the teacher does not, which
    is what lets the term pull the student back.
    """
    context = toy_context(method="rmmd", reward_weight=0.0, anchor_weight=0.0, aux_pull_weight=0.0)
    context = dataclasses.replace(context, anchors=Anchors(_toy(1.0), _toy(1.0), _toy(1.0)))
    task = DISTILLERS["rmmd"](context)
    state, batch = task.init(None, None), toy_batch()
    aux_rule = task.update_rules()[0]
    params = {"student": _toy(1.3, b=0.2), "aux": state.params["aux"]}
    evaluation_keys = [jax.random.PRNGKey(k) for k in range(4)]

    def measured(params) -> tuple[float, float]:
        return fit_and_gap(task, params, state.frozen, evaluation_keys, batch, "moment_gap")

    gradient = jax.jit(jax.grad(lambda aux, key: aux_rule.loss(
        {**params, "aux": aux}, state.frozen, key, rule_inputs(task, params, state.frozen, key, batch))[0]))
    fit_before, gap_before = measured(params)
    for step in range(40):
        params["aux"] = jax.tree.map(lambda p, g: p - 0.02 * g, params["aux"], gradient(params["aux"],
                                                                                        jax.random.PRNGKey(100 + step)))
    fit_after, gap_after = measured(params)
    assert gap_before == 0.0, "aux = teacher at the start: no moment gap"
    assert fit_after < 0.95 * fit_before and gap_after > 1e-3, (fit_before, fit_after, gap_after)


@pytest.mark.parametrize("reference", ["posterior_drift", "drift_corrected", "frozen"])
def test_rmmd_moment_reference_pulls_a_drifted_student_back_only_when_corrected(reference):
    """Phase 1 ended at its fixed point (aux = teacher = phase-1 student), so the frozen gap is zero.

    A student displaced from phase 1 must feel a restoring moment term when the
    reference is drift-corrected (<grad, theta - theta0> > 0: a descent step
    moves it back), and none at all when the frozen aux is used as it is.
    """
    context = toy_context(method="rmmd", reward_weight=0.0, anchor_weight=0.0, moment_reference=reference)
    context = dataclasses.replace(context, anchors=Anchors(_toy(1.0), _toy(1.0), _toy(1.0)))
    task = DISTILLERS["rmmd"](context)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(5)
    displaced = {"student": _toy(1.05, b=0.12)}
    gradient = jax.grad(lambda p: task.loss(p, state.frozen, key, batch)[0])(displaced)
    drift = jax.tree.map(lambda a, b: jnp.asarray(a) - jnp.asarray(b), displaced, {"student": state.params["student"]})
    along = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(drift)))
    if reference == "frozen":
        assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(gradient))
    else:
        assert along > 0
    # At the phase-1 student itself the correction is zero: both references give the same (zero) gradient.
    at_start = jax.grad(lambda p: task.loss(p, state.frozen, key, batch)[0])({"student": state.params["student"]})
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(at_start))


@pytest.mark.parametrize("reference", ["posterior_drift", "drift_corrected"])
def test_rmmd_posterior_drift_term_stays_bounded_as_the_moment_level_goes_to_zero(reference):
    """lambda(s') c_out(s')^2 delta = delta: with the posterior shrinkage the drift term does not depend on s'.

    Phase 1 at its fixed point (aux = teacher = phase-1 student), so the moment
    gap is the drift correction alone. Pushing the lowest moment level s_lo from
    0.02 to 1e-4 leaves the `posterior_drift` surrogate unchanged, and blows up
    the unshrunk `drift_corrected` one (lambda(s') ~ 1/s'^2).
    """
    surrogates = []
    for lowest in (0.02, 1e-4):
        context = toy_context(method="rmmd", reward_weight=0.0, anchor_weight=0.0, moment_reference=reference,
                              moment_min_noise_level=lowest)
        context = dataclasses.replace(context, anchors=Anchors(_toy(1.0), _toy(1.0), _toy(1.0)))
        task = DISTILLERS["rmmd"](context)
        state = task.init(None, None)
        _, metrics = task.loss({"student": _toy(1.05, b=0.12)}, state.frozen, jax.random.PRNGKey(5), toy_batch())
        surrogates.append(float(metrics["mmd_surrogate"]))
    assert surrogates[0] != 0.0
    if reference == "posterior_drift":
        np.testing.assert_allclose(surrogates[1], surrogates[0], rtol=1e-4)
    else:
        assert abs(surrogates[1]) > 10 * abs(surrogates[0])


def test_moment_weight_edm_is_lambda_of_s_prime_and_balanced_the_geometric_mean():
    from gencast_rmmd.diffusion.preconditioning import loss_weight
    from gencast_rmmd.distill.moment_matching import NoisyState, moment_weight
    state = NoisyState(jnp.zeros((4, 1)), jnp.asarray([80.0, 5.0, 0.5, 0.03]))
    moment = NoisyState(jnp.zeros((4, 1)), jnp.asarray([0.02, 1.0, 0.1, 0.03]))
    edm = moment_weight(toy_context(moment_weight="edm"), state, moment)
    balanced = moment_weight(toy_context(moment_weight="balanced"), state, moment)
    np.testing.assert_allclose(edm, loss_weight(moment.level), rtol=1e-6)
    np.testing.assert_allclose(balanced, np.sqrt(loss_weight(state.level) * loss_weight(moment.level)), rtol=1e-5)
    # s' <= s_t: balanced never weights more than edm; equal levels give equal weights.
    assert bool(jnp.all(balanced <= edm * (1 + 1e-6)))
    np.testing.assert_allclose(balanced[3], edm[3], rtol=1e-5)


def test_moment_matching_differentiates_one_call_per_rule_and_starts_at_its_fixed_point():
    context = toy_context(method="mmd")
    context = dataclasses.replace(context, anchors=Anchors(_toy(1.0), _toy(1.0), _toy(1.0)))
    task = DISTILLERS["mmd"](context)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(0)
    aux_rule, student_rule = task.update_rules()
    assert (aux_rule.groups, student_rule.groups) == (("aux",), ("student",))
    for rule in (aux_rule, student_rule):
        group = rule.groups[0]
        loss = lambda p, rule=rule: rule.loss({**state.params, **p}, state.frozen, key, batch)  # noqa: E731
        assert differentiated_calls(loss, {group: state.params[group]}) == 1
    # aux = teacher: the moment gap, the student surrogate and its gradient vanish.
    gradient, (loss, metrics) = jax.grad(lambda p: student_rule.loss({**state.params, **p}, state.frozen, key, batch),
                                         has_aux=True)({"student": state.params["student"]}), \
        student_rule.loss(state.params, state.frozen, key, batch)
    assert float(loss) == 0.0 and float(metrics["moment_gap"]) == 0.0
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(gradient))


def test_every_registered_distiller_says_where_it_starts_and_which_frozen_trees_it_keeps():
    """`starts_from` and `frozen_groups` are what distill/run.py reads to build a run: each method's must be known."""
    import typing

    from gencast_rmmd.distill.base import FROZEN_SOURCES, StartsFrom
    from gencast_rmmd.distill.config import METHOD_SECTIONS
    for name, distiller in DISTILLERS.items():
        assert distiller.starts_from in typing.get_args(StartsFrom), name
        groups = distiller.frozen_groups if isinstance(distiller.frozen_groups, tuple) else ()
        assert set(groups) <= set(FROZEN_SOURCES), name
    assert {method for methods in METHOD_SECTIONS.values() for method in methods} <= set(DISTILLERS)


def test_distill_config_rejects_inconsistent_sections():
    from gencast_rmmd.config import validate_config
    from gencast_rmmd.errors import UserInputError
    for raw, phrase in [({"distill": {"method": "mmd", "reward_weight": [0.1, 0.3]}}, "no reward weight to sweep"),
                        ({"distill": {"method": "distil"}}, "unknown method"),
                        ({"distill": {"reward_samples": 1}}, "reward_samples"),
                        ({"distill": {"draft_steps": 5, "student": {"steps": 4}}}, "draft_steps")]:
        with pytest.raises(UserInputError, match=phrase):
            validate_config(raw, DistillConfig, "x.yaml")


def test_rollout_second_step_starts_from_each_members_own_sample_and_scores_the_two_step_trajectory():
    """`distill.rollout`: the first B M rows are the plain policy draw; the next B M start from each member's own
    finished 12 h sample, and the reward sees row + offset = the member's 24 h state in the condition's units."""
    from gencast_rmmd.distill.rewarded import draw_policy

    context = toy_context(method="rmmd", policy_noise="continuous", rollout=True)
    normalizer, members = context.space.normalizer, 2
    params = _toy(1.05)
    batch, key = toy_batch(seed=4, steps=2), jax.random.PRNGKey(5)
    draw = draw_policy(context, params, key, batch)
    rows = len(batch.inputs) * members
    first_key, _ = jax.random.split(key)
    prepared = context.space.prepare(batch)
    first = policy_state(context, params, first_key, repeat_members(prepared, members))
    policy = draw.policy
    assert policy.state.noisy.shape[0] == policy.repeated.conditioning.inputs.shape[0] == 2 * rows
    np.testing.assert_array_equal(policy.state.noisy[:rows], first.state.noisy)
    # Second step: the window moved on by the member's own sample (the toy normaliser: residual, scale 1, std 2).
    last = np.repeat(batch.inputs[..., 4:], members, axis=0)
    twelve = np.asarray(first.sample) + last
    moved = 2.0 * np.asarray(policy.repeated.conditioning.inputs[rows:])
    np.testing.assert_allclose(moved[..., :4], np.nan_to_num(last), atol=1e-6)
    np.testing.assert_allclose(moved[..., 4:], twelve, atol=1e-5)
    assert not np.allclose(moved[0::members], moved[1::members])              # members start apart
    np.testing.assert_allclose(policy.repeated.conditioning.forcings[rows:],
                               np.repeat(batch.forcings[:, 1], members, axis=0))
    # The reward's offset and targets: x0_hat of a second-step row is residual to the member's 12 h state;
    # + offset it is the 24 h state residual to the condition's own last frame, as the 24 h truth is.
    offset = np.asarray(policy.offset)
    np.testing.assert_array_equal(offset[:rows], 0.0)
    np.testing.assert_allclose(offset[rows:], first.sample, atol=0)
    x0_hat = np.random.default_rng(0).normal(size=offset[rows:].shape).astype(np.float32)
    state_24h = normalizer.denormalize_targets(x0_hat, twelve)
    np.testing.assert_allclose(x0_hat + offset[rows:], state_24h - last, atol=1e-5)
    target = draw.prepared
    assert target.clean.shape[0] == 2 * len(batch.inputs)
    valid = np.asarray(target.valid[2:])
    np.testing.assert_allclose(np.asarray(target.clean[2:])[valid],
                               (batch.targets[:, 1] - batch.inputs[..., 4:])[valid], atol=1e-6)
    assert not valid[0, :3, :, 1].any() and valid[1].all()                    # the 24 h truth's gaps are masked
    # With rollout off the draw is the plain one, with no offset.
    plain = draw_policy(toy_context(method="rmmd", policy_noise="continuous"), params, key, batch)
    assert plain.policy.offset is None and plain.policy.sample is None and plain.policy.state.noisy.shape[0] == rows


def test_rollout_is_only_for_on_policy_renoised_states_and_absent_from_dumps_when_off():
    from gencast_rmmd.config import config_to_dict, validate_config
    from gencast_rmmd.errors import UserInputError
    for distill in ({"method": "dmd", "policy_noise": "continuous"}, {"method": "rmmd", "policy_noise": "grid"},
                    {"method": "rmmd", "policy_noise": "continuous", "offline": True}):
        with pytest.raises(UserInputError, match="rollout: true scores a second step"):
            validate_config({"distill": {**distill, "rollout": True}}, DistillConfig, "x.yaml")
    assert "rollout" not in config_to_dict(DistillConfig())["distill"]
    on = DistillConfig(distill={"method": "rmmd", "policy_noise": "continuous", "rollout": True})
    assert config_to_dict(on)["distill"]["rollout"] is True


def test_the_policy_keys_select_one_typed_policy_and_offline_wins():
    from gencast_rmmd.distill.config import DistillSection, Policy
    assert DistillSection().policy is Policy.STOPPED_CHAIN
    assert DistillSection(policy_noise="continuous").policy is Policy.RENOISED
    assert DistillSection(offline=True, policy_noise="continuous").policy is Policy.OFFLINE
    assert DistillSection(offline=True).policy == "offline"      # a StrEnum: logs and configs read it as text


def test_pareto_spectrum_is_the_evaluation_spectrum_and_its_distance_ignores_a_common_scale():
    """sum_k P[c, k] is the area-weighted mean square of channel c (Parseval, the one spectrum of the project);
    a student equal to the teacher times 10^a in every channel is at distance |a|, blurring raises it."""
    from gencast_rmmd.distill.pareto import spectral_distance, zonal_spectrum
    rng = np.random.default_rng(3)
    fields = rng.normal(size=(4, 8, 16, 3))
    latitude = np.linspace(-78.75, 78.75, 8)
    weights = latitude_cell_weights(latitude)
    spectrum = zonal_spectrum(fields, weights)
    mean_square = np.einsum("j,njlc->c", weights, fields**2) / (weights.sum() * 4 * 16)
    np.testing.assert_allclose(spectrum.sum(axis=1), mean_square, rtol=1e-12)
    assert spectral_distance(zonal_spectrum(fields * 10.0, weights), spectrum) == pytest.approx(2.0, abs=1e-9)
    blurred = (fields + np.roll(fields, 1, axis=2) + np.roll(fields, -1, axis=2)) / 3.0
    assert spectral_distance(zonal_spectrum(blurred, weights), spectrum) > 0.3


# --------------------------------------------------------------------------- end to end


def _same_bits(a, b) -> bool:
    """Two parameter trees equal bit for bit."""
    return jax.tree.all(jax.tree.map(lambda x, y: x.tobytes() == y.tobytes(), a, b))


def _max_distance(a, b) -> float:
    """The largest absolute difference between two parameter trees' leaves."""
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, wb2_store, teacher_run):
    """configs/distill/tiny.yaml (2 MMD steps in RUN/phase1, then RMMD) swept over lambda = 0.1 and 1."""
    from gencast_rmmd.cli import main
    run = tmp_path_factory.mktemp("distill") / "sweep"
    assert main(["distill", "--config", str(TINY), "--teacher", str(teacher_run), "--data", str(wb2_store),
                 "--set", "distill.reward_weight=[0.1,1.0]", "--out", str(run)]) == 0
    return run


def test_a_lambda_list_gives_one_run_per_value_and_a_pareto_table(sweep_run):
    assert sorted(path.name for path in sweep_run.iterdir()) == [
        "lambda_0.1", "lambda_1", "pareto.json", "pareto.md", "phase1"]
    table = json.loads((sweep_run / "pareto.json").read_text())
    assert [row["lambda"] for row in table["runs"]] == [0.1, 1.0]
    assert table["teacher"]["nfe_per_step"] == 39 and table["teacher"]["student_nfe_per_step"] == 4
    for row in table["runs"]:
        assert row["step"] == 2 and np.isfinite(row["crps"]) and row["spectral_distance"] >= 0
    assert any(row["pareto_optimal"] for row in table["runs"])
    assert "| 0.1 | lambda_0.1 |" in (sweep_run / "pareto.md").read_text()


def test_student_and_aux_start_from_the_teacher_and_anchors_stay_frozen(sweep_run, teacher_run):
    from gencast_rmmd.distill.run import load_source
    from gencast_rmmd.training import load_checkpoint
    teacher = load_checkpoint(teacher_run).ema_params["denoiser"]
    source = load_source(teacher_run)
    phase1_task = DISTILLERS["mmd"](DistillContext(DistillConfig(), None, None, source.anchors, {}))
    started = phase1_task.init(None, None)
    for group in ("student", "aux"):
        assert jax.tree.all(jax.tree.map(np.array_equal, started.params[group], teacher))
    phase1 = load_checkpoint(sweep_run / "phase1")
    final = load_checkpoint(sweep_run / "lambda_0.1")
    assert phase1.meta["task"]["method"] == "mmd" and final.meta["task"]["method"] == "rmmd"
    # tiny.yaml is live RMMD: the aux model trains on in phase 2, so it is a parameter group, not a frozen tree
    assert sorted(final.frozen) == ["student_phase1", "teacher"] and sorted(final.params) == ["aux", "student"]
    assert _same_bits(phase1.frozen["teacher"], teacher) and _same_bits(final.frozen["teacher"], teacher)
    assert _same_bits(final.frozen["student_phase1"], phase1.params["student"])
    assert not _same_bits(final.params["student"], phase1.params["student"]), "the student must have trained"
    assert not _same_bits(final.params["aux"], phase1.params["aux"]), "the live aux must have trained in phase 2"
    started_at = load_checkpoint(sweep_run / "lambda_0.1" / "checkpoints" / "step_00000001")
    assert not _same_bits(started_at.params["aux"], final.params["aux"]), "the live aux must move at every step"
    assert final.meta["task"]["phase1_checkpoint"]["params_sha256"] == phase1.meta["params_sha256"]


def test_a_phase1_run_can_be_given_as_the_teacher(sweep_run, teacher_run):
    from gencast_rmmd.distill.run import load_source
    from gencast_rmmd.training import load_checkpoint
    source, phase1 = load_source(sweep_run / "phase1"), load_checkpoint(sweep_run / "phase1")
    assert source.phase1_checkpoint["params_sha256"] == phase1.meta["params_sha256"]
    assert source.teacher_checkpoint["params_sha256"] == load_checkpoint(teacher_run).meta["params_sha256"]
    assert jax.tree.all(jax.tree.map(np.array_equal, source.anchors.aux, phase1.params["aux"]))


def test_moment_matching_continues_from_a_phase1_run(run_cli, sweep_run, wb2_store, tmp_path):
    """`mmd` with --teacher a phase-1 run starts from its student AND aux (a continuation, same teacher)."""
    from gencast_rmmd.distill.run import load_source
    from gencast_rmmd.training import load_checkpoint
    out = tmp_path / "more_mmd"
    result = run_cli("distill", "--config", TINY, "--teacher", sweep_run / "phase1", "--data", wb2_store, "--set",
                     "distill.method=mmd", "--set", "train.steps=1", "--set", "train.learning_rate=1e-9",
                     "--out", out)
    assert result.code == 0, result.err
    phase1, continued = load_checkpoint(sweep_run / "phase1"), load_checkpoint(out)
    assert continued.meta["task"]["phase1_checkpoint"]["params_sha256"] == phase1.meta["params_sha256"]
    assert load_source(out).teacher_checkpoint == load_source(sweep_run / "phase1").teacher_checkpoint
    for group in ("student", "aux"):   # a 1e-9 step from the phase-1 weights, which are 2 steps from the teacher's
        assert _max_distance(continued.params[group], phase1.params[group]) < 1e-7
        assert _max_distance(phase1.params[group], phase1.frozen["teacher"]) > 1e-6


def test_a_phase2_run_continues_from_its_student_and_aux_with_its_phase1_anchors(run_cli, sweep_run, wb2_store,
                                                                                  tmp_path):
    """RMMD with --teacher a finished RMMD run: it starts from that run's student and live aux, keeps the frozen
    phase-1 student it anchored to (not the student it continues), and records both checkpoints."""
    from gencast_rmmd.training import load_checkpoint
    out = tmp_path / "continued"
    result = run_cli("distill", "--config", TINY, "--teacher", sweep_run / "lambda_1", "--data", wb2_store,
                     "--set", "train.steps=1", "--set", "train.learning_rate=1e-9", "--out", out)
    assert result.code == 0, result.err
    phase1, source, continued = (load_checkpoint(sweep_run / "phase1"), load_checkpoint(sweep_run / "lambda_1"),
                                 load_checkpoint(out))
    assert not (out / "phase1").exists(), "a continuation trains no phase 1 of its own"
    assert _same_bits(continued.frozen["student_phase1"], phase1.params["student"])
    assert _same_bits(continued.frozen["teacher"], source.frozen["teacher"])
    for group in ("student", "aux"):   # a 1e-9 step from the continued run's trees, which moved in its phase 2
        assert _max_distance(continued.params[group], source.params[group]) < 1e-7
        assert _max_distance(source.params[group], phase1.params[group]) > 1e-7
    task = continued.meta["task"]
    assert task["phase1_checkpoint"]["params_sha256"] == phase1.meta["params_sha256"]
    assert task["continues_checkpoint"]["params_sha256"] == source.meta["params_sha256"]


def test_a_phase2_run_continued_into_a_variant_needing_a_tree_it_lacks_exits_2(run_cli, sweep_run, wb2_store,
                                                                                tmp_path):
    """The frozen-aux variant anchors its moment term to the phase-1 aux, which a live run does not keep: refused
    with one line before anything is written; so is another method."""
    for extra, phrase in ((["--set", "distill.moment_reference=frozen"], "holds no aux_phase1 tree"),
                          (["--set", "distill.method=crps_only"], "cannot continue it")):
        out = tmp_path / "refused"
        result = run_cli("distill", "--config", TINY, "--teacher", sweep_run / "lambda_1", "--data", wb2_store,
                         "--out", out, *extra)
        assert result.code == 2 and phrase in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1
        assert not (out / "checkpoints").exists()


def test_a_phase1_package_installs_as_the_run_it_was_exported_from(run_cli, sweep_run, teacher_run, tmp_path):
    """`weights export` of an mmd run, `weights install --teacher`: phase 2 gets the same anchors, teacher record
    and phase-1 hash from the installed run as from the exported one; installing again changes nothing."""
    from gencast_rmmd.distill.run import load_source
    from gencast_rmmd.training import load_checkpoint
    package, installed = tmp_path / "phase1_package", tmp_path / "installed"
    assert run_cli("weights", "export", sweep_run / "phase1", "--out", package).code == 0
    verified = run_cli("weights", "verify", package, "--json")
    summary = json.loads(verified.out)
    assert verified.code == 0 and summary["kind"] == "phase1"
    assert summary["params_sha256"] == load_checkpoint(sweep_run / "phase1").meta["params_sha256"]
    result = run_cli("weights", "install", package, "--teacher", teacher_run, "--out", installed)
    assert result.code == 0, result.err
    original, shipped = load_source(sweep_run / "phase1"), load_source(installed)
    assert shipped.phase1_checkpoint["params_sha256"] == original.phase1_checkpoint["params_sha256"]
    assert shipped.teacher_checkpoint == original.teacher_checkpoint
    assert jax.tree.all(jax.tree.map(np.array_equal, shipped.anchors, original.anchors))
    assert shipped.card.model_dump() == original.card.model_dump()
    files = _run_files(installed)
    assert run_cli("weights", "install", package, "--teacher", teacher_run, "--out", installed).code == 0
    assert _run_files(installed) == files


@pytest.mark.parametrize("case", ["altered_weights", "other_teacher", "student_as_teacher", "config_not_teacher",
                                  "occupied_out"])
def test_a_phase1_package_is_refused_with_one_line_and_nothing_written(run_cli, sweep_run, teacher_run, tmp_path,
                                                                        case):
    package, out = tmp_path / "phase1_package", tmp_path / "installed"
    assert run_cli("weights", "export", sweep_run / "phase1", "--out", package).code == 0
    info = json.loads((package / "weights.json").read_text())
    teacher, extra = teacher_run, []
    if case == "altered_weights":   # one parameter changed: the npz no longer matches the recorded hash
        with np.load(package / "weights.npz") as stored:
            arrays = dict(stored)
        key = sorted(arrays)[0]
        arrays[key] = arrays[key] + 1.0
        np.savez(package / "weights.npz", **arrays)
    elif case == "other_teacher":   # the package says it was distilled from another denoiser
        info["teacher_sha256"] = "0" * 64
        (package / "weights.json").write_text(json.dumps(info))
    elif case == "student_as_teacher":
        teacher = sweep_run / "lambda_1"
    elif case == "config_not_teacher":
        extra = ["--config", TINY_TEACHER]
    else:
        out = sweep_run
    before = _run_files(out) if out.exists() else None
    args = ["weights", "install", package, "--out", out, *extra]
    result = run_cli(*args) if case == "config_not_teacher" else run_cli(*args, "--teacher", teacher)
    phrase = {"altered_weights": "sha256", "other_teacher": "distilled from", "student_as_teacher": "student",
              "config_not_teacher": "--teacher RUN", "occupied_out": "not empty"}[case]
    assert result.code == 2 and phrase in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert (_run_files(out) == before) if before is not None else not out.exists()


def test_a_phase2_package_installs_on_its_phase1_run_and_continues_and_forecasts_as_the_exported_run(
        run_cli, sweep_run, wb2_store, tmp_path):
    """`weights export` of an rmmd run, `weights install --teacher PHASE1_RUN`: the installed run has the same
    trained trees, the same frozen anchors and card; its forecast and a continuation from it are bit-identical
    to the exported run's; installing again changes nothing."""
    from gencast_rmmd.distill.run import load_source
    from gencast_rmmd.training import load_checkpoint
    package, installed = tmp_path / "phase2_package", tmp_path / "installed"
    assert run_cli("weights", "export", sweep_run / "lambda_1", "--out", package).code == 0
    summary = json.loads(run_cli("weights", "verify", package, "--json").out)
    assert summary["kind"] == "phase2"
    run_hash = json.loads((package / "weights.json").read_text())["run_params_sha256"]
    assert run_hash == load_checkpoint(sweep_run / "lambda_1").meta["params_sha256"]
    result = run_cli("weights", "install", package, "--teacher", sweep_run / "phase1", "--out", installed)
    assert result.code == 0, result.err
    original, shipped = load_checkpoint(sweep_run / "lambda_1"), load_checkpoint(installed)
    assert sorted(shipped.frozen) == sorted(original.frozen) and _same_bits(shipped.frozen, original.frozen)
    assert _same_bits(shipped.params, original.params) and shipped.meta["params_sha256"] == run_hash
    assert _same_bits(shipped.ema_params["student"], original.ema_params["student"])
    assert load_source(installed).card.model_dump() == load_source(sweep_run / "lambda_1").card.model_dump()
    outputs = {}
    for name, run in (("original", sweep_run / "lambda_1"), ("installed", installed)):
        forecast = tmp_path / f"{name}.nc"
        assert run_cli("forecast", "--checkpoint", run, "--data", wb2_store, "--init", "2001-01-08T00",
                       "--steps", "1", "--members", "2", "--out", forecast).code == 0
        continued = tmp_path / f"{name}_continued"
        assert run_cli("distill", "--config", TINY, "--teacher", run, "--data", wb2_store, "--set",
                       "distill.reward_weight=1.0", "--set", "train.steps=1", "--out", continued).code == 0
        outputs[name] = (xr.open_dataset(forecast)["temperature"].values,
                         load_checkpoint(continued).meta["params_sha256"])
    np.testing.assert_array_equal(outputs["original"][0], outputs["installed"][0])
    assert outputs["original"][1] == outputs["installed"][1]
    files = _run_files(installed)
    assert run_cli("weights", "install", package, "--teacher", sweep_run / "phase1", "--out", installed).code == 0
    assert _run_files(installed) == files


@pytest.mark.parametrize("case", ["teacher_not_phase1", "other_phase1", "other_anchors", "no_teacher_given"])
def test_a_phase2_package_is_refused_with_one_line_and_nothing_written(run_cli, sweep_run, teacher_run, tmp_path,
                                                                        case):
    package, out = tmp_path / "phase2_package", tmp_path / "installed"
    assert run_cli("weights", "export", sweep_run / "lambda_1", "--out", package).code == 0
    info = json.loads((package / "weights.json").read_text())
    phase1 = ["--teacher", sweep_run / "phase1"]
    if case == "teacher_not_phase1":
        phase1 = ["--teacher", teacher_run]
    elif case == "other_phase1":     # the package says it was distilled from another phase-1 student
        info["phase1_sha256"] = "0" * 64
    elif case == "other_anchors":
        info["anchors_sha256"] = "0" * 64
    else:
        phase1 = ["--config", TINY_TEACHER]
    (package / "weights.json").write_text(json.dumps(info))
    result = run_cli("weights", "install", package, "--out", out, *phase1)
    phrase = {"teacher_not_phase1": "is a teacher", "other_phase1": "distilled from",
              "other_anchors": "anchors", "no_teacher_given": "--teacher RUN"}[case]
    assert result.code == 2 and phrase in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()


def test_student_checkpoint_forecasts_and_inspects_with_k_nfe(run_cli, sweep_run, wb2_store, tmp_path):
    summary = json.loads(run_cli("inspect", sweep_run / "lambda_1", "--json").out)
    assert summary["kind"] == "student" and summary["nfe_per_step"] == 4 and summary["sampler"] == "student_kstep"
    assert summary["config"]["distill"]["reward_weight"] == 1.0 and summary["step"] == 2
    out = tmp_path / "student.nc"
    result = run_cli("forecast", "--checkpoint", sweep_run / "lambda_1", "--data", wb2_store, "--init",
                     "2001-01-08T00", "--steps", "2", "--members", "2", "--out", out)
    assert result.code == 0, result.err
    forecast = xr.open_dataset(out)
    assert forecast.attrs["nfe_per_step"] == 4 and forecast.attrs["model_kind"] == "student"
    assert forecast.attrs["sampler"] == "student_kstep" and np.all(np.isfinite(forecast["temperature"].values))
    assert float(forecast["temperature"].std("number").mean()) > 0.0, "members must differ"


def test_resuming_a_finished_sweep_changes_and_recomputes_nothing(run_cli, sweep_run, teacher_run, wb2_store,
                                                                  tmp_path):
    """Each phase resumes exactly through the generic loop (tests/test_training.py); here: the handoff re-reads
    the same phase-1 bytes, finished runs are not retrained and the Pareto table of the same params is kept."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_run, copy)
    result = run_cli("distill", "--config", TINY, "--teacher", teacher_run, "--data", wb2_store, "--set",
                     "distill.reward_weight=[0.1,1.0]", "--out", copy, "--resume")
    assert result.code == 0, result.err
    assert "already scores these runs" in result.err
    for run in ("phase1", "lambda_0.1", "lambda_1"):
        assert sorted(path.name for path in (copy / run / "checkpoints").iterdir()) == ["step_00000001",
                                                                                        "step_00000002"]
        hashes = [json.loads(run_cli("inspect", root / run, "--json").out)["params_sha256"]
                  for root in (copy, sweep_run)]
        assert hashes[0] == hashes[1]
    assert (copy / "pareto.json").read_text() == (sweep_run / "pareto.json").read_text()


@pytest.mark.parametrize("case", ["not_a_checkpoint", "a_config_file", "an_rmmd_student_for_mmd", "typo_set",
                                  "typo_file", "existing_out"])
def test_bad_input_exits_2_with_one_line(run_cli, sweep_run, teacher_run, wb2_store, tmp_path, case):
    teacher, config, extra, out = teacher_run, TINY, [], tmp_path / "out"
    phrase = {"not_a_checkpoint": "neither a checkpoint", "a_config_file": "neither a checkpoint",
              "an_rmmd_student_for_mmd": "cannot continue it", "typo_set": "distill.reward_weigth: unknown key",
              "typo_file": "distil: unknown key", "existing_out": "--resume"}[case]
    if case == "not_a_checkpoint":
        teacher = tmp_path / "empty"
        teacher.mkdir()
    elif case == "a_config_file":
        teacher = TINY
    elif case == "an_rmmd_student_for_mmd":
        teacher, extra = sweep_run / "lambda_1", ["--set", "distill.method=mmd"]
    elif case == "typo_set":
        extra = ["--set", "distill.reward_weigth=0.3"]
    elif case == "typo_file":
        config = tmp_path / "typo.yaml"
        config.write_text("distil:\n  method: mmd\n")
    else:
        out = sweep_run
    result = run_cli("distill", "--config", config, "--teacher", teacher, "--data", wb2_store, "--out", out, *extra)
    assert result.code == 2 and phrase in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- resume under the recorded config


def _run_files(run) -> dict[str, bytes]:
    """Every file under `run` (hidden ones included) and its bytes."""
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}


def test_distill_resume_under_another_reward_weight_exits_2_and_changes_nothing(run_cli, sweep_run, wb2_store,
                                                                                 tmp_path):
    """A student run (here from the phase-1 run as --teacher) refuses to resume with another distill.reward_weight:
    exit 2, one line naming the run and the key, every file unchanged. Re-pointing --data at a copy of the store
    and switching the progress bar off are no change: that resume goes on."""
    run = tmp_path / "student"
    common = ["distill", "--config", TINY, "--teacher", sweep_run / "phase1", "--out", run]
    assert run_cli(*common, "--data", wb2_store).code == 0
    before = _run_files(run)
    result = run_cli(*common, "--data", wb2_store, "--set", "distill.reward_weight=1.0", "--resume")
    assert result.code == 2 and result.err.strip().splitlines() == [
        f"error: {run} was started with another config (distill.reward_weight: 0.3 → 1.0); resume with the config "
        "it was started with, or use a new --out"], result.err
    assert _run_files(run) == before
    moved = tmp_path / "moved.zarr"
    shutil.copytree(wb2_store, moved)
    result = run_cli(*common, "--data", moved, "--set", "train.progress=false", "--resume")
    assert result.code == 0, result.err


def test_train_resume_under_another_learning_rate_exits_2_and_changes_nothing(run_cli, teacher_run, wb2_store,
                                                                              tmp_path):
    """`train --resume` with another learning rate: exit 2, the one error line names the run and the key (the
    omitted result-neutral train.checkpoint_every is not named), the run is unchanged; another store path and
    test split resume."""
    run = tmp_path / "teacher"
    shutil.copytree(teacher_run, run)
    before = _run_files(run)
    common = ["train", "--config", TINY_TEACHER, "--set", TWO_LEVELS, "--set", "train.steps=2", "--set",
              "train.warmup_steps=0", "--set", "model.processor.num_layers=1", "--out", run, "--resume"]
    result = run_cli(*common, "--data", wb2_store, "--set", "train.learning_rate=0.01")
    assert result.code == 2
    assert [line for line in result.err.splitlines() if line.startswith("error:")] == [
        f"error: {run} was started with another config (train.learning_rate: 0.001 → 0.01); resume with the "
        "config it was started with, or use a new --out"], result.err
    assert _run_files(run) == before
    moved = tmp_path / "moved.zarr"
    shutil.copytree(wb2_store, moved)
    result = run_cli(*common, "--data", moved, "--set", "data.splits.test.fraction=[0.9,1.0]")
    assert result.code == 0, result.err
