"""Distillation of the teacher into a few-step student: moment matching, RMMD, DMD, GNDM, DMDR, baselines (one
protocol).

- `config`: the `configs/distill/*.yaml` schema (`DistillConfig`, `StudentSamplerConfig`);
- `sampler`: the K-step student sampler (`StudentSampler`, a `Sampler`);
- `reward`: the differentiable fair-CRPS reward;
- `base`: the `Distiller` protocol and `DistillContext`; `registry.DISTILLERS` maps names to methods;
- `moment_matching` (phase 1), `rewarded` (RMMD, CRPS-only), `draft` (DRaFT-K), `dmd` (DMD),
  `gndm` (GNDM / GNDMR), `dmdr` (DMDR): the methods;
- `run`: `distill(...)`, the driver behind `gencast-rmmd distill`; `pareto`: the lambda-sweep table.
"""
