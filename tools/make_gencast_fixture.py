"""Write the GenCast parity fixture with google-deepmind/graphcast's own code.

Not part of the package and not run in CI. Run it with an interpreter that has
graphcast's dependencies and a checkout of graphcast at the commit the published
checkpoints refer to (08cf736, "Bump version to 0.2") on PYTHONPATH:

    SCRATCH=$(mktemp -d)          # graphcast's source and its venv, outside the checkout
    mkdir $SCRATCH/gc_src && git -C graphcast archive 08cf736 | tar -x -C $SCRATCH/gc_src
    python -m venv $SCRATCH/gc_venv
    $SCRATCH/gc_venv/bin/pip install jax==0.4.35 dm-haiku==0.0.13 jraph chex "numpy<2.1" scipy \
        trimesh==5.2.0 rtree==1.4.1 xarray pandas dm-tree dask scikit-learn pint tree-math \
        tensorstore zarr && $SCRATCH/gc_venv/bin/pip install --no-deps dinosaur-dycore xarray-tensorstore
    PYTHONPATH=$SCRATCH/gc_src $SCRATCH/gc_venv/bin/python tools/make_gencast_fixture.py tests/fixtures/gencast

For each case (grid x mesh size; `grid64x32_mesh2_sst` adds sea surface temperature, NaN over land,
wrapped in graphcast's `nan_cleaning.NaNCleaner` with the minimum statistic as GenCast's demo does;
its data are drawn after the other fields, so adding it left the other cases' files bit-identical)
it writes, in graphcast's formats:
- `CASE.npz`: a random-initialised GenCast checkpoint (`checkpoint.dump` of
  `gencast.CheckPoint`: keys `params:<module path>:<name>`, `task_config:...`,
  `denoiser_architecture_config:...`, `sampler_config:...`, ...). The init is
  perturbed (every weight + N(0, 0.25/sqrt(fan_in)), every bias + N(0, 0.05)),
  so no path of the network is zero, as graphcast's init leaves several;
- `stats/{diffs_stddev,mean,stddev,min}_by_level.nc` (shared by all cases);
- `CASE_io.npz`: inputs and graphcast's outputs:
  (a) `denoise/I/raw/...`: the raw network F at each noise level I of
      `denoise/noise_levels`, and `denoise/1/denoised/...` the preconditioned
      denoiser D at the middle one, on normalised data; the clean targets are
      `fixture_noise(seed, 1000, ...)` and the noise at level I `fixture_noise(seed, 1001 + I, ...)`;
  (b) `step/...`: one full 12 h DPM-Solver++ 2S step with churn (physical units);
  (c) `rollout/...`: a 2-step rollout (physical units).
Fields are stored per variable as `<group>/<variable>` with graphcast's dims
(batch, time, lat, lon[, level]). Sampler noise is not random: the n-th draw
of a run (graphcast draws one field per target variable at every call of
`spherical_white_noise_like`) is `fixture_noise(seed, n, k, shape)` for the
k-th target variable in sorted order, so a test regenerates it without storing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import haiku as hk
import jax
import numpy as np
import xarray

from graphcast import checkpoint, data_utils, denoiser, gencast, graphcast, normalization, rollout
from graphcast import nan_cleaning, samplers_utils, xarray_jax

from gencast_rmmd.teacher.gencast_checkpoint import perturbed_params

LEVELS = (500, 850)
TARGETS = ("2m_temperature", "total_precipitation_12hr", "temperature", "geopotential")
FORCINGS = graphcast.GENERATED_FORCING_VARS
INPUTS = ("2m_temperature", "temperature", "geopotential") + FORCINGS + graphcast.STATIC_VARS
INIT_TIME = np.datetime64("2019-03-07T12:00")
NOISE_SEED = 20240
PHYSICAL = {  # (mean, std, diffs_std) of the invented data, per variable
    "2m_temperature": (280.0, 20.0, 3.0),
    "total_precipitation_12hr": (0.002, 0.004, 0.004),
    "temperature": (250.0, 15.0, 2.0),
    "geopotential": (50000.0, 3000.0, 300.0),
    "geopotential_at_surface": (3000.0, 6000.0, None),
    "land_sea_mask": (0.3, 0.45, None),
    "sea_surface_temperature": (290.0, 8.0, 0.5),      # NaN over land (land_sea_mask > 0.5), as in ERA5
}
SST = "sea_surface_temperature"

CASES = {
    # name: (latitudes, longitudes, mesh_size, attention_k_hop, extra input-and-target surface variables)
    "grid64x32_mesh2": (np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625, 2, 4, ()),
    "grid64x32_mesh3": (np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625, 3, 2, ()),
    "grid7p5poles_mesh2": (np.linspace(-90.0, 90.0, 25), np.arange(48) * 7.5, 2, 4, ()),
    # sea surface temperature with NaN over land, cleaned by graphcast's NaNCleaner as GenCast's demo does
    "grid64x32_mesh2_sst": (np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625, 2, 4, (SST,)),
}


def fixture_noise(seed: int, draw: int, variable_index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The sampler's `draw`-th noise field of target variable `variable_index` (float32, N(0, 1))."""
    return np.random.default_rng([seed, draw, variable_index]).standard_normal(shape).astype(np.float32)


