"""The generic training loop: exact resume, sharding, non-finite skipping, checkpoints, pruning."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from training_helpers import MlpTask, TwoGroupTask, make_batch, small_config, synthetic_batches

from gencast_rmmd.config import StrictModel, validate_config
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training import (DistributedConfig, TrainConfig, TrainingDiverged, list_checkpoints,
                                   load_checkpoint, params_sha256, train, with_compute_dtype)
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training.optim import learning_rate_schedule, make_optimizer
from gencast_rmmd.training.run_config import check_run_dir
from gencast_rmmd.training.state import init_train_state, make_optimizers, make_train_step

HELPER = Path(__file__).parent / "training_helpers.py"
REPO = Path(__file__).resolve().parent.parent
SCRIPT_STEPS = 40


def _trees_equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in zip(jax.tree.leaves(a),
                                                                                    jax.tree.leaves(b)))


def _start(run_dir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), str(run_dir), "--steps", str(SCRIPT_STEPS), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _kill_when(process: subprocess.Popen, ready, extra_delay: float = 0.0) -> None:
    """SIGKILL `process` once `ready()` holds (plus `extra_delay` s); fail if it finished first."""
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(extra_delay)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _metric_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "step_seconds"} for record in records]


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return [int(path.name.split("_")[1]) for path in list_checkpoints(run_dir)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 40-step run of the helper script (final params hash, run directory)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return _finish(_start(run_dir)), run_dir


class _Sections(StrictModel):
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()


def test_config_schema_is_strict_and_validated():
    """Unknown keys, warm-up longer than the run and partial distributed sections are one-line errors."""
    assert TrainConfig().optimizer.learning_rate == TrainConfig().learning_rate
    with pytest.raises(UserInputError, match="run.yaml: train.learnig_rate: unknown key"):
        validate_config({"train": {"learnig_rate": 1.0}}, _Sections, "run.yaml")
    with pytest.raises(UserInputError, match="warmup_steps"):
        validate_config({"train": {"steps": 10, "warmup_steps": 10}}, _Sections, "run.yaml")
    with pytest.raises(UserInputError, match="together"):
        validate_config({"distributed": {"coordinator_address": "host:1234"}}, _Sections, "run.yaml")
    assert not _Sections().distributed.enabled


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    """lr(c) = peak c / W during warm-up, the peak at W, half the peak midway through the cosine, 0 at the end."""
    schedule = learning_rate_schedule(TrainConfig(steps=110, warmup_steps=10, learning_rate=2.0), 110)
    np.testing.assert_allclose([float(schedule(c)) for c in (0, 5, 10, 60, 110)], [0.0, 1.0, 2.0, 1.0, 0.0],
                               atol=1e-6)


def test_resume_after_sigkill_is_bit_identical(tmp_path, reference_run):
    """Killed at random moments (checkpointing every step, so often mid-write), then resumed: every kill leaves a
    loadable latest checkpoint, and the final params hash and the metrics equal an uninterrupted run's."""
    reference, reference_dir = reference_run
    run_dir = tmp_path / "run"
    rng = random.Random(0)
    for attempt in range(2):
        before = _checkpoint_steps(run_dir)
        process = _start(run_dir, "--checkpoint-every", "1", "--delay", "0.02", *(["--resume"] * attempt))
        _kill_when(process, lambda: _checkpoint_steps(run_dir)[-1:] != before[-1:], rng.uniform(0.0, 0.1))
        latest = load_checkpoint(run_dir)  # also verifies the params hash recorded in meta.json
        assert (before[-1] if before else 0) < latest.step < SCRIPT_STEPS
    assert _finish(_start(run_dir, "--resume", "--checkpoint-every", "1")) == reference
    assert load_checkpoint(run_dir).meta["params_sha256"] == reference["params_sha256"]
    assert _metric_records(run_dir) == _metric_records(reference_dir)
    assert not [path for path in (run_dir / "checkpoints").iterdir() if path.name.startswith(".")]


