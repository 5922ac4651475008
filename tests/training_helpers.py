"""Tiny tasks and synthetic data for the training-loop tests; also a script run in subprocesses.

    python tests/training_helpers.py RUN_DIR --steps 40 [--resume] [--delay 0.02] [--devices N]

trains the MLP task and prints one JSON line with the final params hash.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Iterator

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.training import TrainableState, TrainConfig, UpdateRule, train
from gencast_rmmd.training.run_config import check_run_dir

FEATURES, OUTPUTS = 4, 2
TRUE_WEIGHTS = np.linspace(-1.0, 1.0, FEATURES * OUTPUTS, dtype=np.float32).reshape(FEATURES, OUTPUTS)


def _mlp(x):
    return hk.nets.MLP([16, OUTPUTS], name="mlp")(x)


MLP = hk.without_apply_rng(hk.transform(_mlp))
init_mlp = jax.jit(MLP.init)  # one compiled program instead of one per initialiser op


def squared_error(params, frozen, batch):
    """Per-example weighted squared error; `batch['scale']` (NaN to poison a step) multiplies it."""
    prediction = MLP.apply(params, batch["x"]) + frozen["output_offset"]
    error = jnp.mean((prediction - batch["y"]) ** 2, axis=-1)
    return jnp.mean(batch["scale"] * error)


class MlpTask:
    """Regress y = x W + noise with an MLP; one group 'model', a frozen output offset, one update rule."""

    def __init__(self, hidden_scale: float = 1.0):
        self.hidden_scale = hidden_scale

    def init(self, key, example_batch) -> TrainableState:
        params = init_mlp(key, example_batch["x"])
        return TrainableState(params={"model": params},
                              frozen={"output_offset": jnp.full((OUTPUTS,), 0.1, jnp.float32)})

    def loss(self, params, frozen, key, batch):
        noise = 0.01 * jax.random.normal(key, batch["x"].shape)  # uses the key, so keys must match on resume
        loss = squared_error(params["model"], frozen, {**batch, "x": batch["x"] + noise})
        return loss, {"prediction_rms": jnp.sqrt(loss)}

    def update_rules(self):
        return [UpdateRule("model", ("model",), self.loss)]

    def validation_loss(self, params, frozen, key, batch):
        return squared_error(params["model"], frozen, batch), {}

    def config_payload(self) -> dict:
        return {"model": {"hidden": [16, OUTPUTS]}, "stats": {"x_mean": 0.0}}


class TwoGroupTask:
    """Two groups updated in sequence each step: 'aux' fits the data, then 'student' fits aux's prediction."""

    def init(self, key, example_batch) -> TrainableState:
        aux_key, student_key = jax.random.split(key)
        return TrainableState(params={"aux": init_mlp(aux_key, example_batch["x"]),
                                      "student": init_mlp(student_key, example_batch["x"])},
                              frozen={"output_offset": jnp.zeros((OUTPUTS,), jnp.float32)})

    def aux_loss(self, params, frozen, key, batch):
        return squared_error(params["aux"], frozen, batch), {}

    def student_loss(self, params, frozen, key, batch):
        target = jax.lax.stop_gradient(MLP.apply(params["aux"], batch["x"]))
        return squared_error(params["student"], frozen, {**batch, "y": target}), {}

    def update_rules(self):
        return [UpdateRule("aux", ("aux",), self.aux_loss), UpdateRule("student", ("student",), self.student_loss)]

    def validation_loss(self, params, frozen, key, batch):
        return self.student_loss(params, frozen, key, batch)

    def config_payload(self) -> dict:
        return {}


def make_batch(seed: int, step: int, batch_size: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng([seed, step])
    x = rng.normal(size=(batch_size, FEATURES)).astype(np.float32)
    y = (x @ TRUE_WEIGHTS + 0.05 * rng.normal(size=(batch_size, OUTPUTS))).astype(np.float32)
    return {"x": x, "y": y, "scale": np.full((batch_size,), scale, np.float32),
            "unused_static": np.arange(3, dtype=np.float32)}  # a leaf without batch axis: replicated


def synthetic_batches(batch_size: int, seed: int = 0, nonfinite_steps=(), delay: float = 0.0,
                      scale: float = 1.0):
    """`batches(start_step)`: batch s is a pure function of (seed, s); NaN-poisoned at `nonfinite_steps`."""
    def batches(start_step: int) -> Iterator[dict]:
        step = start_step
        while True:
            if delay:
                time.sleep(delay)
            yield make_batch(seed, step, batch_size, np.nan if step in nonfinite_steps else scale)
            step += 1
    return batches


def small_config(**overrides) -> TrainConfig:
    values = dict(steps=20, batch_size=8, learning_rate=3e-2, warmup_steps=0, weight_decay=1e-4,
                  ema_decay=0.9, checkpoint_every=5, keep_checkpoints=2, log_every=1, progress=False)
    return TrainConfig(**{**values, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=None)
    args = parser.parse_args()
    devices = jax.devices()[:args.devices] if args.devices else None
    check_run_dir(Path(args.run_dir), args.resume)   # as the commands do
    result = train(MlpTask(), small_config(steps=args.steps, checkpoint_every=args.checkpoint_every), seed=3,
                   batches=synthetic_batches(8, delay=args.delay), run_dir=args.run_dir, devices=devices)
    print(json.dumps({"step": result.step, "params_sha256": result.params_sha256,
                      "devices": len(devices or jax.devices())}))


if __name__ == "__main__":
    main()
