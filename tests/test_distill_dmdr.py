"""DMDR (`gencast_rmmd/distill/dmdr.py`): gradient paths in both stages, the fake score following the student, the
tilt weights exp(-r / beta) as derived (beta -> infinity is DMD exactly; a finite beta moves only the fake score),
stage 2 = DMD + lambda CRPS, the dynamic strategies' schedules and laws, the config section.

The structural tests reuse tests/test_distill.py's toy network inside a real `DistillContext`; end to end, DMDR runs
as a row of the tiny pipeline with every choice on validation (`configs/pipelines/tiny_select.yaml`,
tests/test_pipeline.py), from configs/distill/tiny_dmdr.yaml.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from gencast_rmmd.distill.base import Anchors, by_member
from gencast_rmmd.distill.config import DmdrConfig
from gencast_rmmd.distill.dmd import dmd_levels, fake_score_loss
from gencast_rmmd.distill.dmdr import cosine_decay, dmdr_schedule, guided_real, tilt_weights
from gencast_rmmd.distill.registry import DISTILLERS
from gencast_rmmd.distill.reward import member_fair_crps
from test_distill import _toy, rule_inputs, toy_batch, toy_context
from test_distill_dmd import _gradients, _nonzero, bitwise_same, check_fake_score_task, check_rule_gradients, \
    check_the_fake_score_follows_a_fixed_student, traced_applications

MOVED = {"student": _toy(1.1), "aux": _toy(0.9, b=0.15)}      # a fake score that differs from the teacher
ANCHORS = Anchors(teacher=_toy(1.0), student=_toy(1.1), aux=_toy(0.7))
STAGE_1, STAGE_2 = 0, 2                                        # steps of the toy context (train.steps 2)
NO_DYNAMICS = {"dynamic_steps": 0, "guidance_scale": 0.0}


def dmdr_task(anchors: Anchors = ANCHORS, fake_updates: int = 3, dmdr: dict | None = None, **distill):
    dmdr = {"tilt_steps": 2, "dynamic_steps": 1, **(dmdr or {})}
    context = toy_context(**{"method": "dmdr", "dmd": {"fake_updates": fake_updates}, "dmdr": dmdr, **distill})
    return DISTILLERS["dmdr"](dataclasses.replace(context, anchors=anchors))


def dmd_task(fake_updates: int = 3, **distill):
    context = toy_context(**{"method": "dmd", "dmd": {"fake_updates": fake_updates}, **distill})
    return DISTILLERS["dmd"](dataclasses.replace(context, anchors=ANCHORS))


def rule_gradients(task, params, frozen, key, inputs) -> list[dict]:
    return [_gradients(rule, params, frozen, key, inputs) for rule in task.update_rules()]


def assert_same_trees(a, b, exact: bool = True) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("anchor_weight,step", [(0.4, STAGE_1), (None, STAGE_2)])
def test_dmdr_groups_rules_and_gradient_paths(anchor_weight, step):
    """In both stages the fake score gets gradient only from its (tilt-weighted) denoising loss, the student only
    from its DMD term (+ CRPS in stage 2, + anchor), each through ONE differentiated call, even with DynaDG's real
    score built from the fake score's weights (step 0); no rule reaches a frozen tree. mu = None is 0 here (no
    frozen phase-1 student). Applications traced: the fake rule 1, the student rule 2 (the student; fake + real
    [+ phase-1 student] vmapped as one)."""
    task = dmdr_task(anchor_weight=anchor_weight, reward_weight=0.7)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(11)
    check_fake_score_task(task, state, ANCHORS, anchor_weight, student_repeats=1)
    inputs = rule_inputs(task, MOVED, state.frozen, key, batch, step)
    assert bool(inputs.schedule.tilting) == (step == STAGE_1)
    assert float(inputs.schedule.guidance) == (0.375 if step == STAGE_1 else 0.0)
    check_rule_gradients(task, MOVED, state.frozen, key, inputs)

    assert traced_applications(task, MOVED, state.frozen, key, batch, step) == [1, 2]


def test_beta_to_infinity_is_dmd_exactly_and_a_finite_beta_moves_only_the_fake_score():
    """Dynamic strategies off, mu = 0, the same key and draw. Stage 1 with beta = None (infinity) or 1e30: the fake
    rule's and the student rule's gradients are DMD's (lambda = 0) bit for bit, the tilt weights exactly 1. With
    beta = 0.02 the weights spread, the fake rule's gradient changes and the student's does not (the tilt acts
    through the fake score only). Stage 2: the student's gradient is DMD's with lambda, the reward's included."""
    state, batch, key = dmd_task().init(None, None), toy_batch(), jax.random.PRNGKey(3)
    frozen = state.frozen
    plain = dmd_task(reward_weight=0.0, anchor_weight=0.0)
    want = rule_gradients(plain, MOVED, frozen, key, rule_inputs(plain, MOVED, frozen, key, batch))
    assert all(_nonzero(gradient[group]) for gradient, group in zip(want, ("aux", "student")))
    for beta in (None, 1e30):
        tilted = dmdr_task(dmdr={"tilt_temperature": beta, **NO_DYNAMICS}, reward_weight=0.7)
        inputs = rule_inputs(tilted, MOVED, frozen, key, batch, STAGE_1)
        assert float(jnp.min(inputs.tilt_weights)) == float(jnp.max(inputs.tilt_weights)) == 1.0
        for got, expected in zip(rule_gradients(tilted, MOVED, frozen, key, inputs), want):
            assert_same_trees(got, expected)

    finite = dmdr_task(dmdr={"tilt_temperature": 0.02, **NO_DYNAMICS}, reward_weight=0.7)
    inputs = rule_inputs(finite, MOVED, frozen, key, batch, STAGE_1)
    assert float(jnp.max(inputs.tilt_weights)) > 1.05
    fake, student = rule_gradients(finite, MOVED, frozen, key, inputs)
    assert not np.allclose(jax.tree.leaves(fake["aux"])[0], jax.tree.leaves(want[0]["aux"])[0], rtol=1e-3)
    assert_same_trees(student, want[1])

    rewarded = dmd_task(reward_weight=0.7, anchor_weight=0.0)
    want_rewarded = rule_gradients(rewarded, MOVED, frozen, key, rule_inputs(rewarded, MOVED, frozen, key, batch))
    inputs = rule_inputs(finite, MOVED, frozen, key, batch, STAGE_2)
    assert float(jnp.max(inputs.tilt_weights)) == 1.0, "no tilt in stage 2"
    for got, expected in zip(rule_gradients(finite, MOVED, frozen, key, inputs), want_rewarded):
        assert_same_trees(got, expected, exact=False)
    assert not np.allclose(jax.tree.leaves(want_rewarded[1]["student"])[0],
                           jax.tree.leaves(want[1]["student"])[0], rtol=1e-3), "the reward moves the student"