def test_four_device_sharded_training_matches_single_device(tmp_path):
    """With 4 forced CPU devices the batch is split 4 ways and training matches a 1-device run to float tolerance."""
    code = f"""
import json, jax, numpy as np
from training_helpers import MlpTask, small_config, synthetic_batches, make_batch
from gencast_rmmd.training import train
from gencast_rmmd.training.sharding import data_mesh, shard_batch
batch = shard_batch(make_batch(0, 0, 8), data_mesh(), 8)
shards = sorted(shard.data.shape for shard in batch["x"].addressable_shards)
results = {{}}
for name, devices in (("four", jax.devices()), ("one", jax.devices()[:1])):
    results[name] = train(MlpTask(), small_config(steps=12, validate_every=6), seed=1,
                          batches=synthetic_batches(8), validation_batches=synthetic_batches(8, seed=5),
                          run_dir={str(tmp_path)!r} + "/" + name, devices=devices)
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(results["four"].params),
                                                         jax.tree.leaves(results["one"].params)))
ema_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(results["four"].ema_params),
                                                             jax.tree.leaves(results["one"].ema_params)))
validation = results["four"].best_validation_loss - results["one"].best_validation_loss
print(json.dumps({{"devices": jax.device_count(), "shards": shards, "diff": diff, "ema_diff": ema_diff,
                  "validation_diff": abs(validation)}}))
"""
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                               env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                    "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPER.parent),
                                                                                os.environ.get("PYTHONPATH")]))})
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    assert report["shards"] == [[2, 4]] * 4
    assert report["diff"] < 1e-5 and report["ema_diff"] < 1e-5 and report["validation_diff"] < 1e-5


def _unit_step(task, config):
    rules = task.update_rules()
    optimizers = make_optimizers(rules, config)
    state = jax.jit(lambda trainable: init_train_state(trainable, rules, optimizers))(
        task.init(jax.random.PRNGKey(0), make_batch(0, 0, 8)))
    return state, jax.jit(make_train_step(rules, optimizers, config.ema_decay)), optimizers


def test_nonfinite_step_leaves_state_unchanged_and_is_counted():
    """A NaN loss (or its gradient) skips the update: params, EMA and optimiser state keep their values."""
    state, step, _ = _unit_step(MlpTask(), small_config())
    root = jax.random.PRNGKey(1)
    state, _ = step(state, make_batch(0, 0, 8), root)
    skipped, metrics = step(state, make_batch(0, 1, 8, scale=np.nan), root)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    assert _trees_equal(skipped.params, state.params)
    assert _trees_equal(skipped.ema_params, state.ema_params)
    assert _trees_equal(skipped.opt_states, state.opt_states)
    assert (int(skipped.step), int(skipped.nonfinite_total), int(skipped.nonfinite_consecutive)) == (2, 1, 1)
    skipped, _ = step(skipped, make_batch(0, 2, 8, scale=np.inf), root)
    assert int(skipped.nonfinite_consecutive) == 2 and _trees_equal(skipped.params, state.params)
    recovered, metrics = step(skipped, make_batch(0, 3, 8), root)
    assert int(metrics["skipped"]) == 0 and not _trees_equal(recovered.params, state.params)
    assert (int(recovered.nonfinite_total), int(recovered.nonfinite_consecutive)) == (2, 0)


def test_update_rules_apply_in_sequence_each_to_its_own_groups():
    """Rule 2 (student) sees the params rule 1 (aux) just updated, and each rule moves only its own group."""
    task, config = TwoGroupTask(), small_config()
    state, step, _ = _unit_step(task, config)
    batch = make_batch(0, 0, 8)
    new_state, metrics = step(state, batch, jax.random.PRNGKey(0))

    optimizer, key = make_optimizer(config.optimizer, config.steps), jax.random.PRNGKey(0)

    @jax.jit
    def by_hand(params):
        for rule, loss in (("aux", task.aux_loss), ("student", task.student_loss)):
            group = {rule: params[rule]}
            grads = jax.grad(lambda group: loss({**params, **group}, state.frozen, key, batch)[0])(group)
            updates, _ = optimizer.update(grads, state.opt_states[rule], group)
            params = {**params, **optax.apply_updates(group, updates)}
        return params

    params = by_hand(dict(state.params))
    for group in ("aux", "student"):
        for got, want in zip(jax.tree.leaves(new_state.params[group]), jax.tree.leaves(params[group])):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert {"aux/loss", "student/loss", "loss"} <= set(metrics)
    assert float(metrics["loss"]) == float(metrics["student/loss"])


