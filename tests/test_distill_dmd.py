"""DMD (`gencast_rmmd/distill/dmd.py`): gradient paths, the fake score following the student, the zero gradient at
the teacher, the paper's normalised gradient, the two time-scale rule in the loop, and the CLI end to end.

The structural tests reuse tests/test_distill.py's toy network inside a real `DistillContext`; the end-to-end test
distills its 2-step tiny teacher with `configs/distill/tiny_dmd.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr

from conftest import REPO
from gencast_rmmd.distill.base import Anchors
from gencast_rmmd.distill.dmd import dmd_surrogate
from gencast_rmmd.distill.moment_matching import NoisyState
from gencast_rmmd.distill.registry import DISTILLERS
from gencast_rmmd.training import TrainConfig
from gencast_rmmd.training.state import init_train_state, make_optimizers, make_train_step
from test_distill import ToyNetwork, _toy, differentiated_calls, fit_and_gap, rule_inputs, toy_batch, \
    toy_context

TINY_DMD = REPO / "configs" / "distill" / "tiny_dmd.yaml"


def dmd_task(fake_updates: int = 3, anchors: Anchors | None = None, **distill):
    context = toy_context(**{"method": "dmd", "dmd": {"fake_updates": fake_updates}, **distill})
    if anchors is not None:
        context = dataclasses.replace(context, anchors=anchors)
    return DISTILLERS["dmd"](context)


def _nonzero(tree) -> bool:
    return any(float(jnp.abs(leaf).max()) > 0.0 for leaf in jax.tree.leaves(tree))


def _gradients(rule, params, frozen, key, inputs) -> dict:
    """The rule loss's gradient with respect to every tree, trainable and frozen (`frozen.<name>`)."""
    everything = {**params, **{f"frozen.{name}": tree for name, tree in frozen.items()}}

    def loss(trees):
        trainable = {name: tree for name, tree in trees.items() if not name.startswith("frozen.")}
        fixed = {name[len("frozen."):]: tree for name, tree in trees.items() if name.startswith("frozen.")}
        return rule.loss(trainable, fixed, key, inputs)[0]

    return jax.grad(loss)(everything)


@dataclasses.dataclass(frozen=True)
class CountingNetwork(ToyNetwork):
    """The toy network, counting the applications it is traced through (a vmapped group of calls counts once)."""

    calls: list = dataclasses.field(default_factory=list)

    def apply(self, params, x, sigma, conditioning):
        self.calls.append(x.shape)
        return super().apply(params, x, sigma, conditioning)


def check_fake_score_task(task, state, anchors: Anchors, anchor_weight: float, student_repeats: int) -> None:
    """What every fake-score method (DMD, GNDM) is: groups student and aux, the fake score starting at the
    teacher; frozen teacher (and the phase-1 student with an anchor); rules [aux x 3, student x repeats]."""
    assert sorted(state.params) == ["aux", "student"]
    assert sorted(state.frozen) == (["student_phase1", "teacher"] if anchor_weight else ["teacher"])
    assert jax.tree.all(jax.tree.map(np.array_equal, state.params["aux"], anchors.teacher)), "fake starts at real"
    fake_rule, student_rule = task.update_rules()
    assert (fake_rule.name, fake_rule.groups, fake_rule.repeats) == ("aux", ("aux",), 3)
    assert (student_rule.name, student_rule.groups, student_rule.repeats) == ("student", ("student",),
                                                                              student_repeats)


def traced_applications(task, params, frozen, key, batch, step: int = 0) -> list[int]:
    """Network applications traced by each rule's gradient (a vmapped group of calls counts once), the step's
    shared inputs computed outside the rules as the loop does."""
    network = CountingNetwork()
    counted = DISTILLERS[task.context.config.distill.method](dataclasses.replace(task.context, network=network))
    inputs = rule_inputs(counted, params, frozen, key, batch, step)
    counts = []
    for rule in counted.update_rules():
        network.calls.clear()
        jax.grad(lambda p, rule=rule: rule.loss({**params, **p}, frozen, key, inputs)[0])(
            {group: params[group] for group in rule.groups})
        counts.append(len(network.calls))
    return counts


