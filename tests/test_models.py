"""The graph denoiser: initialisation, conditioning, attention variants, sizes from configuration."""

from __future__ import annotations

from pathlib import Path

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gencast_rmmd.config import StrictModel, load_config
from gencast_rmmd.diffusion.base import Conditioning
from gencast_rmmd.models.builder import count_parameters, network_for_grid
from gencast_rmmd.models.config import ModelConfig, ProcessorConfig
from gencast_rmmd.models.denoiser import parameter_count
from gencast_rmmd.models.layers import ConditionedMLP, fourier_features

LATITUDE = np.linspace(-87.1875, 87.1875, 32)
LONGITUDE = np.arange(64) * 5.625
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "model"


class ModelFile(StrictModel):
    model: ModelConfig


def small_config(attention="dense", **processor) -> ModelConfig:
    settings = dict(num_layers=2, num_heads=2, ffw_hidden=32, k_hop=3, attention=attention, block_size=32)
    settings.update(processor)
    return ModelConfig(mesh_refinement=2, latent_size=16, processor=ProcessorConfig(**settings))


def example(batch=2, channels=5, key=0):
    keys = jax.random.split(jax.random.PRNGKey(key), 4)
    conditioning = Conditioning(jax.random.normal(keys[0], (batch, 32, 64, 2 * channels)),
                                jax.random.normal(keys[1], (batch, 32, 64, 4)),
                                jax.random.normal(keys[2], (32, 64, 2)))
    noisy = jax.random.normal(keys[3], (batch, 32, 64, channels))
    return noisy, jnp.array([0.5, 20.0][:batch]), conditioning