class ReplayedNoise:
    """Stands in for `samplers_utils.spherical_white_noise_like`: draws counted, values from `fixture_noise`."""

    def __init__(self, seed: int, targets: tuple[str, ...] = TARGETS):
        self.seed, self.draws, self.targets = seed, 0, targets

    def __call__(self, template: xarray.Dataset) -> xarray.Dataset:
        names = sorted(self.targets)
        fields = {}
        for name in template.data_vars:
            field = template[name]
            values = fixture_noise(self.seed, self.draws, names.index(name), field.shape)
            fields[name] = xarray_jax.DataArray(jax.numpy.asarray(values), dims=field.dims, coords=field.coords)
        self.draws += 1
        return xarray.Dataset(fields)


def python_fori_loop(lower, upper, body_fun, init_val):
    """hk.fori_loop as a Python loop, so every noise draw happens (and is counted) at run time."""
    value = init_val
    for index in range(int(lower), int(upper)):
        value = body_fun(jax.numpy.asarray(index), value)
    return value


def statistics() -> dict[str, xarray.Dataset]:
    """graphcast's four statistics files for the fixture's variables (by level where atmospheric)."""
    level = xarray.DataArray(np.asarray(LEVELS, np.int32), dims=("level",))

    def field(name, value, scale):
        if name in ("temperature", "geopotential"):
            return xarray.DataArray(value * (1.0 + scale * np.arange(len(LEVELS))), dims=("level",),
                                    coords={"level": level})
        return xarray.DataArray(np.float64(value))

    mean, std, diffs, minimum = {}, {}, {}, {}
    for name, (mu, sd, dsd) in PHYSICAL.items():
        mean[name], std[name] = field(name, mu, 0.05), field(name, sd, 0.1)
        minimum[name] = field(name, mu - 4 * sd, 0.05)
        if dsd is not None:
            diffs[name] = field(name, dsd, -0.2)
    for name in FORCINGS:
        mean[name], std[name] = field(name, 0.01, 0.0), field(name, 0.7071, 0.0)
        diffs[name], minimum[name] = field(name, 0.05, 0.0), field(name, -1.0, 0.0)
    return {"mean_by_level": xarray.Dataset(mean), "stddev_by_level": xarray.Dataset(std),
            "diffs_stddev_by_level": xarray.Dataset(diffs), "min_by_level": xarray.Dataset(minimum)}


def example_dataset(latitude: np.ndarray, longitude: np.ndarray, rng: np.random.Generator,
                    extra: tuple[str, ...] = ()) -> xarray.Dataset:
    """Four 12-hourly frames (init - 12 h .. init + 24 h) of smooth random fields, graphcast's layout."""
    times = np.arange(-1, 3) * np.timedelta64(12, "h")
    lat_rad, lon_rad = np.deg2rad(latitude)[:, None], np.deg2rad(longitude)[None, :]

    def smooth(time_count, extra=()):
        """Large-scale waves (wavenumbers 1-3) times cos(lat), plus small-scale noise."""
        shape = (1, time_count, len(latitude), len(longitude), *extra)
        waves = sum(rng.standard_normal() / wave * np.cos(wave * lon_rad + rng.uniform(0, 2 * np.pi))
                    * np.cos(lat_rad) for wave in range(1, 4))
        return waves.reshape(1, 1, *waves.shape, *([1] * len(extra))) + 0.3 * rng.standard_normal(shape)

    data = {}
    for name in ("2m_temperature", "total_precipitation_12hr"):
        mu, sd, _ = PHYSICAL[name]
        values = mu + sd * smooth(len(times))
        if name == "total_precipitation_12hr":
            values = np.maximum(values, 0.0)
        data[name] = (("batch", "time", "lat", "lon"), values.astype(np.float32))
    for name in ("temperature", "geopotential"):
        mu, sd, _ = PHYSICAL[name]
        data[name] = (("batch", "time", "lat", "lon", "level"),
                      (mu + sd * smooth(len(times), (len(LEVELS),))).astype(np.float32))
    for name in graphcast.STATIC_VARS:
        mu, sd, _ = PHYSICAL[name]
        values = mu + sd * smooth(1)[0, 0]
        if name == "land_sea_mask":
            values = np.clip(values, 0.0, 1.0)
        data[name] = (("lat", "lon"), values.astype(np.float32))
    if SST in extra:    # drawn after every other field, so the cases without it keep their data
        mu, sd, _ = PHYSICAL[SST]
        land = data["land_sea_mask"][1] > 0.5
        values = (mu + sd * smooth(len(times))).astype(np.float32)
        values[..., land] = np.nan
        data[SST] = (("batch", "time", "lat", "lon"), values)
    coords = {"lat": latitude.astype(np.float32), "lon": longitude.astype(np.float32),
              "level": np.asarray(LEVELS, np.int32), "time": times,
              "datetime": (("batch", "time"), (INIT_TIME + times)[None])}
    return xarray.Dataset(data, coords=coords)