def check_the_fake_score_follows_a_fixed_student(task, gap_metric: str) -> None:
    """Only the fake rule in the real train step, a student moved from the teacher and held fixed: after 10 steps
    the fake score's denoising loss on the student's samples (fixed evaluation draws) has dropped, the gap
    `gap_metric` (zero while fake = teacher) has opened, and the student and teacher are bit-for-bit the same."""
    _, _, state, step = fake_rule_only(task)
    batch, root = toy_batch(), jax.random.PRNGKey(7)
    keys = [jax.random.PRNGKey(100 + k) for k in range(4)]
    fit_before, gap_before = fit_and_gap(task, state.params, state.frozen, keys, batch, gap_metric)
    start = state
    for _ in range(10):
        state, metrics = step(state, batch, root)
    fit_after, gap_after = fit_and_gap(task, state.params, state.frozen, keys, batch, gap_metric)
    assert bitwise_same(state.params["student"], start.params["student"]) and bitwise_same(state.frozen, start.frozen)
    assert not bitwise_same(state.params["aux"], start.params["aux"])
    assert int(metrics["skipped"]) == 0
    assert gap_before == 0.0 and gap_after > 1e-3, gap_after
    assert fit_after < 0.9 * fit_before, (fit_before, fit_after)


def check_rule_gradients(task, params, frozen, key, inputs) -> None:
    """Each rule's loss has gradient in its own groups only (no other group, no frozen tree), through ONE
    differentiated network call."""
    for rule in task.update_rules():
        gradient = _gradients(rule, params, frozen, key, inputs)
        for name, tree in gradient.items():
            assert _nonzero(tree) == (name in rule.groups), (rule.name, name)
        assert differentiated_calls(lambda p, rule=rule: rule.loss({**params, **p}, frozen, key, inputs),
                                    {group: params[group] for group in rule.groups}) == 1


@pytest.mark.parametrize("anchor_weight", [0.4, 0.0])
def test_dmd_groups_rules_and_gradient_paths(anchor_weight):
    """The student gets gradient from the DMD term and from the reward, through ONE differentiated student call;
    the fake score only from its own denoising loss (N repeats of one rule); no rule reaches a frozen tree."""
    anchors = Anchors(teacher=_toy(1.0), student=_toy(1.1), aux=_toy(0.7))
    task = dmd_task(anchors=anchors, reward_weight=0.7, anchor_weight=anchor_weight)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(11)
    check_fake_score_task(task, state, anchors, anchor_weight, student_repeats=1)
    params = {"student": _toy(1.1), "aux": _toy(0.9, b=0.15)}       # a fake score that differs from the teacher
    inputs = rule_inputs(task, params, state.frozen, key, batch)
    check_rule_gradients(task, params, state.frozen, key, inputs)

    # Each term alone moves the student: DMD (reward and anchor off) and the reward (fake = real: DMD term zero).
    dmd_only = dmd_task(anchors=anchors, reward_weight=0.0, anchor_weight=0.0)
    loss, metrics = dmd_only.update_rules()[-1].loss(params, {"teacher": anchors.teacher}, key, inputs)
    assert float(metrics["dmd_term"]) > 0.0 and float(loss) == pytest.approx(float(metrics["dmd_term"]))
    assert _nonzero(_gradients(dmd_only.update_rules()[-1], params, {"teacher": anchors.teacher}, key,
                               inputs)["student"])
    rewarded = dmd_task(anchors=anchors, reward_weight=0.7, anchor_weight=0.0)
    gradient = _gradients(rewarded.update_rules()[-1], {**params, "aux": anchors.teacher},
                          {"teacher": anchors.teacher}, key, inputs)
    assert _nonzero(gradient["student"]) and not _nonzero(gradient["aux"])

    # A counting wrapper: the student rule applies networks twice (the student; fake + teacher [+ phase-1
    # student] vmapped as one), the fake rule once (beta = 0: no teacher call); the policy chain is not in either.
    assert traced_applications(task, params, state.frozen, key, batch) == [1, 2]


