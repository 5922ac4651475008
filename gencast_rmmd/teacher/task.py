"""The teacher's training task: GenCast's weighted denoising loss on residual-normalised targets.

For a batch with physical inputs X (two frames), forcings and targets Y:
    x0 = (Y - X_t) / diffs_std          (residual-normalised targets; target-only: (Y - mean)/std)
    cond = ((X - mean)/std, forcings, (static - mean)/std)
    loss = E_sigma,eps [ lambda(sigma) sum_c w_c |D(x0 + sigma eps; sigma, cond) - x0|^2_area ]
with sigma from the rho-schedule, eps spherical white noise, D the EDM-preconditioned
graph denoiser. NaN targets (SST over land) are masked.

Optional input perturbation (`input_perturbation` = a > 0, training only): every
input frame becomes X + a * diffs_std * eta, eta independent spherical noise per
frame and channel, while Y stays the truth. The residual target is then taken
from the perturbed last frame, x0 = (Y - X~_t) / diffs_std, so the denoiser
learns to correct errors in its inputs instead of carrying them forward, the
errors an autoregressive rollout feeds it (the noise-injection remedy of
Sanchez-Gonzalez et al. 2020, "Learning to simulate complex physics with graph
networks"). a = 0 is GenCast's training, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.data.batches import Batch
from gencast_rmmd.data.normalization import Normalizer
from gencast_rmmd.diffusion.loss import denoising_loss
from gencast_rmmd.diffusion.model_space import ModelSpace, first_step
from gencast_rmmd.diffusion.noise import SphericalNoise
from gencast_rmmd.diffusion.preconditioning import PreconditionedDenoiser
from gencast_rmmd.models.denoiser import DenoiserNetwork
from gencast_rmmd.teacher.config import TeacherConfig
from gencast_rmmd.training import TrainableState, UpdateRule


def perturb_inputs(batch: Batch, normalizer: Normalizer, noise: SphericalNoise, key: jax.Array,
                   amount: float) -> Batch:
    """The batch with inputs X + `amount` * diffs_std * eta (eta spherical, independent per frame and channel).

    Channels that are not targets (no diffs_std) are left as they are; NaN
    (SST over land) stays NaN. Targets are unchanged.
    """
    scale = np.tile(normalizer.input_change_scale(), normalizer.input_frames) * np.float32(amount)
    eta = noise(key, batch.inputs.shape).astype(batch.inputs.dtype)
    return batch._replace(inputs=batch.inputs + jnp.asarray(scale, batch.inputs.dtype) * eta)


@dataclass(frozen=True, eq=False)
class TeacherTask:
    """A `TrainTask` with one parameter group, `denoiser`, in the model space `space` (its noise: `config.noise`'s
    truncation and spectrum on the data's grid; its norm: `config.loss`'s weights)."""

    config: TeacherConfig
    network: DenoiserNetwork
    space: ModelSpace
    payload: dict

    def loss(self, params, frozen, key, batch: Batch, perturb: bool = True):
        del frozen
        if perturb and self.config.input_perturbation > 0.0:
            # fold_in keeps `key` for the noise levels and noise: the same draws as unperturbed training
            batch = perturb_inputs(batch, self.space.normalizer, self.space.noise, jax.random.fold_in(key, 1),
                                   self.config.input_perturbation)
        clean, conditioning, valid = first_step(batch, self.space.normalizer)
        denoiser = PreconditionedDenoiser(lambda x, sigma, cond: self.network.apply(params["denoiser"], x, sigma, cond))
        return denoising_loss(denoiser, clean, conditioning, key, self.config.noise, self.space.norm, valid,
                              noise=self.space.noise, channel_names=self.space.channel_names)

    def init(self, key, example_batch: Batch) -> TrainableState:
        clean, conditioning, _ = first_step(example_batch, self.space.normalizer)
        sigma = jnp.ones((clean.shape[0],), clean.dtype)
        return TrainableState(params={"denoiser": self.network.init(key, clean, sigma, conditioning)})

    def update_rules(self):
        return [UpdateRule("denoiser", ("denoiser",), self.loss)]

    def validation_loss(self, params, frozen, key, batch: Batch):
        return self.loss(params, frozen, key, batch, perturb=False)

    def config_payload(self) -> dict:
        return self.payload
