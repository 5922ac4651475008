"""Configuration schema of the diffusion parts: training noise, teacher sampler, loss weights.

Defaults are GenCast's (graphcast `gencast.py`; docs/DESIGN.md §4). Noise levels are
EDM sigmas in the normalised-residual space (sigma_data = 1). Per-variable
loss weights are configuration, never code; GenCast's, as YAML:

    loss:
      default_weight: 1.0            # atmospheric variables and 2m_temperature
      variable_weights:
        10m_u_component_of_wind: 0.1
        10m_v_component_of_wind: 0.1
        mean_sea_level_pressure: 0.1
        sea_surface_temperature: 0.1
        total_precipitation_12hr: 0.1
"""

from __future__ import annotations

from pydantic import Field, model_validator

from gencast_rmmd.config import StrictModel


class NoiseConfig(StrictModel):
    """The diffusion noise: its training levels and its spatial truncation.

    Levels: sigma = (s_min^(1/rho) + u (s_max^(1/rho) - s_min^(1/rho)))^rho, u ~ U[0, 1].
    `max_wavenumber`: the spherical-harmonic truncation L of the noise fields
    (`SphericalNoise`), used for training, input perturbation and every sampler of
    the model and of its students; None is the grid's largest resolvable wavenumber
    (GenCast). Data that are smoother than their grid (a spectral model's T21 output
    stored on 64x32) have no content above their truncation: noise there is only
    something the denoiser must learn to remove, and what it leaves is spread with
    no error to match. `spectral_exponent` p gives total wavenumber l a share of the
    noise variance proportional to (l + 1)^p; 0 is GenCast's flat spectrum.
    """

    min_noise_level: float = Field(0.02, gt=0.0)
    max_noise_level: float = Field(88.0, gt=0.0)
    rho: float = Field(7.0, gt=0.0)
    max_wavenumber: int | None = Field(None, ge=1)
    spectral_exponent: float = Field(0.0, ge=-4.0, le=4.0)

    @model_validator(mode="after")
    def _ordered(self) -> "NoiseConfig":
        if self.min_noise_level >= self.max_noise_level:
            raise ValueError(f"min_noise_level {self.min_noise_level} must be below "
                             f"max_noise_level {self.max_noise_level}")
        return self


class SamplerConfig(StrictModel):
    """DPM-Solver++ 2S with stochastic churn (EDM Algorithm 2 churn; GenCast defaults).

    - `num_noise_levels` levels from `max_noise_level` down to `min_noise_level`
      spaced with `rho`, then a final 0;
    - churn: at each level sigma in [`churn_min_noise_level`, `churn_max_noise_level`]
      (None = no upper bound) the state is re-noised to sigma (1 + gamma),
      gamma = min(`churn` / num_noise_levels, sqrt(2) - 1), with the added noise's
      standard deviation inflated by `noise_inflation` (EDM's S_noise).
    """

    num_noise_levels: int = Field(20, ge=1)
    max_noise_level: float = Field(80.0, gt=0.0)
    min_noise_level: float = Field(0.03, gt=0.0)
    rho: float = Field(7.0, gt=0.0)
    churn: float = Field(2.5, ge=0.0)                   # S_churn
    churn_min_noise_level: float = Field(0.75, ge=0.0)  # S_tmin
    churn_max_noise_level: float | None = None          # S_tmax; None = infinity
    noise_inflation: float = Field(1.05, gt=0.0)        # S_noise

    @model_validator(mode="after")
    def _ordered(self) -> "SamplerConfig":
        if self.min_noise_level >= self.max_noise_level:
            raise ValueError(f"min_noise_level {self.min_noise_level} must be below "
                             f"max_noise_level {self.max_noise_level}")
        if self.churn_max_noise_level is not None and self.churn_max_noise_level < self.churn_min_noise_level:
            raise ValueError(f"churn_max_noise_level {self.churn_max_noise_level} is below "
                             f"churn_min_noise_level {self.churn_min_noise_level}")
        return self


class LossConfig(StrictModel):
    """Per-variable weights of the denoising loss: `variable_weights[name]`, else `default_weight`."""

    variable_weights: dict[str, float] = Field(default_factory=dict)
    default_weight: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _non_negative(self) -> "LossConfig":
        negative = sorted(name for name, weight in self.variable_weights.items() if weight < 0)
        if negative:
            raise ValueError(f"variable_weights must be >= 0; negative for: {', '.join(negative)}")
        return self


MAX_STUDENT_STEPS = 8


class StudentSamplerConfig(StrictModel):
    """The K-step student sampler (docs/DESIGN.md §5): grid s_0 > ... > s_{K-1}, then 0, and the eta-step.

    s_i = (s_max^(1/rho) + i/(K-1) (s_min^(1/rho) - s_max^(1/rho)))^rho; `rho: .inf`
    gives the log-uniform grid (uniform in log-SNR). eta = 0 is deterministic
    (DDIM), eta = 1 the exact DDPM posterior; the paper's best is eta = 0.5, rho = 100.
    """

    steps: int = Field(8, ge=1, le=MAX_STUDENT_STEPS)   # K = denoiser calls per 12 h step
    rho: float = Field(100.0, gt=0.0)
    eta: float = Field(0.5, ge=0.0, le=1.0)
    max_noise_level: float = Field(80.0, gt=0.0)
    min_noise_level: float = Field(0.03, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> "StudentSamplerConfig":
        if self.min_noise_level >= self.max_noise_level:
            raise ValueError(f"min_noise_level {self.min_noise_level} must be below "
                             f"max_noise_level {self.max_noise_level}")
        return self
