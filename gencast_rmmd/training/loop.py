"""`train`: the one training loop for the teacher and every distiller.

Resume is exact: the state after step s depends only on (seed, task, config,
batches(0..s-1)), and a checkpoint holds all of it (params, EMA, optimiser
states, frozen trees, skip counters). Step s uses key `fold_in(train_root, s)`
and the batch `batches(start_step)` yields at position s - start_step, so a
run resumed from the checkpoint of step s (after a `kill -9` at any moment)
ends with bit-identical parameters to an uninterrupted run. Every checkpoint
records the run's result config; a resume under another one is refused
(`run_config.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import itertools
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from gencast_rmmd.errors import TrainingDiverged, UserInputError
from gencast_rmmd.training import checkpoint as checkpoints
from gencast_rmmd.training.config import DistributedConfig, TrainConfig
from gencast_rmmd.training.metrics_log import MetricsLog, TrainingProgress
from gencast_rmmd.training.precision import inputs_in_compute_dtype, with_compute_dtype
from gencast_rmmd.training.run_config import check_resume_config, checkpoint_record, run_config
from gencast_rmmd.training.sharding import data_mesh, initialize_distributed, is_primary, replicate, \
    replicated, shard_batch
from gencast_rmmd.training.state import TrainState, init_train_state, make_optimizers, make_train_step, \
    make_validation_step, root_keys
from gencast_rmmd.training.task import TrainableState, TrainTask, validate_rules
from gencast_rmmd.training.tree_io import params_sha256

PyTree = Any
# batches(start_step) -> iterator over host batches (pytrees of numeric arrays), the first one for step start_step.
BatchesFn = Callable[[int], Iterator[PyTree]]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a call to `train` ended (params on the host)."""

    run_dir: Path
    step: int
    params: dict
    ema_params: dict
    params_sha256: str
    checkpoint: Path | None           # the latest checkpoint on disk
    best_validation_loss: float | None
    best_step: int | None
    nonfinite_total: int


def package_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint."""
    versions = {"python": platform.python_version()}
    for package in ("gencast-rmmd", "jax", "jaxlib", "dm-haiku", "optax", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class _Validator:
    """Mean validation loss of the EMA params over the first N validation batches, with fixed keys."""

    def __init__(self, task: TrainTask, batches: BatchesFn, count: int, root: jax.Array, mesh, batch_size: int):
        validation_step = make_validation_step(task.validation_loss)
        self._step = jax.jit(lambda ema_params, frozen, root, index, batch: validation_step(
            ema_params, frozen, jax.random.fold_in(root, index), batch), out_shardings=replicated(mesh))
        self._batches, self._count, self._root = batches, count, replicate(root, mesh)
        self._mesh, self._batch_size = mesh, batch_size

    def __call__(self, state: TrainState) -> dict[str, float]:
        iterator = self._batches(0)
        totals: dict[str, float] = {}
        try:
            used = 0
            for index, batch in enumerate(itertools.islice(iterator, self._count)):
                values = jax.device_get(self._step(state.ema_params, state.frozen, self._root,
                                                   replicate(np.uint32(index), self._mesh),
                                                   shard_batch(batch, self._mesh, self._batch_size)))
                for name, value in values.items():
                    totals[name] = totals.get(name, 0.0) + float(value)
                used += 1
        finally:
            _close(iterator)
        if not used:
            raise UserInputError("the validation split yields no batch; enlarge it or set train.validate_every=0")
        return {name: total / used for name, total in totals.items()}


def _initial_state(task: TrainTask, rules: Sequence, optimizers, init_key: jax.Array, example_batch: PyTree,
                   checkpoint: Path | None) -> TrainState:
    """Fresh state from `task.init`, or the checkpoint's restored into the shape `task.init` gives."""
    def build(trainable: TrainableState) -> TrainState:
        validate_rules(rules, trainable.params)
        return init_train_state(trainable, rules, optimizers)

    if checkpoint is None:  # one compiled program for EMA copies and optimiser states
        return jax.jit(build)(task.init(init_key, example_batch))
    template = jax.eval_shape(lambda: build(task.init(init_key, example_batch)))
    return checkpoints.restore_state(checkpoint, template)


