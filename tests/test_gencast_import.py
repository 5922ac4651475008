"""Parity with DeepMind's GenCast: an imported graphcast checkpoint reproduces graphcast's own outputs.

The fixture (tests/fixtures/gencast, written by tools/make_gencast_fixture.py with
google-deepmind/graphcast at 08cf736) holds random-initialised GenCast checkpoints in
graphcast's npz format, graphcast's statistics files, inputs, and graphcast's outputs for
(a) the network at several noise levels, (b) one DPM-Solver++ 2S step with churn and
(c) a 2-step rollout, on 64x32 (mesh 2 and 3) and a 7.5-degree grid with poles (mesh 2);
(a) is checked on all three, (b) and (c) on 64x32 mesh 3 and 7.5 degrees mesh 2. A fourth case adds sea
surface temperature, NaN over land, which graphcast's `NaNCleaner` fills with its minimum statistic and
puts back in the predictions: (a), (b) and (c) on it check our filling and NaN restoration too.
The sampler's noise is replayed: draw n of target variable k is `fixture_noise(seed, n, k)`.
Each case's network and teacher step are compiled once (most of the file's time).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.data.forcings import forcing_channels
from gencast_rmmd.data.layout import ChannelLayout
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser, c_in
from gencast_rmmd.diffusion.samplers import DPMSolverPlusPlus2S
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.forecast.predictor import Predictor
from gencast_rmmd.models.builder import network_for_grid
from gencast_rmmd.teacher.gencast_checkpoint import read_gencast_checkpoint
from gencast_rmmd.teacher.gencast_import import import_gencast

FIXTURE = Path(__file__).parent / "fixtures" / "gencast"
SST_CASE = "grid64x32_mesh2_sst"
CASES = ("grid64x32_mesh2", "grid64x32_mesh3", "grid7p5poles_mesh2", SST_CASE)
# The sampler's parity on two mesh sizes and two grids, and with NaN SST; its network is (a)'s, checked on all.
SAMPLER_CASES = ("grid64x32_mesh3", "grid7p5poles_mesh2", SST_CASE)
LAYOUT = ChannelLayout(surface=("2m_temperature",), atmospheric=("temperature", "geopotential"),
                       target_only=("total_precipitation_12hr",), static=("geopotential_at_surface", "land_sea_mask"),
                       levels=(500, 850), input_frames=2)
LAYOUTS = {name: LAYOUT for name in CASES} | {
    SST_CASE: ChannelLayout(surface=("2m_temperature", "sea_surface_temperature"), atmospheric=LAYOUT.atmospheric,
                            target_only=LAYOUT.target_only, static=LAYOUT.static, levels=LAYOUT.levels,
                            input_frames=2)}


def fixture_noise(seed: int, draw: int, variable_index: int, shape: tuple[int, ...]) -> np.ndarray:
    """tools/make_gencast_fixture.py's replayed noise."""
    return np.random.default_rng([seed, draw, variable_index]).standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def case(name: str):
    """(imported teacher, network, fixture arrays, meta) of one fixture case (read and converted once)."""
    stored = np.load(FIXTURE / f"{name}_io.npz")
    data = {key: stored[key] for key in stored.files}
    meta = json.loads(str(data.pop("meta")))
    layout = LAYOUTS[name]
    imported = import_gencast(read_gencast_checkpoint(FIXTURE / f"{name}.npz"), FIXTURE / "stats", layout)
    network = network_for_grid(imported.model, data["latitude"], data["longitude"], layout.n_target_channels)
    return imported, network, data, meta


# Compilation is most of these tests' time: XLA's backend optimisation level 0 (LLVM without its
# optimisation passes; the same HLO program) halves it. Outputs differ from level 3 by rounding only
# (measured: 4e-3 of a geopotential ~5e4, i.e. 1e-7 relative) and the errors below are unchanged.
fast_compiling_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@functools.lru_cache(maxsize=None)
def compiled_network(name: str):
    """The case's network F, jitted once: every noise level and the denoiser D reuse one compilation."""
    return fast_compiling_jit(case(name)[1].apply)