def test_step_inputs_are_computed_once_per_step_and_reach_every_rule_with_rule_keys_unchanged():
    """A task's `step_inputs` replaces the batch for every rule, drawn with fold_in(step_key, len(rules)) at the
    state's step index.

    The hook adds noise (from its key, scaled by 1 + step) to the batch's inputs; two steps must equal the
    by-hand sequence of the two rules on that one noisy batch, with each rule's own key fold_in(step_key, i) as
    without the hook, the second step's noise twice the first's scale.
    """
    class SharedNoiseTask(TwoGroupTask):
        def step_inputs(self, params, frozen, key, batch, step):
            return {**batch, "x": batch["x"] + 0.3 * jax.random.normal(key, batch["x"].shape) * (1 + step)}

    task, config = SharedNoiseTask(), small_config()
    rules = task.update_rules()
    optimizers = make_optimizers(rules, config)
    state = jax.jit(lambda trainable: init_train_state(trainable, rules, optimizers))(
        task.init(jax.random.PRNGKey(0), make_batch(0, 0, 8)))
    step = jax.jit(make_train_step(rules, optimizers, config.ema_decay, task.step_inputs))
    batch, root = make_batch(0, 0, 8), jax.random.PRNGKey(4)
    first, _ = step(state, batch, root)
    new_state, _ = step(first, batch, root)
    params, opt_states = dict(state.params), dict(state.opt_states)
    for index in range(2):
        step_key = jax.random.fold_in(root, index)
        shared = task.step_inputs(params, state.frozen, jax.random.fold_in(step_key, 2), batch, index)
        for rule_index, (name, loss) in enumerate((("aux", task.aux_loss), ("student", task.student_loss))):
            group = {name: params[name]}
            key = jax.random.fold_in(step_key, rule_index)
            grads = jax.grad(lambda group: loss({**params, **group}, state.frozen, key, shared)[0])(group)
            updates, opt_states[name] = optimizers.transforms[name].update(grads, opt_states[name], group)
            params = {**params, **optax.apply_updates(group, updates)}
    for group in ("aux", "student"):
        for got, want in zip(jax.tree.leaves(new_state.params[group]), jax.tree.leaves(params[group])):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    plain, _ = jax.jit(make_train_step(rules, optimizers, config.ema_decay))(state, batch, root)
    assert not np.allclose(jax.tree.leaves(plain.params["aux"])[0], jax.tree.leaves(first.params["aux"])[0])


def test_training_stops_after_consecutive_nonfinite_steps_keeping_last_good_checkpoint(tmp_path):
    """3 skipped steps in a row (steps 8-10) stop training with a message naming the step and checkpoint kept."""
    config = small_config(max_consecutive_nonfinite=3, checkpoint_every=5)
    with pytest.raises(TrainingDiverged, match=r"up to step 10 .*step_00000005") as raised:
        train(MlpTask(), config, seed=0, batches=synthetic_batches(8, nonfinite_steps=range(7, 100)),
              run_dir=tmp_path / "run")
    assert "\n" not in str(raised.value) and raised.value.exit_code == 1
    kept = load_checkpoint(tmp_path / "run")
    assert kept.step == 5 and kept.meta["nonfinite_total"] == 0
    last = _metric_records(tmp_path / "run")[-1]
    assert last["step"] == 10 and last["skipped_total"] == 3


