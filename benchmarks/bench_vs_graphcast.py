"""Speed of our GenCast-exact denoiser against google-deepmind/graphcast's own GenCast, same weights, same run.

Not part of the package and not run in CI: it imports graphcast (at 08cf736, the published checkpoints'
commit) inside itself, so run it with an interpreter that has graphcast's dependencies and our package:

    PYTHONPATH=/work/main:/work/gc_src /work/gc_venv/bin/python benchmarks/bench_vs_graphcast.py \
        --sizes fixture demo --out results/gencast_import/speed_vs_graphcast.json [--default-vs-gencast]

(gc_venv as tools/make_gencast_fixture.py builds it, plus `pydantic` and `psutil` for our package).
Both sides run in this one process on the same jax/XLA, with one CPU device (leave XLA_FLAGS unset).

For each size, graphcast's `gencast.GenCast` is built from the fixture's task, sampler and noise configs
(tests/fixtures/gencast/grid64x32_mesh2.npz) with that size's `DenoiserArchitectureConfig`, its
parameters initialised and perturbed as the fixture's are (no path stays zero), written as a graphcast
checkpoint and imported by `gencast_import.import_gencast`: ours is exactly what `import gencast` makes
(GenCast-exact mode: `GENCAST_VARIANT`, dense attention over the k-hop mask), with identical weights.
Sizes: `fixture` (the parity fixture's: latent 16, 2 layers, mesh 2, k-hop 4) and `demo`
(configs/model/demo.yaml: latent 128, 1 hidden layer, 4 layers, 4 heads, FFW 256, k-hop 4, mesh 3;
graphcast's `triblockdiag_mha` with the full mask; ours dense, the importer's choice), on the 64x32 grid.

Our side runs twice: `ours`, as the importer makes it (dense attention over the k-hop mask), and
`ours_banded`, the same config and weights with demo.yaml's banded attention (the same function, fewer
pairs computed). Measured after compilation, the variants interleaved in each of `--repeats` rounds
(ours, ours_banded, theirs, ours, ...), medians; ratios are to `ours` (theirs / ours > 1: ours is faster):
- `forward_b1`, `forward_b4`: one jitted preconditioned denoiser call D(x; sigma, conditioning) on
  normalised data, batch 1 and 4 (what each sampler call costs; graphs are built at trace time by both);
- `grad_b2`: one jitted gradient of the training loss w.r.t. all parameters, batch 2 (theirs:
  `InputsAndResiduals(GenCast).loss` on physical data, its fixed ERA5 loss weights restricted to the
  fixture task's variables; ours: `denoising_loss` on the normalised residual: noise-level draw,
  spherical noise, D, weighted MSE).
Before timing, each of our forward outputs is compared with graphcast's (max |ours - theirs| / std(theirs));
the run stops above 1e-4, so the figures are for the same function.

With `--default-vs-gencast`, also our default architecture (configs/model/demo.yaml as it is: rmmd graphs
and blocks, banded attention) against our GenCast-exact mode (dense and banded) at the demo size, the same
measurements interleaved, ratios to `gencast_banded` (> 1: the GenCast mode is faster). Different
functions (the default's weights are its own random init): no agreement check.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import xarray
from scipy.sparse import SparseEfficiencyWarning

from graphcast import checkpoint, denoiser, gencast, losses, normalization, xarray_jax

from gencast_rmmd.config import read_yaml_mapping
from gencast_rmmd.data.forcings import forcing_channels
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.diffusion.loss import WeightedNorm, denoising_loss
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.forecast.predictor import Predictor
from gencast_rmmd.models.builder import network_for_grid
from gencast_rmmd.models.config import ModelConfig
from gencast_rmmd.teacher.gencast_checkpoint import perturbed_params, read_gencast_checkpoint
from gencast_rmmd.teacher.gencast_import import import_gencast

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "gencast"
CASE = "grid64x32_mesh2"
LAYOUT = ChannelLayout(surface=("2m_temperature",), atmospheric=("temperature", "geopotential"),
                       target_only=("total_precipitation_12hr",), static=("geopotential_at_surface", "land_sea_mask"),
                       levels=(500, 850), input_frames=2)
SIZES = {
    # name: (mesh_size, latent_size = d_model, hidden_layers, num_layers, num_heads, ffw_hidden, k_hop)
    "fixture": (2, 16, 1, 2, 4, 32, 4),
    "demo": (3, 128, 1, 4, 4, 256, 4),
}
MAX_RELATIVE_DIFF = 1e-4
SIGMA = 1.0
# graphcast's grid<->mesh graph construction fills scipy sparse matrices item by item (at trace time only).
warnings.filterwarnings("ignore", category=SparseEfficiencyWarning)


def _weights_of_present_variables(sum_per_variable_losses):
    """GenCast.loss passes fixed weights for ERA5 variables the fixture's task does not have, which graphcast
    rejects; drop those (the weighted sum over the task's variables is unchanged)."""
    def wrapped(per_variable_losses, weights):
        return sum_per_variable_losses(per_variable_losses,
                                       {k: w for k, w in weights.items() if k in per_variable_losses})
    return wrapped


losses.sum_per_variable_losses = _weights_of_present_variables(losses.sum_per_variable_losses)


def architecture(size: str) -> denoiser.DenoiserArchitectureConfig:
    mesh, latent, hidden, layers, heads, ffw, k_hop = SIZES[size]
    transformer = denoiser.SparseTransformerConfig(
        attention_k_hop=k_hop, d_model=latent, num_layers=layers, num_heads=heads,
        attention_type="triblockdiag_mha", mask_type="full", ffw_hidden=ffw)
    return denoiser.DenoiserArchitectureConfig(sparse_transformer_config=transformer, mesh_size=mesh,
                                               latent_size=latent, hidden_layers=hidden,
                                               radius_query_fraction_edge_length=0.6)


def fixture_data():
    """The fixture case's arrays, meta, graphcast statistics and stored checkpoint (task and configs)."""
    stored = np.load(FIXTURE / f"{CASE}_io.npz")
    data = {key: stored[key] for key in stored.files}
    meta = json.loads(str(data.pop("meta")))
    stats = {name: xarray.load_dataset(FIXTURE / "stats" / f"{name}.nc")
             for name in ("diffs_stddev_by_level", "mean_by_level", "stddev_by_level")}
    with open(FIXTURE / f"{CASE}.npz", "rb") as handle:
        template = checkpoint.load(handle, gencast.CheckPoint)
    return data, meta, stats, template


def graphcast_datasets(data: dict, meta: dict, batch: int):
    """graphcast's (inputs, targets, forcings) xarray datasets, the fixture's example tiled to `batch`."""
    lat, lon = data["latitude"], data["longitude"]
    coords = {"lat": lat.astype(np.float32), "lon": lon.astype(np.float32), "level": np.asarray(LAYOUT.levels)}

    def dataset(group, names, time=None):
        fields = {}
        for name in names:
            dims = meta["dims"][f"{group}/{name}"]
            values = data[f"{group}/{name}"]
            if "time" in dims and time is not None:
                values = values[:, time:time + 1]
            if "batch" in dims:
                values = np.repeat(values, batch, axis=0)
            fields[name] = (dims, values.astype(np.float32))
        return xarray.Dataset(fields, coords={k: v for k, v in coords.items()
                                              if any(k in f[0] for f in fields.values())})

    inputs = dataset("inputs", [k.split("/", 1)[1] for k in data if k.startswith("inputs/")])
    targets = dataset("step", meta["target_variables_sorted"])
    forcings = dataset("forcings", [k.split("/", 1)[1] for k in data if k.startswith("forcings/")], time=0)
    return inputs, targets, forcings


def to_channels(fields: dict, channels) -> np.ndarray:
    """graphcast per-variable fields (batch, time, lat, lon[, level]) -> [batch, lat, lon, C] in `channels` order."""
    columns = []
    for channel in channels:
        field = np.asarray(fields[channel.variable])[:, 0]
        if channel.level is not None:
            field = field[..., LAYOUT.levels.index(channel.level)]
        columns.append(field)
    return np.stack(columns, axis=-1)


def _seconds(fn, *args) -> float:
    started = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - started


class Theirs:
    """graphcast's GenCast at one size: jitted preconditioned denoiser and training-loss gradient."""

    def __init__(self, size: str, template, stats, data, meta, rng: np.random.Generator):
        arch = architecture(size)

        def model():
            return gencast.GenCast(task_config=template.task_config,
                                   denoiser_architecture_config=dataclasses.replace(arch),
                                   sampler_config=template.sampler_config, noise_config=template.noise_config,
                                   noise_encoder_config=template.noise_encoder_config)

        def wrapped():
            return normalization.InputsAndResiduals(model(), diffs_stddev_by_level=stats["diffs_stddev_by_level"],
                                                    mean_by_level=stats["mean_by_level"],
                                                    stddev_by_level=stats["stddev_by_level"])

        @hk.transform_with_state
        def denoise(norm_inputs, noisy, sigma, norm_forcings):
            sigma = xarray_jax.DataArray(sigma, dims=("batch",))
            return model()._preconditioned_denoiser(norm_inputs, noisy, sigma, norm_forcings)

        @hk.transform_with_state
        def loss(inputs, targets, forcings):
            value, _ = wrapped().loss(inputs, targets, forcings)
            return xarray_jax.unwrap_data(value.mean(), require_jax=True)

        self.data, self.meta, self.stats = data, meta, stats
        norm = self.normalised(1)
        params, state = denoise.init(jax.random.PRNGKey(0), norm[0], norm[1], np.full((1,), SIGMA, np.float32), norm[2])
        self.params, self.state = perturbed_params(params, rng), state
        self.arch, self.template = arch, template
        self.forward = jax.jit(lambda p, i, x, s, f: denoise.apply(p, self.state, None, i, x, s, f)[0])

        def gradient(p, key, i, t, f):
            return jax.grad(lambda q: loss.apply(q, self.state, key, i, t, f)[0])(p)
        self.grad = jax.jit(gradient)

    def normalised(self, batch: int):
        """(normalised inputs, normalised noisy targets at SIGMA, normalised forcings) for `batch`."""
        inputs, targets, forcings = graphcast_datasets(self.data, self.meta, batch)
        norm_inputs = normalization.normalize(inputs, self.stats["stddev_by_level"], self.stats["mean_by_level"])
        norm_forcings = normalization.normalize(forcings, self.stats["stddev_by_level"], self.stats["mean_by_level"])
        rng = np.random.default_rng([batch, 11])
        noisy = xarray.Dataset({v: targets[v] * 0 + rng.standard_normal(targets[v].shape).astype(np.float32)
                                * np.float32(np.hypot(1.0, SIGMA)) for v in targets.data_vars})
        return norm_inputs, noisy, norm_forcings

    def checkpoint_file(self, directory: str) -> str:
        path = os.path.join(directory, "theirs.npz")
        stored = gencast.CheckPoint(
            params=jax.tree_util.tree_map(np.asarray, self.params), task_config=self.template.task_config,
            denoiser_architecture_config=self.arch, sampler_config=self.template.sampler_config,
            noise_config=self.template.noise_config, noise_encoder_config=self.template.noise_encoder_config,
            description="gencast-rmmd speed benchmark", license="random weights")
        with open(path, "wb") as handle:
            checkpoint.dump(handle, stored)
        return path


class Ours:
    """Our denoiser for `config` with `params`: jitted preconditioned denoiser and training-loss gradient."""

    def __init__(self, config: ModelConfig, params, normalizer, noise_config, data, meta):
        lat, lon = data["latitude"], data["longitude"]
        self.network = network_for_grid(config, lat, lon, LAYOUT.n_target_channels)
        self.normalizer, self.data, self.meta = normalizer, data, meta
        spherical = SphericalNoise.for_grid(lat, lon)
        norm = WeightedNorm(np.cos(np.deg2rad(lat)).astype(np.float32), np.ones(LAYOUT.n_target_channels, np.float32))
        network = self.network

        def denoise(params, noisy, sigma, conditioning):
            return PreconditionedDenoiser(functools.partial(network.apply, params))(noisy, sigma, conditioning)

        def loss(params, key, clean, conditioning):
            return denoising_loss(PreconditionedDenoiser(functools.partial(network.apply, params)), clean,
                                  conditioning, key, noise_config, norm, noise=spherical)[0]

        self.forward = jax.jit(denoise)
        self.grad = jax.jit(jax.grad(loss))
        if params is None:
            _, sigma, conditioning, clean = self.arrays(1)
            params = self.network.init(jax.random.PRNGKey(0), clean, sigma, conditioning)
        self.params = params

    def arrays(self, batch: int):
        """(noisy, sigma, conditioning, clean normalised residual) on our layout, the fixture's example."""
        data = self.data
        inputs = {name: np.repeat(data[f"inputs/{name}"], batch, axis=0) for name in (*LAYOUT.surface, *LAYOUT.atmospheric)}
        frames = [to_channels({k: v[:, f:f + 1] for k, v in inputs.items()}, LAYOUT.input_channels) for f in range(2)]
        physical = np.concatenate(frames, axis=-1)
        static = np.stack([data[f"inputs/{name}"] for name in LAYOUT.static], axis=-1)
        when = np.datetime64(self.meta["init_time"]) + np.timedelta64(12, "h")
        forcings = np.repeat(forcing_channels(when, data["latitude"], data["longitude"]), batch, axis=0)
        conditioning = Predictor(self.network, None, self.normalizer).conditioning(
            jnp.asarray(physical), jnp.asarray(forcings), jnp.asarray(static))
        targets = to_channels({v: np.repeat(data[f"step/{v}"], batch, axis=0)
                               for v in self.meta["target_variables_sorted"]}, LAYOUT.target_channels)
        clean = self.normalizer.normalize_targets(jnp.asarray(targets), self.normalizer.last_frame(jnp.asarray(physical)))
        sigma = jnp.full((batch,), SIGMA, jnp.float32)
        return None, sigma, conditioning, clean


def compare_forward(ours: Ours, theirs: Theirs) -> float:
    """max |ours - theirs| / std(theirs) of one denoiser call on the same noisy targets (batch 1)."""
    norm_inputs, noisy, norm_forcings = theirs.normalised(1)
    sigma = np.full((1,), SIGMA, np.float32)
    out_theirs = theirs.forward(theirs.params, norm_inputs, noisy, sigma, norm_forcings)
    names = theirs.meta["target_variables_sorted"]
    out_theirs = to_channels({v: xarray_jax.unwrap_data(out_theirs[v]) for v in names}, LAYOUT.target_channels)
    noisy_ours = to_channels({v: noisy[v].values for v in names}, LAYOUT.target_channels)
    _, sigma_ours, conditioning, _ = ours.arrays(1)
    out_ours = np.asarray(ours.forward(ours.params, jnp.asarray(noisy_ours), sigma_ours, conditioning))
    return float(np.max(np.abs(out_ours - out_theirs)) / np.std(out_theirs))


def our_calls(model: Ours, rng: np.random.Generator) -> dict:
    """name -> zero-argument call of `model`, arguments prepared (forward b1, b4; gradient b2)."""
    calls = {}
    for batch in (1, 4):
        _, sigma, conditioning, clean = model.arrays(batch)
        noisy = jnp.asarray(rng.standard_normal(clean.shape).astype(np.float32) * np.hypot(1.0, SIGMA))
        calls[f"forward_b{batch}"] = functools.partial(model.forward, model.params, noisy, sigma, conditioning)
    _, _, conditioning, clean = model.arrays(2)
    calls["grad_b2"] = functools.partial(model.grad, model.params, jax.random.PRNGKey(3), clean, conditioning)
    return calls


def their_calls(model: Theirs) -> dict:
    calls = {}
    for batch in (1, 4):
        norm_inputs, noisy, norm_forcings = model.normalised(batch)
        sigma = np.full((batch,), SIGMA, np.float32)
        calls[f"forward_b{batch}"] = functools.partial(model.forward, model.params, norm_inputs, noisy, sigma,
                                                       norm_forcings)
    inputs, targets, forcings = graphcast_datasets(model.data, model.meta, 2)
    calls["grad_b2"] = functools.partial(model.grad, model.params, jax.random.PRNGKey(3), inputs, targets, forcings)
    return calls


def interleaved(variants: dict[str, dict], repeats: int) -> dict:
    """measure -> variant -> seconds: each variant compiled (one call), then `repeats` rounds in which every
    variant runs once in turn; medians (and the first, compiling, call)."""
    result = {}
    for measure in next(iter(variants.values())):
        first = {name: _seconds(calls[measure]) for name, calls in variants.items()}
        times = {name: [] for name in variants}
        for _ in range(repeats):
            for name, calls in variants.items():
                times[name].append(_seconds(calls[measure]))
        result[measure] = {name: {"median_s": statistics.median(times[name]), "compile_and_call_s": first[name]}
                           for name in variants}
        print(f"  {measure}: " + ", ".join(f"{name} {t['median_s'] * 1e3:.1f} ms"
                                            for name, t in result[measure].items()), flush=True)
    return result


def with_ratios(timings: dict, reference: str) -> dict:
    """Add each variant's `ratio_over_<reference>` (its median / the reference's; > 1: the reference is faster)."""
    for per_variant in timings.values():
        for t in per_variant.values():
            t[f"ratio_over_{reference}"] = t["median_s"] / per_variant[reference]["median_s"]
    return timings


def count(params) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def imported_teacher(theirs: "Theirs"):
    with tempfile.TemporaryDirectory() as scratch:
        return import_gencast(read_gencast_checkpoint(theirs.checkpoint_file(scratch)), FIXTURE / "stats", LAYOUT)


def banded(config: ModelConfig) -> ModelConfig:
    """`config` with configs/model/demo.yaml's banded attention: the dense k-hop mask's function, computed in
    one key window per block of 64 queries."""
    processor = config.processor.model_copy(update={"attention": "banded", "block_size": 64})
    return config.model_copy(update={"processor": processor})


def ours_vs_graphcast(size: str, repeats: int, fixture) -> dict:
    """graphcast's GenCast against ours as `import gencast` makes it (dense) and with banded attention."""
    data, meta, stats, template = fixture
    theirs = Theirs(size, template, stats, data, meta, np.random.default_rng([7, len(size)]))
    imported = imported_teacher(theirs)
    ours = {"ours": Ours(imported.model, imported.params, imported.normalizer, imported.noise, data, meta),
            "ours_banded": Ours(banded(imported.model), imported.params, imported.normalizer, imported.noise,
                                data, meta)}
    differences = {name: compare_forward(model, theirs) for name, model in ours.items()}
    for name, difference in differences.items():
        if not difference <= MAX_RELATIVE_DIFF:
            raise SystemExit(f"{size}: {name}'s forward differs from graphcast's by {difference:.2e} of its std "
                             f"(> {MAX_RELATIVE_DIFF}); not the same function, no timing")
    print(f"{size}: forward max |ours - theirs| / std = {differences}; interleaved", flush=True)
    variants = {name: our_calls(model, np.random.default_rng(5)) for name, model in ours.items()}
    variants["theirs"] = their_calls(theirs)
    return {"architecture": dict(zip(("mesh_size", "latent_size", "hidden_layers", "num_layers", "num_heads",
                                      "ffw_hidden", "attention_k_hop"), SIZES[size])),
            "parameters_ours": count(ours["ours"].params), "parameters_theirs": count(theirs.params),
            "our_model_config": imported.model.model_dump(mode="json"),
            "forward_max_abs_diff_over_std": differences,
            "timings": with_ratios(interleaved(variants, repeats), "ours")}


def default_vs_gencast(repeats: int, fixture) -> dict:
    """Our default demo architecture against our GenCast-exact mode (dense, banded) at the demo size."""
    data, meta, stats, template = fixture
    imported = imported_teacher(Theirs("demo", template, stats, data, meta, np.random.default_rng([7, 4])))
    default_config = ModelConfig(**read_yaml_mapping(REPO / "configs" / "model" / "demo.yaml")["model"])
    models = {"gencast": Ours(imported.model, imported.params, imported.normalizer, imported.noise, data, meta),
              "gencast_banded": Ours(banded(imported.model), imported.params, imported.normalizer, imported.noise,
                                     data, meta),
              "default": Ours(default_config, None, imported.normalizer, imported.noise, data, meta)}
    print("demo: interleaved our GenCast-exact mode (dense, banded) and our default", flush=True)
    timings = interleaved({name: our_calls(model, np.random.default_rng(5)) for name, model in models.items()},
                          repeats)
    return {"model_configs": {name: model_config.model_dump(mode="json") for name, model_config in
                              (("gencast", imported.model), ("gencast_banded", banded(imported.model)),
                               ("default", default_config))},
            "parameters": {name: count(model.params) for name, model in models.items()},
            "timings": with_ratios(timings, "gencast_banded")}


def machine() -> dict:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", __file__], capture_output=True,
                           text=True).stdout.strip()
    return {"commit": commit, "script_sha256": script, "script_uncommitted": bool(dirty), "host": socket.gethostname(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS"), "load_average_start": list(os.getloadavg())}


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=["fixture"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--default-vs-gencast", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if len(jax.devices()) != 1:
        raise SystemExit(f"{len(jax.devices())} devices: unset XLA_FLAGS for one CPU device")
    payload = {"machine": machine(), "repeats": args.repeats, "grid": "64x32", "sizes": {}}
    fixture = fixture_data()
    for size in args.sizes:
        payload["sizes"][size] = ours_vs_graphcast(size, args.repeats, fixture)
    if args.default_vs_gencast:
        payload["default_vs_gencast_demo"] = default_vs_gencast(args.repeats, fixture)
    payload["machine"]["load_average_end"] = list(os.getloadavg())
    print(f"{'size':8} {'measure':11} {'ours ms':>8} {'banded ms':>9} {'theirs ms':>9} {'theirs/ours':>11} "
          f"{'theirs/banded':>13}")
    for size, result in payload["sizes"].items():
        for measure, t in result["timings"].items():
            print(f"{size:8} {measure:11} {t['ours']['median_s'] * 1e3:8.1f} {t['ours_banded']['median_s'] * 1e3:9.1f} "
                  f"{t['theirs']['median_s'] * 1e3:9.1f} {t['theirs']['ratio_over_ours']:11.2f} "
                  f"{t['theirs']['median_s'] / t['ours_banded']['median_s']:13.2f}")
    if "default_vs_gencast_demo" in payload:
        print(f"{'measure':11} {'gencast ms':>10} {'gencast_banded ms':>17} {'default ms':>10} "
              f"{'default/gencast_banded':>22}")
        for measure, t in payload["default_vs_gencast_demo"]["timings"].items():
            print(f"{measure:11} {t['gencast']['median_s'] * 1e3:10.1f} {t['gencast_banded']['median_s'] * 1e3:17.1f} "
                  f"{t['default']['median_s'] * 1e3:10.1f} {t['default']['ratio_over_gencast_banded']:22.2f}")
    if args.out:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