@functools.lru_cache(maxsize=None)
def compiled_sampler(name: str):
    """One teacher step (`Predictor.sample`) of the case, jitted once with the replayed noise as arguments.

    `table[j]` is the draw the sampler receives for the key whose raw data is `key_data[j]`, so the
    step and the rollout's second step (other keys, other draws) share one compilation.
    """
    imported, network, _, _ = case(name)

    def sample(params, inputs, forcings, static, key, table, key_data):
        def noise(draw_key: jax.Array, draw_shape) -> jax.Array:
            index = jnp.argmax(jnp.all(key_data == jax.random.key_data(draw_key), axis=-1))
            return table[index].reshape(draw_shape)

        predictor = Predictor(network, DPMSolverPlusPlus2S(imported.sampler, noise), imported.normalizer)
        return predictor.sample(params, inputs, forcings, static, key)

    return fast_compiling_jit(sample)


def to_channels(fields: dict[str, np.ndarray], channels, time: int = 0) -> np.ndarray:
    """graphcast per-variable fields (batch, time, lat, lon[, level]) -> [batch, lat, lon, C] in `channels` order."""
    columns = []
    for channel in channels:
        field = fields[channel.variable][:, time]
        if channel.level is not None:
            field = field[..., LAYOUT.levels.index(channel.level)]
        columns.append(field)
    return np.stack(columns, axis=-1)


