"""The diffusion parts of the teacher, independent of how the network is built (docs/DESIGN.md §4).

Everything works in the model's normalised residual space (sigma_data = 1)
with EDM noise levels (x_sigma = x_0 + sigma eps).

- `base`: the roles, `Denoiser` and `Sampler` (and `Conditioning`); every sampler and distiller plugs in here;
- `preconditioning`: `PreconditionedDenoiser`, the denoiser D = c_skip x + c_out F(c_in x) around a raw network;
- `noise`: `SphericalNoise`, isotropic white noise on the sphere (training, perturbation, every sampler);
- `schedules`: the rho-spaced training noise distribution and the sampler's grid;
- `samplers`: `DPMSolverPlusPlus2S`, GenCast's teacher sampler (39 denoiser calls per 12 h step);
- `loss`: `denoising_loss` and `channel_loss_weights`, GenCast's weighted denoising loss;
- `config`: the `noise:`, `sampler:` and `loss:` config sections.

The student's K-step sampler lives in `gencast_rmmd.distill.sampler`; samplers
are rebuilt from checkpoints by `gencast_rmmd.forecast.build.SAMPLER_BUILDERS`.
"""