def test_checkpoint_round_trip_without_template(tmp_path):
    """`load_checkpoint` rebuilds params, EMA and frozen trees from a run or checkpoint dir; hashes agree."""
    run_dir = tmp_path / "run"
    # a run directory without checkpoints starts afresh
    result = train(MlpTask(), small_config(steps=7), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    loaded = load_checkpoint(run_dir)
    assert loaded.step == 7 and loaded.path == result.checkpoint == run_dir / "checkpoints" / "step_00000007"
    assert _trees_equal(loaded.params, result.params) and _trees_equal(loaded.ema_params, result.ema_params)
    assert set(loaded.params["model"]) == {"mlp/~/linear_0", "mlp/~/linear_1"}
    assert loaded.meta["params_sha256"] == params_sha256(loaded.params) == result.params_sha256
    np.testing.assert_array_equal(loaded.frozen["output_offset"], np.full(2, 0.1, np.float32))
    assert loaded.meta["task"] == MlpTask().config_payload() and loaded.meta["seed"] == 0
    assert loaded.meta["train"]["learning_rate"] == 3e-2 and "jax" in loaded.meta["versions"]
    assert load_checkpoint(loaded.path).step == 7
    with pytest.raises(UserInputError, match="neither a checkpoint"):
        load_checkpoint(tmp_path)


def test_refuses_existing_run_without_resume_and_checks_seed_and_shapes(tmp_path):
    """A non-empty run dir needs --resume (`check_run_dir`, which the commands call before writing; the CLI
    cases are in test_teacher and test_distill); resuming with another seed or model shape is a clear error."""
    run_dir = tmp_path / "run"
    check_run_dir(run_dir, resume=False)                      # a new directory is a new run
    train(MlpTask(), small_config(steps=5), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    with pytest.raises(UserInputError, match="already holds a run; pass --resume"):
        check_run_dir(run_dir, resume=False)
    check_run_dir(run_dir, resume=True)
    with pytest.raises(UserInputError, match="is a file; --out must be a directory"):
        check_run_dir(run_dir / "metrics.jsonl", resume=True)
    with pytest.raises(UserInputError, match="seed 0, not 1"):
        train(MlpTask(), small_config(steps=5), seed=1, batches=synthetic_batches(8), run_dir=run_dir)
    template = jax.device_get(checkpoints.restore_state(
        run_dir / "checkpoints" / "step_00000005",
        jax.eval_shape(lambda: _unit_step(MlpTask(), small_config())[0])))
    wrong = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.ShapeDtypeStruct((17,), leaf.dtype) if "linear_0']['b" in jax.tree_util.keystr(path)
        else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), template)
    with pytest.raises(UserInputError, match=r"params/model/mlp/~/linear_0/b is float32\[16\] in the checkpoint "
                                             r"but the model expects float32\[17\]"):
        checkpoints.restore_state(run_dir / "checkpoints" / "step_00000005", wrong)


def test_keeps_last_checkpoints_plus_best_on_validation(tmp_path):
    """keep_checkpoints=2 keeps the two newest and the best validation loss (written when it improved)."""
    run_dir = tmp_path / "run"
    config = small_config(steps=12, checkpoint_every=4, keep_checkpoints=2, validate_every=2, validation_batches=2)
    # Validation scores -error (scale -1) so the untrained EMA scores best: the best checkpoint is an old one.
    result = train(MlpTask(), config, seed=0, batches=synthetic_batches(8), run_dir=run_dir,
                   validation_batches=synthetic_batches(8, seed=9, scale=-1.0))
    scores = {record["step"]: record["validation_loss"] for record in _metric_records(run_dir)
              if "validation_loss" in record}
    assert sorted(scores) == [2, 4, 6, 8, 10, 12]
    improved, best = [], None
    for step in sorted(scores):
        if best is None or scores[step] < best:
            best = scores[step]
            improved.append(step)
    written = sorted({4, 8, 12, *improved})
    best_step = min(written, key=lambda step: scores[step])
    assert best_step not in written[-2:]  # otherwise this test would not exercise "plus the best"
    assert _checkpoint_steps(run_dir) == sorted({*written[-2:], best_step})
    assert (result.best_step, result.best_validation_loss) == (best_step, scores[best_step])
    assert load_checkpoint(run_dir / "checkpoints" / f"step_{best_step:08d}").meta["validation_loss"] == \
        pytest.approx(scores[best_step])