def perturbed(params, scale=0.05, seed=1):
    """Random non-zero parameters (FiLM and final projections start at zero)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [leaf + scale * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


def test_output_shape_and_zero_initialised_projections():
    network = network_for_grid(small_config(), LATITUDE, LONGITUDE, 5)
    noisy, sigma, conditioning = example()
    params = network.init(jax.random.PRNGKey(0), noisy, sigma, conditioning)
    out = network.apply(params, noisy, sigma, conditioning)
    assert out.shape == noisy.shape and bool(jnp.all(jnp.isfinite(out)))
    flat = hk.data_structures.to_haiku_dict(params)
    zero_modules = [name for name in flat if name.endswith(("attention/output", "ffw_output"))
                    or "film_" in name]
    assert zero_modules and all(float(jnp.abs(flat[name]["w"]).max()) == 0.0 for name in zero_modules)
    # Each processor layer owns its own attention weights.
    assert {"denoiser/processor/layer_0/attention/query", "denoiser/processor/layer_1/attention/query"} <= set(flat)


def test_noise_level_conditions_the_output():
    network = network_for_grid(small_config(), LATITUDE, LONGITUDE, 5)
    noisy, _, conditioning = example(batch=1)
    params = perturbed(network.init(jax.random.PRNGKey(0), noisy, jnp.ones(1), conditioning))
    low = network.apply(params, noisy, jnp.array([0.1]), conditioning)
    high = network.apply(params, noisy, jnp.array([50.0]), conditioning)
    assert float(jnp.abs(low - high).mean()) > 1e-3


def test_examples_in_a_batch_are_independent():
    network = network_for_grid(small_config(), LATITUDE, LONGITUDE, 5)
    noisy, sigma, conditioning = example()
    params = perturbed(network.init(jax.random.PRNGKey(0), noisy, sigma, conditioning))
    both = network.apply(params, noisy, sigma, conditioning)
    first = network.apply(params, noisy[:1], sigma[:1], conditioning._replace(
        inputs=conditioning.inputs[:1], forcings=conditioning.forcings[:1]))
    np.testing.assert_allclose(both[:1], first, rtol=1e-4, atol=1e-5)


def test_banded_and_block_sparse_attention_equal_dense():
    noisy, sigma, conditioning = example()
    outputs = []
    for attention in ("dense", "banded", "block_sparse"):
        network = network_for_grid(small_config(attention), LATITUDE, LONGITUDE, 5)
        params = perturbed(network.init(jax.random.PRNGKey(0), noisy, sigma, conditioning))
        outputs.append(network.apply(params, noisy, sigma, conditioning))
    for other in outputs[1:]:
        np.testing.assert_allclose(outputs[0], other, rtol=1e-4, atol=1e-4)


def test_mlp_on_gathered_parts_equals_mlp_on_their_concatenation():
    """The edge MLP projects node latents before gathering them: same parameters, same function."""
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    edges, senders_x, receivers_x = (jax.random.normal(k, (n, 8)) for k, n in zip(keys, (30, 7, 11)))
    conditioning = jax.random.normal(keys[3], (5,))
    senders, receivers = np.arange(30) % 7, (np.arange(30) * 5) % 11
    mlp = hk.without_apply_rng(hk.transform(lambda x, c: ConditionedMLP(16, 8, 2, name="edge_mlp")(x, c)))
    concatenated = jnp.concatenate([edges, senders_x[senders], receivers_x[receivers]], axis=-1)
    params = perturbed(mlp.init(jax.random.PRNGKey(0), concatenated, conditioning))
    parts = [(edges, None), (senders_x, senders), (receivers_x, receivers)]
    assert jax.tree_util.tree_structure(mlp.init(jax.random.PRNGKey(0), parts, conditioning)) == \
        jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(mlp.apply(params, parts, conditioning), mlp.apply(params, concatenated, conditioning),
                               rtol=1e-5, atol=1e-5)


def test_attention_is_local_to_k_hops():
    """With 1 processor layer and k=1, a change at one grid point cannot reach far-away grid points."""
    config = small_config(num_layers=1, k_hop=1)
    network = network_for_grid(config, LATITUDE, LONGITUDE, 5)
    noisy, sigma, conditioning = example(batch=1)
    params = perturbed(network.init(jax.random.PRNGKey(0), noisy, sigma, conditioning))
    base = network.apply(params, noisy, sigma[:1], conditioning)
    moved = network.apply(params, noisy.at[0, 16, 0].add(10.0), sigma[:1], conditioning)
    changed = np.asarray(jnp.abs(moved - base).max(axis=(0, 3)) > 1e-6)
    assert changed[16, 0] and not changed[16, 32], "the antipodal longitude must be unaffected"


def test_fourier_features_closed_form():
    features = fourier_features(jnp.array([0.0, 4.0]), base_period=16.0, num_frequencies=2)
    expected = [[0, 0, 1, 1], [np.sin(2 * np.pi * 4 / 16), np.sin(2 * np.pi * 8 / 16),
                               np.cos(2 * np.pi * 4 / 16), np.cos(2 * np.pi * 8 / 16)]]
    np.testing.assert_allclose(features, expected, atol=1e-6)


@pytest.mark.parametrize("name,expected_refinement", [("tiny", 2), ("demo", 3), ("gencast_1p0_mini", 4),
                                                      ("gencast_0p25", 6)])
def test_model_configs_build_and_count_parameters(name, expected_refinement):
    config = load_config(CONFIGS / f"{name}.yaml", ModelFile).model
    assert config.mesh_refinement == expected_refinement
    count = count_parameters(config, n_grid_features=2 * 78 + 4 + 2 + 84, n_outputs=84)
    assert count > 0
    if name.startswith("gencast"):
        assert config.latent_size == 512 and config.processor.num_layers == 16
        assert 40e6 < count < 80e6


def test_count_parameters_matches_a_real_init():
    config = small_config()
    network = network_for_grid(config, LATITUDE, LONGITUDE, 5)
    noisy, sigma, conditioning = example()
    params = network.init(jax.random.PRNGKey(0), noisy, sigma, conditioning)
    n_features = conditioning.inputs.shape[-1] + 4 + 2 + 5
    assert parameter_count(params) == count_parameters(config, n_features, 5)
