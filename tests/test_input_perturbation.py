"""Training-time input perturbation of the teacher: scale, independence, targets, and validation untouched."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import TEST_DATA_CONFIG
from gencast_rmmd.config import DataFileConfig, load_config
from gencast_rmmd.data.batches import make_iterator
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.data.stats import compute_stats
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.teacher.task import perturb_inputs


@pytest.fixture(scope="module")
def prepared(wb2_store):
    source = DataSource.open(load_config(TEST_DATA_CONFIG, DataFileConfig, ["data.levels=[500,850]"],
                                         str(wb2_store)).data)
    stats = compute_stats(source)
    normalizer = Normalizer.from_stats(stats, source.layout)
    with make_iterator(source, batch_size=4) as iterator:
        batch = next(iterator).batch
    return source, stats, normalizer, batch, SphericalNoise.for_grid(source.latitude, source.longitude)


def test_change_scale_is_each_input_channels_diffs_std(prepared):
    source, stats, normalizer, _, _ = prepared
    scale = normalizer.input_change_scale()
    for index, channel in enumerate(source.layout.input_channels):
        field = stats[channel.variable]
        if channel.level is not None:
            field = field.sel(level=channel.level)
        assert scale[index] == pytest.approx(float(field.sel(statistic="diffs_std")), rel=1e-6), channel.label


def test_perturbation_has_the_asked_size_per_frame_and_channel(prepared):
    source, _, normalizer, batch, noise = prepared
    amount = 0.3
    deltas = np.stack([np.asarray(perturb_inputs(batch, normalizer, noise, jax.random.PRNGKey(seed), amount).inputs)
                       - batch.inputs for seed in range(8)])               # [draw, B, lat, lon, F * C]
    n_channels = len(source.layout.input_channels)
    frames = deltas.reshape(*deltas.shape[:-1], normalizer.input_frames, n_channels)
    expected = amount * normalizer.input_change_scale()
    # spherical noise has unit variance at every point: the RMS over draws, examples and points is amount * diffs_std
    rms = np.sqrt(np.mean(frames ** 2, axis=(0, 1, 2, 3)))                  # [F, C]
    np.testing.assert_allclose(rms, np.broadcast_to(expected, rms.shape), rtol=0.1)
    # the frames are perturbed independently (an autoregressive rollout's two frames carry different errors)
    first, last = (frames[..., f, :].reshape(-1, n_channels) for f in (0, normalizer.input_frames - 1))
    correlation = np.mean(first * last, axis=0) / np.sqrt(np.mean(first ** 2, axis=0) * np.mean(last ** 2, axis=0))
    assert np.all(np.abs(correlation) < 0.1), correlation


def test_perturbation_leaves_targets_and_forcings_and_is_seeded(prepared):
    _, _, normalizer, batch, noise = prepared
    key = jax.random.PRNGKey(3)
    once, again = (perturb_inputs(batch, normalizer, noise, key, 0.5) for _ in range(2))
    np.testing.assert_array_equal(np.asarray(once.inputs), np.asarray(again.inputs))
    np.testing.assert_array_equal(np.asarray(once.targets), batch.targets)
    np.testing.assert_array_equal(np.asarray(once.forcings), batch.forcings)
    assert not np.allclose(np.asarray(once.inputs), batch.inputs)
    unchanged = perturb_inputs(batch, normalizer, noise, key, 0.0)
    np.testing.assert_array_equal(np.asarray(unchanged.inputs), batch.inputs)


def test_only_the_training_loss_sees_the_perturbation(prepared):
    from conftest import REPO
    from gencast_rmmd.teacher.config import TeacherConfig
    from gencast_rmmd.teacher.train import teacher_task

    source, _, normalizer, batch, _ = prepared

    def task(amount: float):
        config = load_config(REPO / "configs" / "teacher" / "tiny.yaml", TeacherConfig,
                             ["data.levels=[500,850]", f"input_perturbation={amount}"], source.config.path)
        return teacher_task(config, source, normalizer)

    plain, perturbed = task(0.0), task(0.5)
    key = jax.random.PRNGKey(0)
    params = plain.init(key, batch).params
    loss = lambda task, kind: float(getattr(task, kind)(params, {}, key, batch)[0])  # noqa: E731
    assert loss(perturbed, "validation_loss") == loss(plain, "validation_loss") == loss(plain, "loss")
    assert loss(perturbed, "loss") > loss(plain, "loss")          # harder: targets now also undo the input errors