def test_checkpoint_write_is_atomic_and_temporaries_are_ignored(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous checkpoint as latest; leftover temporaries are ignored."""
    run_dir = tmp_path / "run"
    train(MlpTask(), small_config(steps=7), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000007")  # as if killed after the checkpoint of step 5
    good = load_checkpoint(run_dir)

    def crash(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.np, "savez", crash)
    state = jax.device_get(checkpoints.restore_state(good.path, jax.eval_shape(
        lambda: _unit_step(MlpTask(), small_config())[0])))
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(run_dir, state, {"step": 6, "seed": 0})
    monkeypatch.undo()
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == [good.path.name]

    # What a SIGKILL mid-write leaves behind (no cleanup ran): a hidden temporary and a step dir lacking meta.
    torn = run_dir / "checkpoints" / ".step_00000009.tmp-12345"
    torn.mkdir()
    (torn / "arrays.npz").write_bytes(b"PK partial")
    (run_dir / "checkpoints" / "step_00000008").mkdir()
    assert checkpoints.latest_checkpoint(run_dir) == good.path
    assert load_checkpoint(run_dir).step == 5
    result = train(MlpTask(), small_config(steps=7), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    assert result.step == 7 and not torn.exists()


def test_checkpoints_hold_only_plain_arrays_and_json(tmp_path):
    """No executable serialisation: arrays load with allow_pickle=False, meta is JSON, sources never import it."""
    run_dir = tmp_path / "run"
    train(MlpTask(), small_config(steps=5), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    checkpoint = checkpoints.latest_checkpoint(run_dir)
    with np.load(checkpoint / "arrays.npz", allow_pickle=False) as arrays:
        assert all(arrays[key].dtype.kind in "biuf" for key in arrays.files)
        assert "opt_states/model/1/0/mu/model/mlp/~/linear_0/w" in arrays.files
    json.loads((checkpoint / "meta.json").read_text())
    sources = "".join(path.read_text() for path in (REPO / "gencast_rmmd" / "training").glob("*.py"))
    assert not re.search(r"\bpickle\b|cloudpickle|allow_pickle *= *True", sources)


def test_bfloat16_compute_keeps_float32_params_and_gradients():
    """`with_compute_dtype` computes the loss in bfloat16 but returns float32 loss and float32 gradients."""
    task = MlpTask()
    batch = make_batch(0, 0, 8)
    trainable = task.init(jax.random.PRNGKey(0), batch)
    key = jax.random.PRNGKey(1)
    reduced = with_compute_dtype(task.loss, "bfloat16")
    (loss, metrics), grads = jax.jit(jax.value_and_grad(reduced, has_aux=True))(trainable.params, trainable.frozen,
                                                                                key, batch)
    full, _ = jax.jit(task.loss)(trainable.params, trainable.frozen, key, batch)
    assert loss.dtype == jnp.float32 and metrics["prediction_rms"].dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))
    assert float(loss) != float(full) and float(loss) == pytest.approx(float(full), rel=3e-2)
    assert with_compute_dtype(task.loss, "float32") == task.loss


def test_training_loop_honours_compute_dtype(tmp_path):
    """`train.compute_dtype: bfloat16` reaches the loss: a different (close) trajectory, float32 params kept."""
    results = {dtype: train(MlpTask(), small_config(steps=6, compute_dtype=dtype), seed=0,
                            batches=synthetic_batches(8), run_dir=tmp_path / dtype)
               for dtype in ("float32", "bfloat16")}
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(results["bfloat16"].params))
    assert results["float32"].params_sha256 != results["bfloat16"].params_sha256
    full, reduced = (np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(results[dtype].params)])
                     for dtype in ("float32", "bfloat16"))
    assert 0.0 < np.linalg.norm(reduced - full) < 0.05 * np.linalg.norm(full)


def test_ema_warm_up_follows_a_short_run():
    """The EMA decay warms up as min(decay, (1+n)/(10+n)): a 300-update run is not averaged into its start."""
    from gencast_rmmd.training.optim import ema_decay_at, ema_update

    assert float(ema_decay_at(0, 0.999)) == pytest.approx(0.1)
    assert float(ema_decay_at(90, 0.999)) == pytest.approx(0.91)
    assert float(ema_decay_at(10**7, 0.999)) == pytest.approx(0.999)
    ema = {"w": jnp.zeros(())}
    for update in range(300):          # a parameter moving linearly from 0 to 1
        ema = ema_update(ema, {"w": jnp.asarray((update + 1) / 300)}, ema_decay_at(update, 0.999))
    plain = sum((1 - 0.999) * 0.999 ** (299 - n) * (n + 1) / 300 for n in range(300))
    assert float(ema["w"]) > 0.85 and plain < 0.15


# --------------------------------------------------------------------------- resume under the recorded config

# A run's settings as a teacher passes them: the store path, the test split and `distributed` are result-neutral.
SETTINGS = {"data": {"path": "/stores/a.zarr", "levels": [500, 850],
                     "splits": {"train": {"fraction": [0.0, 0.6]}, "test": {"fraction": [0.8, 1.0]}}},
            "distributed": {"coordinator_address": None, "num_processes": None, "process_id": None}}


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file under `run_dir` (hidden temporaries included) and its bytes."""
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}