def test_the_dmd_gradient_is_zero_when_the_fake_score_is_the_teacher():
    """psi started from the teacher and not yet trained: fake = real at every x_s, so the DMD term and its gradient
    are exactly zero whatever the student (here one away from the teacher), and so is the whole loss's gradient
    with the reward and the anchor off; with the reward on, the gradient is the reward's alone."""
    anchors = Anchors(teacher=_toy(1.0), student=_toy(1.0), aux=_toy(0.8))
    task = dmd_task(anchors=anchors, reward_weight=0.0, anchor_weight=0.0)
    state, batch, key = task.init(None, None), toy_batch(), jax.random.PRNGKey(4)
    params = {**state.params, "student": _toy(1.2, b=0.05)}
    inputs = rule_inputs(task, params, state.frozen, key, batch)
    student_rule = task.update_rules()[-1]
    loss, metrics = student_rule.loss(params, state.frozen, key, inputs)
    assert float(loss) == 0.0 and float(metrics["dmd_gap"]) == 0.0 and float(metrics["dmd_normaliser"]) > 0.0
    gradient = _gradients(student_rule, params, state.frozen, key, inputs)
    assert not any(_nonzero(tree) for tree in gradient.values())

    rewarded = dmd_task(anchors=anchors, reward_weight=0.7, anchor_weight=0.0)
    with_reward = _gradients(rewarded.update_rules()[-1], params, state.frozen, key, inputs)["student"]
    crps_only = DISTILLERS["crps_only"](rewarded.context)
    reward = jax.grad(lambda p: 0.7 * crps_only.objective({**params, **p}, state.frozen, key, inputs.draw.policy,
                                                          inputs.draw.prepared)[0])({"student": params["student"]})
    for got, want in zip(jax.tree.leaves(with_reward), jax.tree.leaves(reward["student"])):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_the_student_gradient_is_the_normalised_score_difference_in_the_weighted_norm():
    """d/dx of the DMD term = W (fake - real) / mean_W|x - real| per example (DMD eq. 8 with the paper's weight),
    W the area x channel weights over valid points: checked against a direct numpy computation."""
    context = toy_context(method="dmd")
    rng = np.random.default_rng(0)
    shape = (3, len(context.space.latitude), len(context.space.longitude), 4)
    samples, fake, real = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    valid = np.ones(shape, bool)
    valid[0, :3, :, 1] = False
    noisy = NoisyState(samples, jnp.asarray([0.1, 1.0, 10.0], jnp.float32))
    gradient = jax.grad(lambda x: dmd_surrogate(context, x, fake, real, noisy, jnp.asarray(valid))[0])(samples)

    area = np.broadcast_to(context.space.norm.latitude_weights[None, :, None, None], shape) * valid
    per_point = area / area.sum(axis=(1, 2), keepdims=True) * context.space.norm.channel_weights   # W, per example
    x, f, r = np.asarray(samples, np.float64), np.asarray(fake, np.float64), np.asarray(real, np.float64)
    mean_abs = (per_point * np.abs(x - r)).sum(axis=(1, 2, 3)) / context.space.norm.channel_weights.sum()
    expected = per_point * (f - r) / mean_abs[:, None, None, None] / shape[0]     # the batch mean's 1/B
    np.testing.assert_allclose(gradient, expected, rtol=2e-4, atol=1e-8)
    assert float(jnp.abs(gradient[0, :3, :, 1]).max()) == 0.0, "no gradient where the truth is missing"


def fake_rule_only(task):
    """(fake rule, optimizers, initial state, jitted train step) of the real loop with the fake rule alone."""
    fake_rule = task.update_rules()[0]
    config = TrainConfig(steps=50, learning_rate=0.05, warmup_steps=0, weight_decay=0.0)
    optimizers = make_optimizers([fake_rule], config)
    state = init_train_state(task.init(None, None), [fake_rule], optimizers)
    return fake_rule, optimizers, state, jax.jit(make_train_step([fake_rule], optimizers, 0.9, task.step_inputs))