def test_the_tilt_weights_are_exp_of_the_crps_shares_over_beta_normalised_per_condition():
    """w_i = exp(c_i / beta) / mean_group exp(c_j / beta), c_i member i's share of the weighted fair CRPS: against a
    direct computation (3 members, 2 conditions), mean 1 per condition, the worst member the heaviest; and the
    fake score's loss weighs each row by its w_i: L(w) = sum_i w_i L(e_i) for the unit weight vectors e_i."""
    beta, members = 0.05, 3
    task = dmdr_task(dmdr={"tilt_temperature": beta}, reward_samples=members)
    context, batch = task.context, toy_batch()
    prepared = context.space.prepare(batch)
    rng = np.random.default_rng(1)
    samples = jnp.asarray(np.repeat(np.asarray(prepared.clean), members, axis=0)
                          + 0.3 * rng.normal(size=(members * 2, *prepared.clean.shape[1:])), jnp.float32)
    got = np.asarray(tilt_weights(context, samples, prepared)).reshape(2, members)
    shares = np.asarray(member_fair_crps(by_member(samples, members), prepared.clean, prepared.valid,
                                         context.reward_norm), np.float64).T
    want = np.exp(shares / beta) / np.exp(shares / beta).mean(axis=1, keepdims=True)
    assert np.ptp(want) > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(got.mean(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(got.argmax(axis=1), shares.argmax(axis=1))

    from gencast_rmmd.distill.base import repeat_members
    repeated = repeat_members(prepared, members)
    key = jax.random.PRNGKey(0)
    loss = lambda weights: float(fake_score_loss(context, MOVED["aux"], ANCHORS.teacher, key, samples,  # noqa: E731
                                                 repeated, row_weights=jnp.asarray(weights, jnp.float32))[0])
    weights = rng.uniform(0.2, 2.0, size=samples.shape[0])
    units = [loss(np.eye(samples.shape[0])[row]) for row in range(samples.shape[0])]
    assert loss(weights) == pytest.approx(float(np.dot(weights, units)), rel=1e-5)


def test_the_dynamic_schedules_take_the_values_derived():
    """c_k = (1 + cos(pi k / K_dyn)) / 2 -> 0: gamma_k = gamma_0 c_k and (a_k, b_k) = 1 + ((a_0, b_0) - 1) c_k, exactly
    (1, 1) and 0 from K_dyn on; stage 1 for k < K_1; everything off with K_dyn = 0."""
    config = DmdrConfig(tilt_steps=200, dynamic_steps=100, guidance_scale=0.375, renoise_concentration=(4.0, 1.5))
    expected = {0: (True, 0.375, 4.0, 1.5), 50: (True, 0.1875, 2.5, 1.25), 100: (True, 0.0, 1.0, 1.0),
                150: (True, 0.0, 1.0, 1.0), 199: (True, 0.0, 1.0, 1.0), 200: (False, 0.0, 1.0, 1.0)}
    for step, (tilting, guidance, a, b) in expected.items():
        schedule = jax.jit(lambda k: dmdr_schedule(config, k))(jnp.int32(step))
        assert bool(schedule.tilting) == tilting, step
        np.testing.assert_allclose([float(schedule.guidance), *np.asarray(schedule.concentration)],
                                   [guidance, a, b], rtol=1e-6, atol=1e-7)
        if step >= 100:
            assert float(schedule.guidance) == 0.0 and list(np.asarray(schedule.concentration)) == [1.0, 1.0]
    np.testing.assert_allclose(float(cosine_decay(jnp.int32(25), 100)), 0.5 * (1 + np.cos(np.pi / 4)), rtol=1e-6)
    off = dmdr_schedule(DmdrConfig(dynamic_steps=0), jnp.int32(0))
    assert float(off.guidance) == 0.0 and list(np.asarray(off.concentration)) == [1.0, 1.0]


def test_dynars_favours_high_levels_then_is_dmds_law_draw_for_draw_and_dynadg_interpolates_the_weights():
    """DynaRS: with (a, b) = (4, 1.5) the renoise quantile's mean is q_lo + (q_hi - q_lo) 4 / 5.5 (uniform: the
    midpoint), levels higher than DMD's; at (1, 1) the levels are DMD's bit for bit. DynaDG: theta_T + gamma (psi -
    theta_T), the teacher itself at gamma = 0."""
    context = dmdr_task().context
    dmd = context.config.distill.dmd
    low, high = dmd.quantiles
    key, count = jax.random.PRNGKey(5), 20000
    to_quantile = lambda s: (s ** (1 / dmd.rho) - dmd.min_noise_level ** (1 / dmd.rho)) / (  # noqa: E731
        dmd.max_noise_level ** (1 / dmd.rho) - dmd.min_noise_level ** (1 / dmd.rho))
    plain = np.asarray(dmd_levels(context, key, count))
    early = np.asarray(dmd_levels(context, key, count, jnp.asarray([4.0, 1.5])))
    assert to_quantile(early).mean() == pytest.approx(low + (high - low) * 4 / 5.5, abs=0.01)
    assert to_quantile(plain).mean() == pytest.approx((low + high) / 2, abs=0.01)
    assert np.median(early) > 3 * np.median(plain)
    np.testing.assert_array_equal(np.asarray(dmd_levels(context, key, count, jnp.asarray([1.0, 1.0]))), plain)

    teacher, fake = _toy(1.0), _toy(0.6, b=0.3)
    assert bitwise_same(guided_real(teacher, fake, jnp.float32(0.0)), teacher)
    for got, t, f in zip(jax.tree.leaves(guided_real(teacher, fake, jnp.float32(0.375))), jax.tree.leaves(teacher),
                         jax.tree.leaves(fake)):
        np.testing.assert_allclose(got, t + 0.375 * (f - t), rtol=1e-6)


def test_the_fake_score_follows_a_fixed_student_through_the_loop():
    """Only the fake rule in the real train step (3 repeats, stage 1: tilt-weighted, DynaRS levels), a student moved
    from the teacher and held fixed: the fake score's loss on the student's samples drops and the DMD gap opens
    (`check_the_fake_score_follows_a_fixed_student`)."""
    check_the_fake_score_follows_a_fixed_student(
        dmdr_task(fake_updates=3, dmdr={"tilt_temperature": 0.1},
                  anchors=Anchors(teacher=_toy(1.0), student=_toy(1.3, b=0.2), aux=_toy(1.0))), "dmd_gap")


def test_dmdr_config_is_validated_its_section_is_its_own_and_the_shipped_ones_load():
    """Bad `distill.dmdr` values are one error naming the key; the section is absent from every other method's dump
    and refused when another method sets it; DMDR reads DMD's section; dmdr.yaml's phase 1, training and fake score
    are rmmd.yaml's and dmd.yaml's."""
    from gencast_rmmd.config import config_to_dict, validate_config
    from gencast_rmmd.distill.config import DistillConfig, load_distill_config
    from gencast_rmmd.errors import UserInputError
    for dmdr, phrase in [({"tilt_temperature": 0.0}, "tilt_temperature"), ({"tilt_steps": -1}, "tilt_steps"),
                         ({"dynamic_steps": 300}, "belong to stage 1"), ({"guidance_scale": 1.0}, "guidance_scale"),
                         ({"renoise_concentration": [0.5, 1.0]}, "must be >= 1"), ({"beta": 1.0}, "beta: unknown key")]:
        with pytest.raises(UserInputError, match=phrase):
            validate_config({"distill": {"method": "dmdr", "dmdr": dmdr}, "train": {"steps": 400}}, DistillConfig,
                            "x.yaml")
    with pytest.raises(UserInputError, match="stage 1 would not finish"):
        validate_config({"distill": {"method": "dmdr", "dmdr": {"tilt_steps": 20, "dynamic_steps": 10}},
                         "train": {"steps": 10, "warmup_steps": 0}}, DistillConfig, "x.yaml")
    with pytest.raises(UserInputError, match="distill.dmdr is read only by method dmdr, not dmd"):
        validate_config({"distill": {"method": "dmd", "dmdr": {"tilt_steps": 0, "dynamic_steps": 0}}}, DistillConfig,
                        "x.yaml")
    names = ("dmdr.yaml", "tiny_dmdr.yaml", "rmmd.yaml", "dmd.yaml", "gndm.yaml")
    shipped, tiny, rmmd, dmd, gndm = (load_distill_config(REPO / "configs" / "distill" / name) for name in names)
    assert shipped.distill.method == tiny.distill.method == "dmdr" and shipped.distill.dmdr.tilt_steps == 200
    phase1 = [config_to_dict(config.phase1()) for config in (shipped, rmmd)]
    assert [config["distill"].pop("anchor_weight") for config in phase1] == [0.0, 1.0]   # not read by mmd
    assert phase1[0] == phase1[1] and shipped.train == rmmd.train
    assert shipped.distill.dmd == dmd.distill.dmd and shipped.distill.anchor_weight == 0.0
    dumps = {name: config_to_dict(config)["distill"] for name, config in zip(names, (shipped, tiny, rmmd, dmd, gndm))}
    assert all("dmdr" in dumps[name] and "dmd" in dumps[name] for name in names[:2])
    assert not any("dmdr" in dumps[name] for name in names[2:])
    assert "dmdr" not in config_to_dict(shipped.phase1())["distill"]