def test_resume_under_another_config_is_refused_naming_the_keys_and_changes_nothing(tmp_path):
    """Resuming with another learning rate is a one-line UserInputError naming the run, the key and old -> new;
    with more changes, three are named. The refused attempts leave every file byte-identical (even a stale
    temporary, which a resume that goes on would clean)."""
    run_dir = tmp_path / "run"
    train(MlpTask(), small_config(steps=5), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    stale = run_dir / "checkpoints" / ".step_00000009.tmp-12345"
    stale.mkdir()
    (stale / "arrays.npz").write_bytes(b"PK partial")
    before = _files(run_dir)
    with pytest.raises(UserInputError) as raised:
        train(MlpTask(), small_config(steps=5, learning_rate=1e-2), seed=0, batches=synthetic_batches(8),
              run_dir=run_dir)
    assert str(raised.value) == (f"{run_dir} was started with another config (train.learning_rate: 0.03 → 0.01); "
                                 "resume with the config it was started with, or use a new --out")
    with pytest.raises(UserInputError, match=r"\(train.batch_size: 8 → 4, train.ema_decay: 0.9 → 0.5, "
                                             r"train.learning_rate: 0.03 → 0.01 and 1 more\)"):
        train(MlpTask(), small_config(steps=6, batch_size=4, ema_decay=0.5, learning_rate=1e-2), seed=0,
              batches=synthetic_batches(4), run_dir=run_dir)
    with pytest.raises(UserInputError, match=r"\(task.model.hidden: \[16, 2\] → \[16, 2, 2\]\)"):
        train(MlpTask(), small_config(steps=5), seed=0, batches=synthetic_batches(8), run_dir=run_dir,
              settings={"task": {**MlpTask().config_payload(), "model": {"hidden": [16, 2, 2]}}})
    assert _files(run_dir) == before


def test_resume_with_only_result_neutral_settings_changed_continues_exactly(tmp_path):
    """Progress, logging and checkpoint cadence, `distributed`, the store path and the test split may change on
    resume: the run goes on and ends with an uninterrupted run's params and recorded config."""
    config = small_config(steps=10, checkpoint_every=5)
    reference = train(MlpTask(), config, seed=0, batches=synthetic_batches(8), run_dir=tmp_path / "reference",
                      settings=SETTINGS)
    run_dir = tmp_path / "run"
    train(MlpTask(), config, seed=0, batches=synthetic_batches(8), run_dir=run_dir, settings=SETTINGS)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000010")  # as if killed after the checkpoint of step 5
    moved = {"data": {**SETTINGS["data"], "path": "/mnt/copy/a.zarr",
                      "splits": {**SETTINGS["data"]["splits"], "test": {"fraction": [0.7, 1.0]}}},
             "distributed": {"coordinator_address": "host:1234", "num_processes": 2, "process_id": 1}}
    notes = []
    resumed = train(MlpTask(), small_config(steps=10, checkpoint_every=2, keep_checkpoints=4, log_every=3,
                                            progress=True), seed=0, batches=synthetic_batches(8), run_dir=run_dir,
                    settings=moved, log=notes.append)
    assert resumed.params_sha256 == reference.params_sha256 and notes == []
    recorded, expected = load_checkpoint(run_dir).meta, load_checkpoint(reference.run_dir).meta
    assert recorded["run_config_sha256"] == expected["run_config_sha256"]
    assert recorded["run_config"] == {"seed": 0, "train": recorded["run_config"]["train"],
                                      "data": {"levels": [500, 850], "splits": {"train": {"fraction": [0.0, 0.6]}}}}
    assert "learning_rate" in recorded["run_config"]["train"] and "progress" not in recorded["run_config"]["train"]
    with pytest.raises(UserInputError, match=r"\(data.levels: \[500, 850\] → \[500\]\)"):
        train(MlpTask(), config, seed=0, batches=synthetic_batches(8), run_dir=run_dir,
              settings={**SETTINGS, "data": {**SETTINGS["data"], "levels": [500]}})


def test_a_run_from_older_code_resumes_unchecked_with_a_note(tmp_path):
    """Checkpoints without a recorded config (older code) resume as before, with one note through `log`; the
    checkpoints written from then on record the config."""
    run_dir = tmp_path / "run"
    train(MlpTask(), small_config(steps=5), seed=0, batches=synthetic_batches(8), run_dir=run_dir)
    meta_path = checkpoints.latest_checkpoint(run_dir) / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["run_config"], meta["run_config_sha256"]
    meta_path.write_text(json.dumps(meta))
    notes = []
    result = train(MlpTask(), small_config(steps=7, learning_rate=1e-2), seed=0, batches=synthetic_batches(8),
                   run_dir=run_dir, log=notes.append)
    assert result.step == 7 and len(notes) == 1 and "records no run config" in notes[0] and "\n" not in notes[0]
    assert load_checkpoint(run_dir).meta["run_config"]["train"]["learning_rate"] == 1e-2


def test_the_teacher_result_config_leaves_out_only_where_and_how_a_run_runs():
    """On the real teacher schema: `distributed`, progress, logging and checkpoint cadence, loader speed settings,
    the store path (`--data`) and the test split leave the hash unchanged; every result-determining key changes it."""
    from gencast_rmmd.config import config_to_dict, load_config
    from gencast_rmmd.teacher.config import TeacherConfig
    from gencast_rmmd.training.run_config import config_sha256, run_config

    def sha(*overrides: str, data: str | None = None) -> str:
        config = load_config(REPO / "configs" / "teacher" / "tiny.yaml", TeacherConfig, list(overrides), data)
        return config_sha256(run_config(config.seed, config.train, config_to_dict(config)))

    base = sha()
    assert sha("distributed.coordinator_address=host:1234", "distributed.num_processes=2",
               "distributed.process_id=1", "train.progress=false", "train.log_every=1", "train.checkpoint_every=3",
               "train.keep_checkpoints=9", "data.loader.prefetch=0", "data.loader.cache_in_memory=false",
               "data.splits.test.fraction=[0.7,1.0]", data="/elsewhere/test.zarr") == base
    for override in ("seed=1", "train.steps=21", "train.learning_rate=0.01", "train.warmup_steps=4",
                     "train.batch_size=4", "train.validate_every=5", "data.levels=[500,850]",
                     "data.splits.validation.fraction=[0.6,0.7]", "data.loader.seed=1", "model.latent_size=16",
                     "loss.variable_weights.mean_sea_level_pressure=1.0", "noise.max_wavenumber=10",
                     "input_perturbation=0.5", "stats=stats.nc"):
        assert sha(override) != base, override