def train(task: TrainTask, config: TrainConfig, *, seed: int, batches: BatchesFn, run_dir: str | Path,
          validation_batches: BatchesFn | None = None,
          distributed: DistributedConfig | None = None, devices: Sequence[jax.Device] | None = None,
          settings: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train `task` for `config.steps` steps in `run_dir`, checkpointing and logging; continue it exactly.

    - `batches(start_step)` yields the global training batches from step
      `start_step` on (e.g. `lambda s: (b.batch for b in make_iterator(source, start_step=s))`);
      leaves with `config.batch_size` rows are split over devices.
    - `validation_batches(0)` yields validation batches; the first
      `config.validation_batches` are scored every `config.validate_every` steps.
    - A `run_dir` with checkpoints is continued from its newest one that
      verifies (newer corrupt ones are set aside); without one the run starts
      afresh. Whether the user meant to continue a run is the command's
      question, asked before it writes anything there (statistics, a phase-1
      student): `run_config.check_run_dir`, the one place it is checked.
    - `settings`: the run's validated config as JSON (default: the task's
      payload). With `seed` and `config` it makes the run's result config
      (`run_config.py`), recorded in every checkpoint; resuming under another
      one raises `UserInputError` before anything in `run_dir` changes.
      `log` gets the note when a run from older code resumes unchecked.
    - Raises `TrainingDiverged` after `max_consecutive_nonfinite` skipped steps in a row.
    """
    initialize_distributed(distributed)
    run_dir = Path(run_dir)
    primary = is_primary()
    if primary:  # a corrupt newest checkpoint is set aside, named, and the one before it resumed
        checkpoints.fall_back_to_verified(run_dir, log)
    latest = checkpoints.latest_checkpoint(run_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("gencast_rmmd.train: run directory checked")
    meta = checkpoints.read_meta(latest) if latest is not None else {}
    if meta and meta["seed"] != seed:
        raise UserInputError(f"{latest} was trained with seed {meta['seed']}, not {seed}; resume with the seed "
                             "the run was started with")
    payload = task.config_payload()
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as error:
        raise ValueError(f"task.config_payload() must be JSON-serialisable: {error}") from None
    result_config = run_config(seed, config, {"task": payload} if settings is None else settings)
    check_resume_config(run_dir, result_config, log if primary else None)
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_stale_temporaries(run_dir)

    start_step = int(meta.get("step", 0))
    best_loss, best_step = meta.get("best_validation_loss"), meta.get("best_step")
    # `train.compute_dtype`: every rule's loss computes in it (params, optimiser state and EMA stay float32).
    rules = [dataclasses.replace(rule, loss=with_compute_dtype(rule.loss, config.compute_dtype))
             for rule in task.update_rules()]
    optimizers = make_optimizers(rules, config)
    train_root, validation_root, init_root = root_keys(seed)
    mesh = data_mesh(devices)
    iterator = batches(start_step)
    log = MetricsLog(run_dir, enabled=primary, resume_step=start_step)
    try:
        first_batch = next(iterator)
        state = replicate(_initial_state(task, rules, optimizers, init_root, first_batch, latest), mesh)
        train_root = replicate(train_root, mesh)
        step_inputs = inputs_in_compute_dtype(getattr(task, "step_inputs", None), config.compute_dtype)
        step_fn = jax.jit(make_train_step(rules, optimizers, config.ema_decay, step_inputs), donate_argnums=0,
                          out_shardings=replicated(mesh))
        validator = None
        if validation_batches is not None and config.validate_every > 0:
            validator = _Validator(task, validation_batches, config.validation_batches, validation_root, mesh,
                                   config.batch_size)

        def save(step: int, validation_loss: float | None) -> None:
            if not primary:
                return
            host = jax.device_get(state)
            checkpoints.save_checkpoint(run_dir, host, {
                "step": step, "seed": seed, "train": config.model_dump(mode="json"), "task": payload,
                **checkpoint_record(result_config),
                "validation_loss": validation_loss, "best_validation_loss": best_loss, "best_step": best_step,
                "nonfinite_total": int(host.nonfinite_total),
                "nonfinite_consecutive": int(host.nonfinite_consecutive),
                "params_sha256": params_sha256(host.params), "ema_params_sha256": params_sha256(host.ema_params),
                "versions": package_versions(), "written_at": dt.datetime.now(dt.timezone.utc).isoformat()})
            checkpoints.prune_checkpoints(run_dir, config.keep_checkpoints)

        with TrainingProgress(config.steps, start_step, enabled=config.progress and primary, label=str(run_dir),
                              record=primary) as progress:
            for step in range(start_step, config.steps):
                batch = first_batch if step == start_step else next(iterator)
                started = time.perf_counter()
                state, metrics = step_fn(state, shard_batch(batch, mesh, config.batch_size), train_root)
                # Waiting for every step also keeps CPU collectives from aborting on few cores.
                jax.block_until_ready((state, metrics))
                seconds = time.perf_counter() - started
                done, metrics = step + 1, jax.device_get(metrics)
                consecutive = int(state.nonfinite_consecutive)
                record: dict[str, float] = {}
                if done % config.log_every == 0 or done == config.steps or consecutive:
                    record = {**metrics, "step_seconds": seconds, "skipped_total": int(state.nonfinite_total)}
                validation_loss = None
                if validator is not None and done % config.validate_every == 0:
                    scores = validator(state)
                    record.update(scores)
                    validation_loss = scores["validation_loss"]
                if record:
                    log.write(done, record)
                if consecutive >= config.max_consecutive_nonfinite:
                    kept = checkpoints.latest_checkpoint(run_dir)
                    raise TrainingDiverged(
                        f"training diverged: {consecutive} consecutive steps up to step {done} had a non-finite "
                        f"loss or gradient (updates skipped); last checkpoint kept: {kept or 'none'}; check the "
                        "data and resume, or lower train.learning_rate and start again in a new --out")
                new_best = validation_loss is not None and math.isfinite(validation_loss) and (
                    best_loss is None or validation_loss < best_loss)
                if new_best:
                    best_loss, best_step = validation_loss, done
                if done % config.checkpoint_every == 0 or done == config.steps or new_best:
                    save(done, validation_loss)
                progress.update(done, float(metrics["loss"]))
    finally:
        _close(iterator)
        log.close()

    host = jax.device_get(state)
    return TrainResult(run_dir=run_dir, step=int(host.step), params=host.params, ema_params=host.ema_params,
                       params_sha256=params_sha256(host.params), checkpoint=checkpoints.latest_checkpoint(run_dir),
                       best_validation_loss=best_loss, best_step=best_step,
                       nonfinite_total=int(host.nonfinite_total))