def bitwise_same(a, b) -> bool:
    """Two trees with the same leaves, bit for bit."""
    return jax.tree.all(jax.tree.map(lambda x, y: np.asarray(x).tobytes() == np.asarray(y).tobytes(), a, b))


def test_the_fake_score_follows_a_fixed_student_through_the_loop():
    """Two time scales in the real train step: only the fake rule (3 repeats per step), a student moved away from
    the teacher and held fixed. After a few steps the fake score's denoising loss on the student's samples (fixed
    evaluation draws) has dropped, its params have moved, the student's and the teacher's are bit-for-bit the
    same, and the DMD gap (zero while fake = teacher) has opened. One step with 3 repeats equals 3 AdamW updates
    by hand with keys fold_in(rule_key, r)."""
    task = dmd_task(fake_updates=3, reward_weight=0.0, anchor_weight=0.0,
                    anchors=Anchors(teacher=_toy(1.0), student=_toy(1.3, b=0.2), aux=_toy(1.0)))
    fake_rule, optimizers, state, step = fake_rule_only(task)
    batch, root = toy_batch(), jax.random.PRNGKey(7)
    evaluation_keys = [jax.random.PRNGKey(100 + k) for k in range(4)]

    def measured(params) -> tuple[float, float]:
        return fit_and_gap(task, params, state.frozen, evaluation_keys, batch, "dmd_gap")

    # One loop step against three hand-made AdamW updates on the step's one shared draw.
    step_key = jax.random.fold_in(root, 0)
    inputs = jax.lax.stop_gradient(task.step_inputs(state.params, state.frozen, jax.random.fold_in(step_key, 1), batch,
                                                    state.step))
    transform, opt_state = optimizers.transforms["aux"], state.opt_states["aux"]
    trainable = {"aux": state.params["aux"]}
    for repeat in range(3):
        key = jax.random.fold_in(jax.random.fold_in(step_key, 0), repeat)
        grads = jax.grad(lambda t: fake_rule.loss({**state.params, **t}, state.frozen, key, inputs)[0])(trainable)
        updates, opt_state = transform.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)

    fit_before, gap_before = measured(state.params)
    start = state
    state, metrics = step(state, batch, root)
    for got, want in zip(jax.tree.leaves(state.params["aux"]), jax.tree.leaves(trainable["aux"])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for _ in range(9):
        state, metrics = step(state, batch, root)
    fit_after, gap_after = measured(state.params)
    assert bitwise_same(state.params["student"], start.params["student"])
    assert bitwise_same(state.frozen, start.frozen) and not bitwise_same(state.params["aux"], start.params["aux"])
    assert int(metrics["skipped"]) == 0
    assert gap_before == 0.0 and gap_after > 1e-3, gap_after
    assert fit_after < 0.9 * fit_before, (fit_before, fit_after)


def test_dmd_config_is_validated_and_the_shipped_ones_load():
    """A bad `distill.dmd` section is one error naming the key; dmd.yaml's phase 1 is rmmd.yaml's (same keys)."""
    from gencast_rmmd.config import validate_config
    from gencast_rmmd.distill.config import DistillConfig, load_distill_config
    from gencast_rmmd.errors import UserInputError
    for dmd, phrase in [({"fake_updates": 0}, "fake_updates"), ({"quantiles": [0.9, 0.1]}, "quantiles"),
                        ({"min_noise_level": 90.0}, "must be below"), ({"pull": 1.0}, "pull: unknown key")]:
        with pytest.raises(UserInputError, match=phrase):
            validate_config({"distill": {"method": "dmd", "dmd": dmd}}, DistillConfig, "x.yaml")
    shipped, rmmd = (load_distill_config(REPO / "configs" / "distill" / name) for name in ("dmd.yaml", "rmmd.yaml"))
    assert shipped.distill.method == "dmd" and shipped.distill.dmd.fake_updates == 5
    assert shipped.phase1() == rmmd.phase1() and shipped.train == rmmd.train
    # DMD's section belongs to DMD: absent from every other method's dump (checkpoints, run and stage hashes
    # of runs made before it existed stay valid), refused when another method sets it.
    from gencast_rmmd.config import config_to_dict
    assert "dmd" in config_to_dict(shipped)["distill"] and "dmd" not in config_to_dict(rmmd)["distill"]
    assert "dmd" not in config_to_dict(shipped.phase1())["distill"]
    with pytest.raises(UserInputError, match="distill.dmd is read only by method dmd or gndm or dmdr, not rmmd"):
        validate_config({"distill": {"method": "rmmd", "dmd": {"fake_updates": 3}}}, DistillConfig, "x.yaml")


# --------------------------------------------------------------------------- end to end


def tiny_distill(tmp_path_factory, config, teacher_run, wb2_store):
    """`gencast-rmmd distill --config CONFIG` from the tiny teacher into a fresh folder; the run's path."""
    from gencast_rmmd.cli import main
    run = tmp_path_factory.mktemp(f"distill_{config.stem}") / config.stem
    assert main(["distill", "--config", str(config), "--teacher", str(teacher_run), "--data", str(wb2_store),
                 "--out", str(run)]) == 0
    return run


def check_fake_score_run(run_cli, run, method, teacher_run, wb2_store, tmp_path):
    """A tiny fake-score run (DMD, GNDM): a 3-step checkpoint of `method` with groups student and aux and the
    anchor's frozen trees; the fake score trained away from the teacher it started at, the teacher frozen, the
    student moved from phase 1; its checkpoint forecasts with K = 4 calls."""
    from gencast_rmmd.training import load_checkpoint
    final = load_checkpoint(run)
    assert final.meta["task"]["method"] == method and final.step == 3
    assert sorted(final.params) == ["aux", "student"] and sorted(final.frozen) == ["student_phase1", "teacher"]
    teacher = load_checkpoint(teacher_run).ema_params["denoiser"]
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: x.tobytes() == y.tobytes(), a, b))  # noqa: E731
    assert same(final.frozen["teacher"], teacher) and not same(final.params["aux"], teacher)
    assert not same(final.params["student"], final.frozen["student_phase1"])

    out = tmp_path / f"{method}.nc"
    result = run_cli("forecast", "--checkpoint", run, "--data", wb2_store, "--init", "2001-01-08T00",
                     "--steps", "2", "--members", "2", "--out", out)
    assert result.code == 0, result.err
    forecast = xr.open_dataset(out)
    assert forecast.attrs["nfe_per_step"] == 4 and forecast.attrs["sampler"] == "student_kstep"
    assert np.all(np.isfinite(forecast["temperature"].values))