def physical_inputs(data: dict, layout: ChannelLayout = LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """Our stacked input frames [B, lat, lon, F * C_in] and static fields [lat, lon, C_s]."""
    fields = {name: data[f"inputs/{name}"] for name in (*layout.surface, *layout.atmospheric)}
    inputs = np.concatenate([to_channels(fields, layout.input_channels, frame) for frame in range(2)], axis=-1)
    static = np.stack([data[f"inputs/{name}"] for name in layout.static], axis=-1)
    return inputs, static


def target_noise(seed: int, draw: int, shape: tuple[int, ...], names: list[str],
                 layout: ChannelLayout = LAYOUT) -> np.ndarray:
    """The replayed draw `draw` for every target channel: [B, lat, lon, C_target] in our order."""
    fields = {}
    for index, name in enumerate(names):
        levels = (len(layout.levels),) if name in layout.atmospheric else ()
        fields[name] = fixture_noise(seed, draw, index, (*shape, *levels))
    return to_channels(fields, layout.target_channels)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / std(theirs)."""
    return float(np.max(np.abs(np.asarray(ours) - theirs)) / np.std(theirs))


def relative_rms_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """rms(ours - theirs) / std(theirs)."""
    return float(np.sqrt(np.mean(np.square(np.asarray(ours) - theirs))) / np.std(theirs))


# graphcast's own float32 rounding: our network evaluated in float64 differs from graphcast's float32
# output by up to 1.6e-5 of the std (max over 6 x 2048 values) on these random weights, so the largest
# single-value error is bounded at 2.5e-5 and the rms at 1e-5 (measured: max 2.4e-6..1.5e-5, rms ~1e-6).
MAX_DENOISER_ERROR, RMS_DENOISER_ERROR = 2.5e-5, 1e-5


def init_time(meta: dict) -> np.datetime64:
    return np.datetime64(meta["init_time"])


@pytest.mark.parametrize("name", CASES)
def test_forcings_match_graphcast(name):
    """Our target-time forcings equal graphcast's data_utils ones (float32 rounding)."""
    _, _, data, meta = case(name)
    ours = forcing_channels(init_time(meta) + np.timedelta64(12, "h"), data["latitude"], data["longitude"])[0]
    for index, forcing in enumerate(LAYOUT.forcings):
        theirs = np.broadcast_to(data[f"forcings/{forcing}"][0, 0][..., None, :] if "day" in forcing
                                 else data[f"forcings/{forcing}"][0, 0], ours.shape[:2])
        np.testing.assert_allclose(ours[..., index], theirs, atol=2e-6)


@pytest.mark.parametrize("name", CASES)
def test_denoiser_matches_graphcast(name):
    """(a) The imported network F at noise levels 0.03, 1 and 60, and D at 1, are graphcast's to rounding."""
    imported, network, data, meta = case(name)
    names, layout = meta["target_variables_sorted"], LAYOUTS[name]
    inputs, static = physical_inputs(data, layout)
    shape = (1, 1, len(data["latitude"]), len(data["longitude"]))
    forcings = forcing_channels(init_time(meta) + np.timedelta64(12, "h"), data["latitude"], data["longitude"])
    predictor = Predictor(network, None, imported.normalizer)
    conditioning = predictor.conditioning(jnp.asarray(inputs), jnp.asarray(forcings), jnp.asarray(static))
    raw_network = functools.partial(compiled_network(name), imported.params)
    clean = target_noise(meta["noise_seed"], 1000, shape, names, layout)
    for index, sigma in enumerate(data["denoise/noise_levels"]):
        noisy = clean + np.float32(sigma) * target_noise(meta["noise_seed"], 1001 + index, shape, names, layout)
        level = jnp.full((1,), sigma, jnp.float32)
        raw = raw_network(c_in(level)[:, None, None, None] * noisy, level, conditioning)
        theirs = to_channels({v: data[f"denoise/{index}/raw/{v}"] for v in names}, layout.target_channels)
        assert relative_error(raw, theirs) <= MAX_DENOISER_ERROR, (sigma, relative_error(raw, theirs))
        assert relative_rms_error(raw, theirs) <= RMS_DENOISER_ERROR
        if index == 1:
            # The same preconditioning `Predictor.denoiser` wraps around the network, around the jitted F.
            denoised = PreconditionedDenoiser(raw_network)(jnp.asarray(noisy), level, conditioning)
            theirs = to_channels({v: data[f"denoise/1/denoised/{v}"] for v in names}, layout.target_channels)
            assert relative_error(denoised, theirs) <= MAX_DENOISER_ERROR
            assert relative_rms_error(denoised, theirs) <= RMS_DENOISER_ERROR


def replayed_noise(meta: dict, key: jax.Array, draw_offset: int, shape: tuple[int, ...], sampler_levels: int):
    """(table, key_data): graphcast's replayed draws for the keys our sampler will use from `key`.

    graphcast draws, at iteration i of a step, the initial noise (draw 2i, used at i = 0) and the
    churn noise (draw 2i + 1). Our sampler draws from init_key and from step_keys[i].
    """
    init_key, churn_key = jax.random.split(key)
    keys = [init_key, *jax.random.split(churn_key, sampler_levels)]
    draws = [0, *(2 * i + 1 for i in range(sampler_levels))]
    names = meta["target_variables_sorted"]
    layout = LAYOUTS[meta["case"]]
    table = jnp.stack([jnp.asarray(target_noise(meta["noise_seed"], draw_offset + d, shape, names, layout))
                       for d in draws])
    return table, jnp.stack([jax.random.key_data(k) for k in keys])


def sample_step(name, inputs, static, forcing_time, key, draw_offset):
    """One teacher step of case `name` from physical inputs, with graphcast's replayed noise."""
    imported, _, data, meta = case(name)
    grid_shape = (len(data["latitude"]), len(data["longitude"]))
    table, key_data = replayed_noise(meta, key, draw_offset, (1, 1, *grid_shape), imported.sampler.num_noise_levels)
    forcings = forcing_channels(forcing_time, data["latitude"], data["longitude"])
    return compiled_sampler(name)(imported.params, jnp.asarray(inputs), jnp.asarray(forcings), jnp.asarray(static),
                                  key, table, key_data)


def normalised_error(imported, ours, theirs, last_input) -> float:
    """max |ours - theirs| in the model's normalised units / std of graphcast's normalised step.

    NaN (SST over land) must sit at the same points in both; the error is taken over the others.
    """
    normalizer, ours = imported.normalizer, np.asarray(ours)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), "NaN at other points than graphcast's"
    theirs_normalised = np.asarray(normalizer.normalize_targets(theirs, last_input))
    difference = np.abs(ours - theirs) / normalizer.target_scale
    return float(np.nanmax(difference) / np.std(theirs_normalised))


