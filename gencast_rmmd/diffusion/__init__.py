"""The diffusion parts of the teacher, independent of how the network is built (docs/DESIGN.md §4).

Everything works in the model's normalised residual space (sigma_data = 1)
with EDM noise levels (x_sigma = x_0 + sigma eps).

- `base`: the roles, `Denoiser` and `Sampler` (and `Conditioning`); every sampler and distiller plugs in here;
- `preconditioning`: `PreconditionedDenoiser`, the denoiser D = c_skip x + c_out F(c_in x) around a raw network;
- `noise`: `SphericalNoise`, isotropic white noise on the sphere (training, perturbation, every sampler);
- `schedules`: the rho-spaced training noise distribution and the sampler's grid;
- `samplers`: `DPMSolverPlusPlus2S`, GenCast's teacher sampler (39 denoiser calls per 12 h step);
- `student_sampler`: `StudentSampler`, the distilled student's K-step eta-sampler (K calls), with `run_steps` and
  `bind`, which the distillers differentiate through;
- `registry`: `SAMPLER_BUILDERS`, the samplers a model card may name (rebuilt by `gencast_rmmd.forecast.build`);
- `model_space`: physical batch -> normalised conditioning, residual targets and mask (`first_step`), shared by
  training, distillation and inference;
- `loss`: `denoising_loss`, `channel_loss_weights` and `area_mean`, the one area-weighted masked mean behind
  the denoising loss, the distillers' moment terms and the CRPS reward;
- `config`: the `noise:`, `sampler:` and `loss:` config sections and the student sampler's.
"""