@pytest.fixture(scope="module")
def dmd_run(tmp_path_factory, wb2_store, teacher_run):
    """configs/distill/tiny_dmd.yaml from the tiny teacher: 2 MMD steps in RUN/phase1, then 3 DMD steps."""
    return tiny_distill(tmp_path_factory, TINY_DMD, teacher_run, wb2_store)


def test_dmd_cli_run_forecasts_and_resumes_bit_identically(run_cli, dmd_run, teacher_run, wb2_store,
                                                             tmp_path):
    """The tiny DMD run writes a student whose checkpoint forecasts with K = 4 calls; its fake score trained
    (it started at the teacher) while the teacher stayed frozen; interrupted after step 2 (the step-3 checkpoint
    removed) and resumed, it ends with the uninterrupted run's params, bit for bit."""
    check_fake_score_run(run_cli, dmd_run, "dmd", teacher_run, wb2_store, tmp_path)
    copy = tmp_path / "interrupted"
    shutil.copytree(dmd_run, copy)
    shutil.rmtree(copy / "checkpoints" / "step_00000003")   # as if killed after the checkpoint of step 2
    result = run_cli("distill", "--config", TINY_DMD, "--teacher", teacher_run, "--data", wb2_store,
                     "--out", copy, "--resume")
    assert result.code == 0, result.err
    hashes = [json.loads(run_cli("inspect", run, "--json").out)["params_sha256"] for run in (copy, dmd_run)]
    assert hashes[0] == hashes[1]
