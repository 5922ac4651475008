"""Cost of one denoiser call of GenCast 1p0deg Mini as `import gencast` builds it, on the 1-degree grid.

Usage:
    python benchmarks/bench_gencast_1p0.py [--batch 1] [--repeats 1] [--grad] [--json]

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
update makes (a distillation step adds the sampler's calls without gradient). Figures depend on the
machine: say which, and its load, when quoting them.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--grad", action="store_true", help="also time one gradient with respect to the parameters")
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
        started = time.perf_counter()
        jax.block_until_ready(gradient(params, noisy, noise_level, conditioning))
        grad_seconds = time.perf_counter() - started
    result = {
        "device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "batch": args.batch,
        "grid": f"{len(LATITUDE)}x{len(LONGITUDE)}", "mesh_refinement": model.mesh_refinement,
        "param_count": parameter_count(params), "graph_seconds": round(graph_seconds, 2),
        "compile_seconds": round(compile_seconds, 2), "call_seconds": [round(s, 3) for s in calls],
        "median_call_seconds": round(statistics.median(calls), 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **({"grad_compile_seconds": round(grad_compile_seconds, 2), "grad_seconds": round(grad_seconds, 3)}
           if args.grad else {}),
    }
    print(f"GenCast 1p0 Mini as imported: {result['param_count'] / 1e6:.1f} M parameters, "
          f"{result['grid']} grid, mesh refinement {result['mesh_refinement']}, batch {args.batch} on "
          f"{result['devices']} {result['device']} device(s)")
    print(f"graphs {graph_seconds:.1f} s, compile {compile_seconds:.1f} s, one denoiser call "
          f"{result['median_call_seconds']:.2f} s (median of {len(calls)}); a 39-call teacher step "
          f"~{39 * result['median_call_seconds']:.0f} s, an 8-call student step "
          f"~{8 * result['median_call_seconds']:.0f} s;"
          f" peak RSS {result['peak_rss_gib']} GiB")
    if args.grad:
        print(f"one gradient (batch {args.batch}): {grad_seconds:.2f} s (compile {grad_compile_seconds:.1f} s)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