def architecture(mesh_size: int, k_hop: int) -> denoiser.DenoiserArchitectureConfig:
    transformer = denoiser.SparseTransformerConfig(
        attention_k_hop=k_hop, d_model=16, num_layers=2, num_heads=4, attention_type="triblockdiag_mha",
        mask_type="full", ffw_hidden=32)
    return denoiser.DenoiserArchitectureConfig(sparse_transformer_config=transformer, mesh_size=mesh_size,
                                               latent_size=16, hidden_layers=1,
                                               radius_query_fraction_edge_length=0.6)


def write_case(name: str, out_dir: str, stats: dict[str, xarray.Dataset]) -> dict:
    latitude, longitude, mesh_size, k_hop, extra = CASES[name]
    targets_of_case, inputs_of_case = TARGETS + extra, INPUTS + extra
    rng = np.random.default_rng([7, mesh_size, len(latitude)])
    dataset = example_dataset(latitude, longitude, rng, extra)
    inputs, targets, forcings = data_utils.extract_inputs_targets_forcings(
        dataset, input_variables=inputs_of_case, target_variables=targets_of_case, forcing_variables=FORCINGS,
        pressure_levels=LEVELS, input_duration="24h", target_lead_times=slice("12h", "24h"))
    task = graphcast.TaskConfig(input_variables=inputs_of_case, target_variables=targets_of_case,
                                forcing_variables=FORCINGS, pressure_levels=LEVELS, input_duration="24h")
    sampler_config = gencast.SamplerConfig(num_noise_levels=5, max_noise_level=80.0, min_noise_level=0.03,
                                           stochastic_churn_rate=2.5, churn_min_noise_level=0.75)
    noise_config, noise_encoder_config = gencast.NoiseConfig(), denoiser.NoiseEncoderConfig()
    arch = architecture(mesh_size, k_hop)

    def model():
        return gencast.GenCast(task_config=task, denoiser_architecture_config=dataclasses.replace(arch),
                               sampler_config=sampler_config, noise_config=noise_config,
                               noise_encoder_config=noise_encoder_config)

    def wrapped():
        normalised = normalization.InputsAndResiduals(model(), diffs_stddev_by_level=stats["diffs_stddev_by_level"],
                                                      mean_by_level=stats["mean_by_level"],
                                                      stddev_by_level=stats["stddev_by_level"])
        if SST not in extra:
            return normalised
        return nan_cleaning.NaNCleaner(normalised, var_to_clean=SST, fill_value=stats["min_by_level"],
                                       reintroduce_nans=True)

    def cleaned(dataset):
        """The inputs GenCast's network sees: NaN SST filled with its minimum, as NaNCleaner does."""
        if SST not in dataset.data_vars:
            return dataset
        return dataset.assign({SST: dataset[SST].fillna(stats["min_by_level"][SST])})

    first_inputs = inputs
    first_targets = targets.isel(time=slice(0, 1))
    first_forcings = forcings.isel(time=slice(0, 1))
    norm_inputs = normalization.normalize(cleaned(first_inputs), stats["stddev_by_level"], stats["mean_by_level"])
    norm_forcings = normalization.normalize(first_forcings, stats["stddev_by_level"], stats["mean_by_level"])

    # (a) the denoiser at several noise levels, on normalised data: the raw network F at every level,
    # the preconditioned D at the middle one. Clean targets and noise come from `fixture_noise`.
    noise_levels = np.asarray([0.03, 1.0, 60.0], np.float32)
    names = sorted(targets_of_case)

    def seeded(draw):
        return xarray.Dataset({v: first_targets[v].fillna(0) * 0 + fixture_noise(NOISE_SEED, draw, names.index(v),
                                                                       first_targets[v].shape)
                               for v in first_targets.data_vars})

    clean = seeded(1000)

    @hk.transform_with_state
    def denoise(noisy, sigma):
        gen = model()
        sigma = xarray_jax.DataArray(sigma, dims=("batch",))
        raw = gen._denoiser(inputs=norm_inputs, noisy_targets=noisy * gen._c_in(sigma), noise_levels=sigma,
                            forcings=norm_forcings)
        return gen._preconditioned_denoiser(norm_inputs, noisy, sigma, norm_forcings), raw

    params, state = denoise.init(jax.random.PRNGKey(0), clean, noise_levels[:1])
    params = perturbed_params(params, rng)
    result = {"denoise/noise_levels": noise_levels}
    for index, sigma in enumerate(noise_levels):
        noisy = clean + np.float32(sigma) * seeded(1001 + index)
        (denoised, raw), _ = denoise.apply(params, state, None, noisy, np.asarray([sigma], np.float32))
        for v in clean.data_vars:
            result[f"denoise/{index}/raw/{v}"] = np.asarray(xarray_jax.unwrap_data(raw[v]))
            if index == 1:
                result[f"denoise/{index}/denoised/{v}"] = np.asarray(xarray_jax.unwrap_data(denoised[v]))

    # (b) one full sampler step and (c) a 2-step rollout, with replayed noise.
    replay = ReplayedNoise(NOISE_SEED, targets_of_case)
    samplers_utils.spherical_white_noise_like = replay
    hk.fori_loop = python_fori_loop

    @hk.transform_with_state
    def predict(inputs, targets_template, forcings):
        return wrapped()(inputs, targets_template, forcings)

    def predictor_fn(rng, inputs, targets_template, forcings):
        return predict.apply(params, state, rng, inputs, targets_template, forcings)[0]

    step = predictor_fn(jax.random.PRNGKey(1), first_inputs, first_targets * np.nan, first_forcings)
    draws_per_step = replay.draws
    replay.draws = 0
    trajectory = rollout.chunked_prediction(predictor_fn, jax.random.PRNGKey(1), inputs, targets * np.nan,
                                            forcings, num_steps_per_chunk=1)
    for v in targets_of_case:
        result[f"step/{v}"] = np.asarray(step[v].values)
        result[f"rollout/{v}"] = np.asarray(trajectory[v].values)
    for v in first_inputs.data_vars:
        result[f"inputs/{v}"] = np.asarray(first_inputs[v].values)
    for v in forcings.data_vars:
        result[f"forcings/{v}"] = np.asarray(forcings[v].values)
    result["latitude"], result["longitude"] = latitude, longitude
    meta = {"case": name, "init_time": str(INIT_TIME), "noise_seed": NOISE_SEED,
            "noise_draws_per_step": draws_per_step, "target_variables_sorted": sorted(targets_of_case),
            "dims": {f"{group}/{v}": list(ds[v].dims)
                     for group, ds in (("inputs", first_inputs), ("step", step), ("forcings", forcings))
                     for v in ds.data_vars}}
    result["meta"] = np.asarray(json.dumps(meta))
    np.savez_compressed(os.path.join(out_dir, f"{name}_io.npz"), **result)

    stored = gencast.CheckPoint(
        params=jax.tree_util.tree_map(np.asarray, params), task_config=task,
        denoiser_architecture_config=arch, sampler_config=sampler_config, noise_config=noise_config,
        noise_encoder_config=noise_encoder_config, description=f"gencast-rmmd parity fixture {name}",
        license="CC BY-SA 4.0 (random weights, test fixture)")
    with open(os.path.join(out_dir, f"{name}.npz"), "wb") as handle:
        checkpoint.dump(handle, stored)
    std = float(np.nanstd(np.concatenate([result[f"step/{v}"].ravel() for v in targets_of_case])))
    return {"case": name, "draws_per_step": draws_per_step,
            "raw_std": float(np.std(np.concatenate([result[f"denoise/0/raw/{v}"].ravel()
                                                    for v in targets_of_case]))),
            "step_std": std}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    os.makedirs(os.path.join(args.out_dir, "stats"), exist_ok=True)
    stats = statistics()
    for name, dataset in stats.items():
        dataset.to_netcdf(os.path.join(args.out_dir, "stats", f"{name}.nc"))
    for name in args.cases:
        print(json.dumps(write_case(name, args.out_dir, stats)))


if __name__ == "__main__":
    main()
