"""GNDM / GNDMR (`gencast_rmmd/distill/gndm.py`): gradient paths, the policy gradient and its importance ratio,
group normalisation (zero-mean, unit-std advantages per condition), the R_dm estimator, GNDMR = GNDM + the CRPS
term, the fake score following the student, the config section, and the CLI end to end.

The structural tests reuse tests/test_distill.py's toy network inside a real `DistillContext`; the end-to-end test
distills its 2-step tiny teacher with `configs/distill/tiny_gndm.yaml`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from gencast_rmmd.diffusion.base import per_example
from gencast_rmmd.diffusion.student_sampler import eta_scales, eta_step
from gencast_rmmd.distill.base import Anchors, by_member
from gencast_rmmd.distill.gndm import centred_log_ratio, clipped_surrogate, group_normalised, \
    transition_log_ratio
from gencast_rmmd.distill.registry import DISTILLERS
from gencast_rmmd.distill.reward import member_fair_crps, weighted_fair_crps
from gencast_rmmd.training import TrainConfig
from gencast_rmmd.training.state import init_train_state, make_optimizers, make_train_step
from test_distill import _toy, rule_inputs, toy_batch, toy_context
from test_distill_dmd import CountingNetwork, _nonzero, check_fake_score_run, check_fake_score_task, \
    check_rule_gradients, check_the_fake_score_follows_a_fixed_student, tiny_distill

TINY_GNDM = REPO / "configs" / "distill" / "tiny_gndm.yaml"
MOVED = {"student": _toy(1.1), "aux": _toy(0.9, b=0.15)}      # a fake score that differs from the teacher


def gndm_task(anchors: Anchors | None = None, fake_updates: int = 3, gndm: dict | None = None, **distill):
    context = toy_context(**{"method": "gndm", "dmd": {"fake_updates": fake_updates}, "gndm": gndm or {},
                             **distill})
    if anchors is not None:
        context = dataclasses.replace(context, anchors=anchors)
    return DISTILLERS["gndm"](context)


def weighted_mean(context, a, b, valid) -> np.ndarray:
    """<a, b>_W / sum_c w_c per row, in float64 numpy (the W-weighted mean over valid points and channels)."""
    area = np.broadcast_to(context.space.norm.latitude_weights[None, :, None, None], a.shape) * valid
    per_point = area / area.sum(axis=(1, 2), keepdims=True) * context.space.norm.channel_weights
    return (per_point * np.asarray(a, np.float64) * np.asarray(b, np.float64)).sum(axis=(1, 2, 3)) \
        / context.space.norm.channel_weights.sum()


@pytest.mark.parametrize("anchor_weight", [0.4, 0.0])
def test_gndm_groups_rules_and_gradient_paths(anchor_weight):
    """The fake score gets gradient only from its denoising loss (N repeats), the student only from the policy
    surrogate (and the anchor), each through ONE differentiated call; no rule reaches a frozen tree; the K-step
    rollout, the rewards and the advantages are in neither rule (computed once per step, without gradient)."""
    anchors = Anchors(teacher=_toy(1.0), student=_toy(1.1), aux=_toy(0.7))
    task = gndm_task(anchors=anchors, anchor_weight=anchor_weight, gndm={"policy_updates": 2})
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(11)
    check_fake_score_task(task, state, anchors, anchor_weight, student_repeats=2)
    inputs = rule_inputs(task, MOVED, state.frozen, key, batch)
    assert float(jnp.abs(inputs.dm_reward).max()) > 0.0 and float(jnp.abs(inputs.advantages).max()) > 0.0
    check_rule_gradients(task, MOVED, state.frozen, key, inputs)

    # Network applications traced: the fake rule 1 (beta = 0, no teacher), the student rule 1 (+ the frozen
    # phase-1 student for the anchor); the step's inputs 3 (the chain's scan body, its last call, fake + teacher).
    network = CountingNetwork()
    counted = DISTILLERS["gndm"](dataclasses.replace(task.context, network=network))
    inputs = rule_inputs(counted, MOVED, state.frozen, key, batch)
    assert len(network.calls) == 3, network.calls
    for rule, expected in zip(counted.update_rules(), (1, 2 if anchor_weight else 1)):
        network.calls.clear()
        jax.grad(lambda p, rule=rule: rule.loss({**MOVED, **p}, state.frozen, key, inputs)[0])(
            {group: MOVED[group] for group in rule.groups})
        assert len(network.calls) == expected, (rule.name, network.calls)


def test_the_student_gradient_is_the_group_baselined_policy_gradient_of_the_recorded_step():
    """At the rollout's params (rho = 1): grad L = -(1/BG) sum_i A_i grad log pi_theta(x_{j+1} | x_j), with
    log pi the W-weighted Gaussian log density of the recorded eta-step (x_{j+1} rebuilt from x_j, z_j and the
    rollout's own denoised estimate), written here directly from the sampler's step."""
    task = gndm_task(anchor_weight=0.0, reward_samples=3)
    context, state, key = task.context, task.init(None, None), jax.random.PRNGKey(5)
    params = {**state.params, **MOVED}
    inputs = rule_inputs(task, params, state.frozen, key, toy_batch())
    t, valid, eta = inputs.transition, inputs.repeated.valid, context.config.distill.student.eta
    np.testing.assert_array_equal(np.asarray(inputs.advantages).reshape(-1, 3).sum(axis=1).round(5), 0.0)
    following = eta_step(t.state, t.denoised, t.level, t.next_level, eta, t.noise)
    kept, gamma = (per_example(scale, t.state) for scale in eta_scales(t.level, t.next_level, eta))
    total_weight = float(context.space.norm.channel_weights.sum())

    def direct(student):
        denoised = context.denoiser(student)(t.state, t.level, inputs.repeated.conditioning)
        error = following - (denoised + kept * (t.state - denoised) / per_example(t.level, t.state))
        log_density = -context.space.norm.inner(error / gamma, error / gamma, valid) / (2.0 * total_weight)
        return -jnp.mean(jax.lax.stop_gradient(inputs.advantages) * log_density)

    want = jax.grad(direct)(params["student"])
    got = jax.grad(lambda s: task.update_rules()[-1].loss({**params, "student": s}, state.frozen, key,
                                                          inputs)[0])(params["student"])
    assert _nonzero(got)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-7)


def test_the_importance_ratio_is_the_transition_density_ratio_and_one_at_the_rollout():
    """log rho = log pi_theta - log pi_old of the recorded step, against a float64 numpy computation, for a
    student moved away from the rollout's; exactly 0 at the rollout's own estimate."""
    task = gndm_task()
    context, state = task.context, task.init(None, None)
    inputs = rule_inputs(task, {**state.params, **MOVED}, state.frozen, jax.random.PRNGKey(2), toy_batch())
    t, valid, eta = inputs.transition, np.asarray(inputs.repeated.valid), context.config.distill.student.eta
    assert float(jnp.abs(transition_log_ratio(context, t.denoised, t, eta, inputs.repeated.valid)).max()) == 0.0
    moved = context.denoiser(_toy(1.15, b=0.12))(t.state, t.level, inputs.repeated.conditioning)
    got = transition_log_ratio(context, moved, t, eta, inputs.repeated.valid)

    x, z, old, new = (np.asarray(a, np.float64) for a in (t.state, t.noise, t.denoised, moved))
    s, s_next = np.asarray(t.level, np.float64)[:, None, None, None], np.asarray(t.next_level, np.float64)
    gamma = eta * s_next * np.sqrt(1.0 - (s_next / s[:, 0, 0, 0]) ** 2)
    kept = np.sqrt(s_next ** 2 - gamma ** 2)[:, None, None, None]
    mean = lambda d: d + kept * (x - d) / s  # noqa: E731
    following = mean(old) + gamma[:, None, None, None] * z
    log_density = lambda d: -weighted_mean(context, following - mean(d), following - mean(d), valid) \
        / (2.0 * gamma ** 2)  # noqa: E731
    want = log_density(new) - log_density(old)
    assert np.abs(want).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)


def test_the_loop_reuses_one_rollout_for_e_policy_updates_with_their_importance_ratios():
    """In the real train step with E = 2 (GNDMR, so the first step's advantages are not zero while the fake score
    is still the teacher): the second policy update sees the student moved by the first, rho != 1 (the logged
    ratio is the mean over the two updates); with E = 1 it is exactly 1."""
    ratios = []
    for updates in (1, 2):
        task = gndm_task(anchor_weight=0.0, gndm={"policy_updates": updates, "crps_reward_weight": 1.0})
        rules = task.update_rules()
        optimizers = make_optimizers(rules, TrainConfig(steps=5, learning_rate=0.05, warmup_steps=0,
                                                        weight_decay=0.0))
        state = init_train_state(task.init(None, None), rules, optimizers)
        _, metrics = jax.jit(make_train_step(rules, optimizers, 0.9, task.step_inputs))(state, toy_batch(),
                                                                                        jax.random.PRNGKey(3))
        assert int(metrics["skipped"]) == 0
        ratios.append(float(metrics["student/ratio"]))
    assert ratios[0] == 1.0 and abs(ratios[1] - 1.0) > 1e-6, ratios


def test_the_clip_stops_the_gradient_only_where_the_ratio_has_moved_past_it_in_the_advantages_direction():
    """PPO's clipped surrogate: rows with rho > 1 + eps and A > 0 (or rho < 1 - eps and A < 0) give no gradient,
    the others give -A rho / n; the clipped fraction counts the first kind."""
    log_ratio = jnp.log(jnp.asarray([1.5, 1.5, 0.5, 0.5, 1.1, 0.9]))
    advantages = jnp.asarray([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    gradient = jax.grad(lambda r: clipped_surrogate(r, advantages, 0.2)[0])(log_ratio)
    ratio, rows = np.exp(np.asarray(log_ratio)), len(advantages)
    want = np.where([False, True, True, False, True, True], -np.asarray(advantages) * ratio / rows, 0.0)
    np.testing.assert_allclose(gradient, want, rtol=1e-6)
    assert float(clipped_surrogate(log_ratio, advantages, 0.2)[1]) == pytest.approx(2 / 6)


@pytest.mark.parametrize("normalise_std", [True, False])
def test_group_normalisation_gives_zero_mean_and_unit_std_advantages_per_condition(normalise_std):
    """Every condition's advantages sum to 0; with the std each group's (population) std is 1, without it the
    group's spread is the reward's own; a group of equal rewards gets zeros, not amplified rounding noise. The
    same holds for the advantages a training step actually uses (GNDMR: each reward normalised on its own)."""
    rng = np.random.default_rng(3)
    members = 4
    rewards = rng.normal(size=(5, members)) * rng.uniform(0.01, 100.0, size=(5, 1)) + rng.normal(size=(5, 1)) * 50
    rewards[2] = 7.25                                                    # a group with no information
    got = np.asarray(group_normalised(jnp.asarray(rewards.reshape(-1), jnp.float32), members,
                                      normalise_std)).reshape(-1, members)
    np.testing.assert_allclose(got.mean(axis=1), 0.0, atol=1e-5)
    assert np.all(got[2] == 0.0)
    informative = np.delete(np.arange(5), 2)
    want_std = 1.0 if normalise_std else rewards[informative].std(axis=1)
    np.testing.assert_allclose(got[informative].std(axis=1), want_std, rtol=1e-4)

    task = gndm_task(reward_samples=3, gndm={"normalise_std": normalise_std, "crps_reward_weight": 0.5})
    state = task.init(None, None)
    inputs = rule_inputs(task, {**state.params, **MOVED}, state.frozen, jax.random.PRNGKey(9), toy_batch())
    advantages = np.asarray(inputs.advantages).reshape(-1, 3)
    np.testing.assert_allclose(advantages.sum(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(inputs.dm_reward).reshape(-1, 3).sum(axis=1), 0.0, atol=1e-5)
    parts = [np.asarray(group_normalised(r, 3, normalise_std)) for r in (inputs.dm_reward, inputs.crps_reward)]
    np.testing.assert_allclose(inputs.advantages, parts[0] + 0.5 * parts[1], rtol=1e-5, atol=1e-6)
    if normalise_std:
        for part in parts:
            np.testing.assert_allclose(part.reshape(-1, 3).std(axis=1), 1.0, rtol=1e-4)


def test_the_centred_log_ratio_is_exact_for_a_quadratic_log_ratio():
    """R(x) = -(k_g/2) ||x - a_g||^2_W per group g (slope -k_g (x - a_g)): the estimate is R(x_i) less its group
    mean exactly, masked points and channel weights included."""
    context = toy_context(method="gndm", reward_samples=3)
    rng = np.random.default_rng(1)
    groups, members = 2, 3
    shape = (groups * members, len(context.space.latitude), len(context.space.longitude), 4)
    points = rng.normal(size=shape)
    centre = np.repeat(rng.normal(size=(groups, *shape[1:])), members, axis=0)
    k = np.repeat(np.asarray([0.5, 3.0]), members)[:, None, None, None]
    valid = np.ones(shape, bool)
    valid[:members, :3, :, 1] = False
    slopes = -k * (points - centre)
    got = centred_log_ratio(context, jnp.asarray(slopes, jnp.float32), jnp.asarray(points, jnp.float32),
                            jnp.asarray(valid), members)
    total = context.space.norm.channel_weights.sum()
    value = -0.5 * k[:, 0, 0, 0] * weighted_mean(context, points - centre, points - centre, valid) * total
    want = (value.reshape(groups, members) - value.reshape(groups, members).mean(axis=1, keepdims=True)).ravel()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_member_crps_shares_average_to_the_weighted_fair_crps():
    """The per-member CRPS reward of GNDMR: mean over members = RMMD's weighted fair CRPS, per condition."""
    context = toy_context()
    rng = np.random.default_rng(4)
    shape = (2, len(context.space.latitude), len(context.space.longitude), 4)
    samples, target = rng.normal(size=(3, *shape)).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    valid = np.ones(shape, bool)
    valid[1, :4, :, 2] = False
    args = (jnp.asarray(samples), jnp.asarray(target), jnp.asarray(valid), context.reward_norm)
    shares = np.asarray(member_fair_crps(*args))
    assert shares.shape == (3, 2) and np.ptp(shares, axis=0).min() > 0.0
    np.testing.assert_allclose(shares.mean(axis=0), weighted_fair_crps(*args), rtol=1e-5)


def test_gndmr_is_gndm_plus_the_crps_term():
    """Same rollout (same key): GNDMR's advantages are GNDM's plus w_R N(R_crps), and its student gradient is
    GNDM's plus w_R times the gradient of the surrogate with the CRPS advantages alone (linear in A at rho = 1)."""
    weight = 0.7
    gndm, gndmr = gndm_task(anchor_weight=0.3), gndm_task(anchor_weight=0.3, gndm={"crps_reward_weight": weight})
    state, key, batch = gndm.init(None, None), jax.random.PRNGKey(13), toy_batch()
    params = {**state.params, **MOVED}
    plain, rewarded = (rule_inputs(task, params, state.frozen, key, batch) for task in (gndm, gndmr))
    members = gndm.context.config.distill.reward_samples
    crps_advantages = group_normalised(plain.crps_reward, members, True)
    np.testing.assert_allclose(rewarded.advantages, plain.advantages + weight * crps_advantages, rtol=1e-5,
                               atol=1e-6)
    crps_only = rewarded._replace(advantages=crps_advantages)
    np.testing.assert_allclose(-jnp.mean(plain.crps_reward),
                               gndm.context.weighted_crps(by_member(plain.samples, members),
                                                          *_truth(gndm, batch)), rtol=1e-5)

    def gradient(task, inputs, anchor=True):
        rule = (task if anchor else gndm_task(anchor_weight=0.0)).update_rules()[-1]
        return jax.grad(lambda s: rule.loss({**params, "student": s}, state.frozen, key, inputs)[0])(
            params["student"])

    total, base, term = gradient(gndmr, rewarded), gradient(gndm, plain), gradient(gndm, crps_only, anchor=False)
    assert _nonzero(term)
    for got, a, b in zip(jax.tree.leaves(total), jax.tree.leaves(base), jax.tree.leaves(term)):
        np.testing.assert_allclose(got, a + weight * b, rtol=1e-4, atol=1e-7)


def _truth(task, batch):
    prepared = task.context.space.prepare(batch)
    return prepared.clean, prepared.valid


def test_the_fake_score_follows_a_fixed_student_through_the_loop():
    """Only the fake rule in the real train step (3 repeats), a student moved from the teacher and held fixed:
    the fake score's loss on the student's samples drops and the R_dm gap opens
    (`check_the_fake_score_follows_a_fixed_student`)."""
    check_the_fake_score_follows_a_fixed_student(
        gndm_task(fake_updates=3, anchor_weight=0.0,
                  anchors=Anchors(teacher=_toy(1.0), student=_toy(1.3, b=0.2), aux=_toy(1.0))), "dm_gap")


def test_gndm_config_is_validated_its_section_is_its_own_and_the_shipped_ones_load():
    """Bad `distill.gndm` values are one error naming the key; a deterministic or one-step student and offline
    states are refused; the section is absent from every other method's dump (their run and stage hashes do not
    change) and refused when another method sets it; gndm.yaml's phase 1 and training are rmmd.yaml's."""
    from gencast_rmmd.config import config_to_dict, validate_config
    from gencast_rmmd.distill.config import DistillConfig, load_distill_config
    from gencast_rmmd.errors import UserInputError
    for distill, phrase in [({"gndm": {"clip": 0.0}}, "clip"), ({"gndm": {"policy_updates": 0}}, "policy_updates"),
                            ({"gndm": {"crps_reward_weight": -1.0}}, "crps_reward_weight"),
                            ({"gndm": {"groups": 2}}, "groups: unknown key"),
                            ({"student": {"eta": 0.0}}, "stochastic student step"),
                            ({"student": {"steps": 1}}, "stochastic student step"),
                            ({"offline": True}, "offline")]:
        with pytest.raises(UserInputError, match=phrase):
            validate_config({"distill": {"method": "gndm", **distill}}, DistillConfig, "x.yaml")
    with pytest.raises(UserInputError, match="distill.gndm is read only by method gndm, not dmd"):
        validate_config({"distill": {"method": "dmd", "gndm": {"clip": 0.1}}}, DistillConfig, "x.yaml")
    names = ("gndm.yaml", "tiny_gndm.yaml", "rmmd.yaml", "dmd.yaml", "tiny_dmd.yaml", "crps_only.yaml")
    shipped, tiny, rmmd, dmd, tiny_dmd, crps_only = (load_distill_config(REPO / "configs" / "distill" / name)
                                                     for name in names)
    assert shipped.distill.method == tiny.distill.method == "gndm" and shipped.distill.gndm.policy_updates == 2
    assert config_to_dict(shipped.phase1()) == config_to_dict(rmmd.phase1()) and shipped.train == rmmd.train
    assert shipped.distill.dmd == dmd.distill.dmd
    dumps = {name: config_to_dict(config)["distill"] for name, config in zip(names, (shipped, tiny, rmmd, dmd,
                                                                                     tiny_dmd, crps_only))}
    assert all("gndm" in dumps[name] for name in names[:2])
    assert not any("gndm" in dumps[name] for name in names[2:])
    assert "dmd" in dumps["gndm.yaml"] and "dmd" not in dumps["rmmd.yaml"]
    assert "gndm" not in config_to_dict(shipped.phase1())["distill"]
    gndmr = load_distill_config(REPO / "configs" / "distill" / "gndm.yaml", ["distill.gndm.crps_reward_weight=1.0"])
    assert gndmr.distill.gndm.crps_reward_weight == 1.0


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gndm_run(tmp_path_factory, wb2_store, teacher_run):
    """configs/distill/tiny_gndm.yaml from the tiny teacher: 2 MMD steps in RUN/phase1, then 3 GNDM steps."""
    return tiny_distill(tmp_path_factory, TINY_GNDM, teacher_run, wb2_store)


def test_gndm_cli_run_trains_both_networks_and_forecasts(run_cli, gndm_run, teacher_run, wb2_store,
                                                         tmp_path):
    """The tiny GNDM run (2 fake-score and 2 policy updates per step) writes a 3-step gndm checkpoint whose fake
    score trained away from the teacher and whose student moved from phase 1; it forecasts with K = 4 calls."""
    check_fake_score_run(run_cli, gndm_run, "gndm", teacher_run, wb2_store, tmp_path)