@pytest.mark.parametrize("name", SAMPLER_CASES)
def test_sampler_step_and_rollout_match_graphcast(name):
    """(b) one DPM-Solver++ 2S 12 h step with churn and (c) a 2-step rollout: graphcast's to 1e-4."""
    imported, network, data, meta = case(name)
    names, layout = meta["target_variables_sorted"], LAYOUTS[name]
    inputs, static = physical_inputs(data, layout)
    start = init_time(meta)
    first = sample_step(name, inputs, static, start + np.timedelta64(12, "h"), jax.random.PRNGKey(3), 0)
    step = to_channels({v: data[f"step/{v}"] for v in names}, layout.target_channels)
    last = imported.normalizer.last_frame(inputs)
    assert normalised_error(imported, first, step, last) <= 1e-4

    rollout = {v: data[f"rollout/{v}"] for v in names}
    assert normalised_error(imported, first, to_channels(rollout, layout.target_channels, 0), last) <= 1e-4
    second_inputs = np.asarray(Predictor(network, None, imported.normalizer).next_inputs(jnp.asarray(inputs), first))
    second = sample_step(name, second_inputs, static, start + np.timedelta64(24, "h"), jax.random.PRNGKey(4),
                         meta["noise_draws_per_step"])
    theirs = to_channels(rollout, layout.target_channels, 1)
    assert normalised_error(imported, second, theirs, imported.normalizer.last_frame(second_inputs)) <= 1e-4


def test_not_a_gencast_checkpoint(tmp_path):
    """A file that is not an npz (numpy's own words, "pickled data", are not passed on), an npz without
    graphcast's keys, and a missing file are one-line UserInputErrors saying what to give instead."""
    garbage = tmp_path / "x.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match=r"x.npz is not a graphcast GenCast checkpoint \(not an .npz") as error:
        read_gencast_checkpoint(garbage)
    assert "pickle" not in str(error.value) and "\n" not in str(error.value)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes((FIXTURE / f"{CASES[0]}.npz").read_bytes()[:5000])
    with pytest.raises(UserInputError, match="cut.npz is not a graphcast GenCast checkpoint"):
        read_gencast_checkpoint(truncated)
    other = tmp_path / "y.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(UserInputError, match="not a graphcast GenCast checkpoint .no params, task_config"):
        read_gencast_checkpoint(other)
    with pytest.raises(UserInputError, match="no GenCast checkpoint at"):
        read_gencast_checkpoint(tmp_path / "missing.npz")


def test_configuration_is_read_without_the_parameters():
    """`with_params=False` (a pipeline naming a remote checkpoint) gives the same configuration, no arrays."""
    full = read_gencast_checkpoint(FIXTURE / f"{CASES[0]}.npz")
    config_only = read_gencast_checkpoint(FIXTURE / f"{CASES[0]}.npz", with_params=False)
    assert config_only.params == {} and len(full.params) > 0
    assert json.dumps(config_only.config, sort_keys=True, default=str) == \
        json.dumps(full.config, sort_keys=True, default=str)


def test_statistics_and_layout_checked(tmp_path):
    """Missing statistics files, a statistic without a needed variable, and a data layout that is not the
    checkpoint's task are refused with one line naming what to do."""
    checkpoint = read_gencast_checkpoint(FIXTURE / f"{CASES[0]}.npz")
    with pytest.raises(UserInputError, match="lacks GenCast's statistics"):
        import_gencast(checkpoint, tmp_path, LAYOUT)
    import xarray as xr
    for path in (FIXTURE / "stats").iterdir():
        dataset = xr.open_dataset(path).load()
        if path.name == "mean_by_level.nc":
            dataset = dataset.drop_vars("temperature")
        dataset.to_netcdf(tmp_path / path.name)
    with pytest.raises(UserInputError, match="has no temperature"):
        import_gencast(checkpoint, tmp_path, LAYOUT)
    wrong = ChannelLayout(surface=("2m_temperature",), atmospheric=("temperature",), target_only=(),
                          static=LAYOUT.static, levels=LAYOUT.levels, input_frames=2)
    with pytest.raises(UserInputError, match="GenCast checkpoint needs"):
        import_gencast(checkpoint, FIXTURE / "stats", wrong)
