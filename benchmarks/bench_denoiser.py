"""Denoiser cost per model variant: training-step gradient and sampling forward pass, on the demo grid.

Usage:
    python benchmarks/bench_denoiser.py [--config configs/teacher/demo.yaml] [--store data/demo.zarr]
        [--stats STATS.nc] [--variant NAME:key=value,key=value ...] [--repeats 7] [--batch 4] [--json]

Each variant is the teacher config with its `--set`-style overrides (`base` has none), e.g.
`--variant dense:model.processor.attention=dense --variant banded:model.processor.attention=banded`.
For every variant, after compilation:
- `grad_s`: one jitted gradient of the teacher's training loss on a batch of `--batch` (what a training
  step costs, less the optimizer update);
- `forward_ms_per_sample`: one jitted preconditioned denoiser call on the same batch, per sample (what
  each of a sampler's denoiser calls costs);
- `gflop_grad`: XLA's flop count of the gradient.
Figures are medians over `--repeats` rounds, the variants interleaved within each round so that they see
the same machine load; ratios are to the first variant. With `--json` the last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gencast_rmmd.config import load_config
from gencast_rmmd.data.batches import batch_stream
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.stats import compute_stats, load_stats
from gencast_rmmd.diffusion.model_space import first_step
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.teacher.config import TeacherConfig
from gencast_rmmd.teacher.train import teacher_task

REPO = Path(__file__).resolve().parent.parent


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value,key=value")
    return name, [item for item in overrides.split(",") if item]


def _seconds(fn, *args) -> float:
    started = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - started


class Variant:
    """One compiled model variant: its training-loss gradient and a denoiser call on one batch."""

    def __init__(self, name: str, config: TeacherConfig, source: DataSource, normalizer: Normalizer, batch):
        self.name = name
        task = teacher_task(config, source, normalizer)
        params = task.init(jax.random.PRNGKey(config.seed), batch).params

        def loss(params, key):
            return jnp.sum(jax.tree_util.tree_leaves(task.loss(params, None, key, batch))[0])

        clean, conditioning, _ = first_step(batch, normalizer)
        sigma = jnp.full((clean.shape[0],), 1.0, clean.dtype)

        def denoise(params, noisy):
            network = lambda x, s, c: task.network.apply(params["denoiser"], x, s, c)  # noqa: E731
            return PreconditionedDenoiser(network)(noisy, sigma, conditioning)

        self.key = jax.random.PRNGKey(1)
        self.params, self.noisy = params, clean + sigma[:, None, None, None]
        self.grad = jax.jit(jax.grad(loss))
        self.forward = jax.jit(denoise)
        cost = self.grad.lower(params, self.key).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.gflop_grad = float(cost.get("flops", 0.0)) / 1e9
        self.samples = int(clean.shape[0])
        jax.block_until_ready(self.grad(params, self.key))
        jax.block_until_ready(self.forward(params, self.noisy))
        self.grad_s: list[float] = []
        self.forward_s: list[float] = []

    def time_once(self) -> None:
        self.grad_s.append(_seconds(self.grad, self.params, self.key))
        self.forward_s.append(_seconds(self.forward, self.params, self.noisy))

    def summary(self) -> dict:
        return {"grad_s": statistics.median(self.grad_s),
                "forward_ms_per_sample": 1e3 * statistics.median(self.forward_s) / self.samples,
                "gflop_grad": self.gflop_grad}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/teacher/demo.yaml")
    parser.add_argument("--store", default="data/demo.zarr")
    parser.add_argument("--stats", default=None, help="a stats.nc to reuse (default: computed from the store)")
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variant] or [("base", [])]
    common = [f"data.path={args.store}", f"train.batch_size={args.batch}"]
    base = load_config(REPO / args.config, TeacherConfig, overrides=common)
    source = DataSource.open(base.data)
    stats = load_stats(args.stats) if args.stats else compute_stats(source, "train")
    normalizer = Normalizer.from_stats(stats, source.layout)
    batch = next(batch_stream(source, "train", args.batch)(0))
    built = []
    for name, overrides in variants:
        config = load_config(REPO / args.config, TeacherConfig, overrides=[*common, *overrides])
        print(f"compiling {name} ({', '.join(overrides) or 'no overrides'})", flush=True)
        built.append(Variant(name, config, source, normalizer, batch))
    for _ in range(args.repeats):
        for variant in built:
            variant.time_once()
    results = {variant.name: variant.summary() for variant in built}
    first = results[built[0].name]
    print(f"{'variant':<16} {'GFLOP/grad':>10} {'grad s':>8} {'x':>6} {'fwd ms/sample':>14} {'x':>6}")
    for name, row in results.items():
        row["grad_speedup"] = first["grad_s"] / row["grad_s"]
        row["forward_speedup"] = first["forward_ms_per_sample"] / row["forward_ms_per_sample"]
        print(f"{name:<16} {row['gflop_grad']:>10.1f} {row['grad_s']:>8.3f} {row['grad_speedup']:>6.2f} "
              f"{row['forward_ms_per_sample']:>14.1f} {row['forward_speedup']:>6.2f}")
    report = {"batch": args.batch, "repeats": args.repeats, "devices": jax.device_count(),
              "backend": jax.default_backend(), "variants": results}
    if args.json:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
