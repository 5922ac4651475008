"""Cost of one denoiser call of GenCast 1p0deg Mini as `import gencast` builds it, on the 1-degree grid.

Usage:
    python benchmarks/bench_gencast_1p0.py [--batch 1] [--repeats 1] [--grad] [--distill CONFIG] [--plan-only]
                                           [--json]

The model is what the importer makes of graphcast's published "GenCast 1p0deg Mini" architecture
(`gencast_checkpoint.model_config` of its `denoiser_architecture_config`: mesh refinement 4, latent and
d_model 512, 16 transformer layers, 4 heads, FFW 2048, attention k-hop 16, one hidden MLP layer, radius
0.6 of the longest mesh edge; `GENCAST_VARIANT`), for GenCast's task (configs/data/era5_wb2_64x32.yaml's
variables at 13 levels, 2 input frames) on the 181 x 360 equiangular grid with poles. The cost of a call
does not depend on the weights, so they are random (shaped by an abstract init); no checkpoint is read.

Reported: graph construction seconds, parameter count, XLA compile seconds, the wall seconds of each
of `--repeats` jitted calls of the preconditioned denoiser on a batch of `--batch` (after compilation),
and the process's peak resident memory. A 12 h teacher step is 39 such calls (20 noise levels), an
8-step student's 8. With `--grad`, also the seconds of one jitted gradient of a squared denoising error
with respect to all parameters on the same batch: the backward pass every training or distillation
update makes. With `--distill CONFIG` (e.g. configs/distill/rmmd.yaml), also one whole distillation
step as `gencast-rmmd distill` compiles it (`training.make_train_step` over the method's update rules:
the student's sampling, every differentiated call, the optimiser and EMA updates) on a batch of
`--batch` examples per device, with the student of configs/pipelines/gencast_1p0_era5.yaml (8 steps).
For each compiled program the report adds XLA's own memory plan (`memory_analysis`: arguments, outputs,
temporaries, and their total: what the program holds at most at once); `--plan-only` compiles the
gradient and the distillation step and reports their plans without running them, to see whether a
machine can hold them. Figures depend on the machine: say which, and its load, when quoting them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.config import DataFileConfig, load_config
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.data.variables import FORCING_NAMES
from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.models.builder import network_for_grid
from gencast_rmmd.models.denoiser import parameter_count
from gencast_rmmd.teacher.gencast_checkpoint import (MINI_1P0_ARCHITECTURE, GenCastCheckpoint,
                                                     model_config)

REPO = Path(__file__).resolve().parent.parent

LATITUDE, LONGITUDE = np.linspace(-90.0, 90.0, 181), np.arange(360) * 1.0


def memory_plan(compiled) -> dict:
    """XLA's memory plan of a compiled program, GiB: arguments, outputs, temporaries (the buffer assignment's
    total, with reuse) and their sum, what the program holds at once at most. The CPU client's own
    `peak_memory_in_bytes` leaves the temporaries out, so it is not used."""
    stats = compiled.memory_analysis()
    gib = lambda value: round(value / 2**30, 2)  # noqa: E731
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return {"arguments": gib(stats.argument_size_in_bytes), "outputs": gib(stats.output_size_in_bytes),
            "temporaries": gib(stats.temp_size_in_bytes), "total": gib(total)}


def gflops(compiled) -> float:
    """XLA's count of floating-point operations of a compiled program, in 1e9 (a loop's body counts once: used
    for the loop-free call and gradient only)."""
    return round(float(compiled.cost_analysis()["flops"]) / 1e9, 1)


def distillation_steps(config_path: Path, network, layout: ChannelLayout, params, batch_size: int,
                       plan_only: bool) -> list[dict]:
    """One step of each phase `gencast-rmmd distill` runs with `config_path` (8-step student) at full size: the
    loop's own compiled step (`make_train_step` over the method's update rules) on `batch_size` examples.
    A phase-2 method with `phase1_steps` runs moment matching (`mmd`) first: both steps are measured.

    Statistics are identities and every anchor (teacher, phase-1 student, aux) holds `params`: the cost does
    not depend on their values. Each phase reports XLA's memory plan and compile seconds, and the step's
    seconds unless `plan_only`.
    """
    from gencast_rmmd.data.batches import Batch
    from gencast_rmmd.data.normalization import Normalizer
    from gencast_rmmd.diffusion.config import LossConfig
    from gencast_rmmd.diffusion.model_space import ModelSpace
    from gencast_rmmd.diffusion.noise import SphericalNoise
    from gencast_rmmd.distill.base import Anchors, DistillContext
    from gencast_rmmd.distill.config import load_distill_config
    from gencast_rmmd.distill.registry import DISTILLERS
    from gencast_rmmd.training.state import init_train_state, make_optimizers, make_train_step, root_keys

    config = load_distill_config(config_path, ["distill.student.steps=8", f"train.batch_size={batch_size}"])
    inputs, targets, static = layout.n_input_channels, layout.n_target_channels, len(layout.static)
    zeros, ones = (lambda n: np.zeros(n, np.float32)), (lambda n: np.ones(n, np.float32))  # noqa: E731
    normalizer = Normalizer(input_mean=zeros(inputs), input_std=ones(inputs), input_fill=zeros(inputs),
                            target_center=zeros(targets), target_scale=ones(targets), target_fill=zeros(targets),
                            target_input_index=layout.target_in_inputs(), static_mean=zeros(static),
                            static_std=ones(static), static_fill=zeros(static), input_frames=layout.input_frames)
    space = ModelSpace(normalizer, layout, LATITUDE, LONGITUDE, SphericalNoise.from_spec(LATITUDE, LONGITUDE, None),
                       LossConfig())
    grid = (len(LATITUDE), len(LONGITUDE))
    batch = Batch(inputs=np.zeros((batch_size, *grid, layout.input_frames * inputs), np.float32),
                  forcings=np.zeros((batch_size, 1, *grid, len(FORCING_NAMES)), np.float32),
                  targets=np.zeros((batch_size, 1, *grid, targets), np.float32),
                  static=np.zeros((*grid, static), np.float32))
    train_root, _, init_root = root_keys(config.seed)
    phases = ([config.phase1()] if config.distill.phase1_steps and DISTILLERS[config.distill.method].starts_from
              == "phase1" else []) + [config]
    measured = []
    for phase in phases:
        task = DISTILLERS[phase.distill.method](DistillContext(phase, network, space, Anchors(params, params, params),
                                                               {}))
        rules = task.update_rules()
        optimizers = make_optimizers(rules, phase.train)

        def initial_state(task=task, rules=rules, optimizers=optimizers):
            return init_train_state(task.init(init_root, batch), rules, optimizers)

        step = jax.jit(make_train_step(rules, optimizers, phase.train.ema_decay, getattr(task, "step_inputs", None)),
                       donate_argnums=0)
        started = time.perf_counter()
        compiled = step.lower(jax.eval_shape(initial_state), batch, train_root).compile()
        record = {"method": phase.distill.method, "update_rules": [rule.name for rule in rules],
                  "compile_seconds": round(time.perf_counter() - started, 2), "plan_gib": memory_plan(compiled)}
        if not plan_only:
            state = jax.jit(initial_state)()
            started = time.perf_counter()
            jax.block_until_ready(compiled(state, batch, train_root))
            record["seconds"] = round(time.perf_counter() - started, 3)
        measured.append(record)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--grad", action="store_true", help="also time one gradient with respect to the parameters")
    parser.add_argument("--distill", type=Path, metavar="CONFIG",
                        help="also one distillation step of this distill config (8-step student)")
    parser.add_argument("--plan-only", action="store_true",
                        help="compile the gradient and the distillation step and report XLA's memory plans; "
                             "do not run them")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = parser.parse_args()

    data = load_config(REPO / "configs" / "data" / "era5_wb2_64x32.yaml", DataFileConfig).data
    layout = ChannelLayout.from_config(data)
    architecture_only = GenCastCheckpoint(params={}, config={"denoiser_architecture_config": MINI_1P0_ARCHITECTURE},
                                          description="GenCast 1p0deg Mini (architecture only)")
    model = model_config(architecture_only)
    started = time.perf_counter()
    network = network_for_grid(model, LATITUDE, LONGITUDE, layout.n_target_channels)
    graph_seconds = time.perf_counter() - started

    shape = (args.batch, len(LATITUDE), len(LONGITUDE))
    conditioning = Conditioning(jnp.zeros((*shape, layout.input_frames * layout.n_input_channels), jnp.float32),
                                jnp.zeros((*shape, len(FORCING_NAMES)), jnp.float32),
                                jnp.zeros((*shape[1:], len(layout.static)), jnp.float32))
    noisy = jax.random.normal(jax.random.PRNGKey(1), (*shape, layout.n_target_channels), jnp.float32)
    noise_level = jnp.full((args.batch,), 1.0, jnp.float32)
    abstract = jax.eval_shape(network.init, jax.random.PRNGKey(0), noisy, noise_level, conditioning)
    leaves, tree = jax.tree_util.tree_flatten(abstract)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [0.02 * jax.random.normal(key, leaf.shape, leaf.dtype)
                                                 for key, leaf in zip(keys, leaves)])

    def denoise(params, noisy, noise_level, conditioning):
        return PreconditionedDenoiser(lambda *a: network.apply(params, *a))(noisy, noise_level, conditioning)

    started = time.perf_counter()
    compiled = jax.jit(denoise).lower(params, noisy, noise_level, conditioning).compile()
    compile_seconds = time.perf_counter() - started
    calls = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params, noisy, noise_level, conditioning))
        calls.append(time.perf_counter() - started)
    if args.grad:
        def loss(params, noisy, noise_level, conditioning):
            return jnp.mean(jnp.square(denoise(params, noisy, noise_level, conditioning) - noisy))

        started = time.perf_counter()
        gradient = jax.jit(jax.grad(loss)).lower(params, noisy, noise_level, conditioning).compile()
        grad_compile_seconds = time.perf_counter() - started
        grad_seconds = None
        if not args.plan_only:
            started = time.perf_counter()
            jax.block_until_ready(gradient(params, noisy, noise_level, conditioning))
            grad_seconds = time.perf_counter() - started
    result = {
        "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "batch": args.batch,
        "grid": f"{len(LATITUDE)}x{len(LONGITUDE)}", "mesh_refinement": model.mesh_refinement,
        "param_count": parameter_count(params), "graph_seconds": round(graph_seconds, 2),
        "compile_seconds": round(compile_seconds, 2), "call_seconds": [round(s, 3) for s in calls],
        "median_call_seconds": round(statistics.median(calls), 3),
        "call_plan_gib": memory_plan(compiled), "call_gflops": gflops(compiled),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **({"grad_compile_seconds": round(grad_compile_seconds, 2),
            "grad_seconds": None if grad_seconds is None else round(grad_seconds, 3),
            "grad_plan_gib": memory_plan(gradient), "grad_gflops": gflops(gradient)} if args.grad else {}),
        **({"distill_config": str(args.distill), "student_steps": 8,
            "distill_steps": distillation_steps(args.distill, network, layout, params, args.batch, args.plan_only)}
           if args.distill else {}),
    }
    print(f"GenCast 1p0 Mini as imported: {result['param_count'] / 1e6:.1f} M parameters, "
          f"{result['grid']} grid, mesh refinement {result['mesh_refinement']}, batch {args.batch} on "
          f"{result['devices']} {result['device']} device(s)")
    print(f"graphs {graph_seconds:.1f} s, compile {compile_seconds:.1f} s, one denoiser call "
          f"{result['median_call_seconds']:.2f} s (median of {len(calls)}); a 39-call teacher step "
          f"~{39 * result['median_call_seconds']:.0f} s, an 8-call student step "
          f"~{8 * result['median_call_seconds']:.0f} s;"
          f" peak RSS {result['peak_rss_gib']} GiB; XLA plans {result['call_plan_gib']['total']} GiB for a call")
    if args.grad:
        ran = "not run (--plan-only)" if grad_seconds is None else f"{grad_seconds:.2f} s"
        print(f"one gradient (batch {args.batch}): {ran} "
              f"(compile {grad_compile_seconds:.1f} s); XLA plans {result['grad_plan_gib']['total']} GiB "
              f"({result['grad_plan_gib']['temporaries']} GiB of temporaries) and counts "
              f"{result['grad_gflops'] / result['call_gflops']:.2f}x a call's flops")
    for record in result.get("distill_steps", []):
        ran = f"{record['seconds']:.2f} s" if "seconds" in record else "not run (--plan-only)"
        print(f"one distillation step of {record['method']} (rules {', '.join(record['update_rules'])}; 8-step "
              f"student, batch {args.batch}): {ran} (compile {record['compile_seconds']:.1f} s); XLA plans "
              f"{record['plan_gib']['total']} GiB ({record['plan_gib']['temporaries']} GiB of temporaries)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
