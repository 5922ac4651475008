"""The distillation config file (`configs/distill/*.yaml`): method, student sampler, reward, training.

Data, model, normalisation and loss weights are not configured here: they come
from the teacher checkpoint given with `--teacher` (`--data` re-points the
store). A file holds

    seed: 0
    distill:   {method: rmmd, student: {steps: 8, rho: 100, eta: 0.5}, reward_weight: 0.3, ...}
    train:     TrainConfig (steps, batch_size, learning_rate, ...)
    distributed: DistributedConfig

`distill.reward_weight` may be a list (`[0.1, 0.3, 1.0]`): one run per value
under `RUN/lambda_<value>/` and a Pareto table in `RUN/`.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from gencast_rmmd.config import StrictModel, load_config
from gencast_rmmd.diffusion.config import MAX_STUDENT_STEPS, StudentSamplerConfig
from gencast_rmmd.training.config import DistributedConfig, TrainConfig

class DmdConfig(StrictModel):
    """The `distill.dmd:` section: what only DMD (`method: dmd`, `distill/dmd.py`) reads.

    - `fake_updates` [N]: updates of the fake score g_psi per student update
      (DMD2's two time-scale rule; 5 in the DMD2 paper);
    - `pull_weight` [beta]: the fake score's pull to the teacher, as the
      moment-matching aux's `aux_pull_weight` (0: the papers' plain denoising);
    - the law of the DMD noise level s: s = (s_min^(1/rho) + u (s_max^(1/rho)
      - s_min^(1/rho)))^rho with u ~ U[`quantiles`]. The defaults are the
      teacher's training law (GenCast's: [0.02, 88], rho = 7) truncated to the
      quantiles [0.02, 0.98], as DMD/DMD2 draw t ~ U[0.02 T, 0.98 T]; set the
      levels to the teacher's `noise:` section when it was trained otherwise.
    """

    fake_updates: int = Field(5, ge=1)
    pull_weight: float = Field(0.0, ge=0.0)
    min_noise_level: float = Field(0.02, gt=0.0)
    max_noise_level: float = Field(88.0, gt=0.0)
    rho: float = Field(7.0, gt=0.0)
    quantiles: tuple[float, float] = (0.02, 0.98)

    @model_validator(mode="after")
    def _ordered(self) -> "DmdConfig":
        if self.min_noise_level >= self.max_noise_level:
            raise ValueError(f"min_noise_level {self.min_noise_level} must be below "
                             f"max_noise_level {self.max_noise_level}")
        low, high = self.quantiles
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"quantiles {list(self.quantiles)} must satisfy 0 <= low < high <= 1")
        return self


class GndmConfig(StrictModel):
    """The `distill.gndm:` section: what only GNDM / GNDMR (`method: gndm`, `distill/gndm.py`) reads.

    - `crps_reward_weight` [w_R]: weight of the group-normalised CRPS reward
      added to the group-normalised distribution-matching reward R_dm
      (0: GNDM; > 0: GNDMR, the multi-reward form);
    - `normalise_std`: divide each reward's group-centred values by the
      group's std (GRPO's normalisation; false: centre only);
    - `policy_updates` [E]: student updates per rollout; E > 1 reuses the
      step's samples with importance ratios pi_theta / pi_old (PPO-clipped);
    - `clip` [epsilon]: the ratio's clip range [1 - epsilon, 1 + epsilon].

    The fake score g_psi and its noise-level law are DMD's (`distill.dmd`); the
    rollout is the student's whole chain, so `policy_noise` is not read.
    """

    crps_reward_weight: float = Field(0.0, ge=0.0)
    normalise_std: bool = True
    policy_updates: int = Field(1, ge=1)
    clip: float = Field(0.2, gt=0.0, lt=1.0)


class DmdrConfig(StrictModel):
    """The `distill.dmdr:` section: what only DMDR (`method: dmdr`, `distill/dmdr.py`) reads.

    Stage 1 (the first `tilt_steps` steps of the run) matches the teacher's
    distribution tilted by exp(r / beta); stage 2 (the rest) is DMD + lambda
    CRPS, DMD the regulariser. The two dynamic strategies act over the first
    `dynamic_steps` steps (within stage 1), on a cosine from full strength to none:

    - `tilt_temperature` [beta]: the tilt's temperature in reward units (the
      fair-CRPS shares of `reward_units`); None: no tilt (beta = infinity, stage 1
      is plain DMD);
    - `tilt_steps`: the length of stage 1 in optimiser steps (0: stage 2 only);
    - `dynamic_steps` [K_dyn]: the length of the dynamic strategies' schedule (0: off);
    - `guidance_scale` [gamma_0]: DynaDG, the real score's share of the fake
      score's drift from the teacher at step 0 (in weights; the authors' LoRA
      scales 0.75 / 2.0 give 0.375; 0: off);
    - `renoise_concentration` [(a_0, b_0)]: DynaRS, the Beta(a, b) law of the
      renoise quantile at step 0 (the authors' (4, 1.5): mostly high noise;
      (1, 1): DMD's uniform law, off).
    """

    tilt_temperature: float | None = Field(0.1, gt=0.0)
    tilt_steps: int = Field(200, ge=0)
    dynamic_steps: int = Field(100, ge=0)
    guidance_scale: float = Field(0.375, ge=0.0, lt=1.0)
    renoise_concentration: tuple[float, float] = (4.0, 1.5)

    @model_validator(mode="after")
    def _dynamic_within_stage_one(self) -> "DmdrConfig":
        if self.dynamic_steps > self.tilt_steps:
            raise ValueError(f"dynamic_steps ({self.dynamic_steps}) exceeds tilt_steps ({self.tilt_steps}): the "
                             f"dynamic strategies belong to stage 1; lower dynamic_steps or raise tilt_steps")
        if min(self.renoise_concentration) < 1.0:
            raise ValueError(f"renoise_concentration {list(self.renoise_concentration)} must be >= 1 "
                             f"(the schedule runs from it to (1, 1), DMD's uniform law)")
        return self


class Policy(StrEnum):
    """Where a phase-2 method's states x_t come from (`DistillSection.policy`, from `offline` and `policy_noise`)."""

    OFFLINE = "offline"                # forward-diffused data x_0 + s_t eps (`offline: true`)
    STOPPED_CHAIN = "stopped_chain"    # the student's chain stopped at a drawn grid step (`policy_noise: grid`)
    RENOISED = "renoised"              # the finished chain's sample re-noised to a continuous s_t (`continuous`)


# Sections only one family of methods reads: left out of every other method's config dump (checkpoints,
# manifests, run and stage hashes), so adding one never changes the recorded config of a run of another method.
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {"dmd": ("dmd", "gndm", "dmdr"), "gndm": ("gndm",),
                                                "dmdr": ("dmdr",)}


class DistillSection(StrictModel):
    """The `distill:` section. Symbols of docs/DESIGN.md §5 in brackets.

    - `method`: a key of `gencast_rmmd.distill.registry.DISTILLERS`
      (`mmd`, `rmmd`, `draft`, `crps_only`, `dmd`, `gndm`, `dmdr`);
    - `training_noise`: how off-policy states x_t = x_0 + s_t eps pick s_t: a
      uniformly drawn `grid` level of the student, or `continuous` (u ~ U[0, 1]
      through the student's rho-quantile);
    - `policy_noise` (phase 2): `grid` stops the no-gradient student chain at a
      uniformly drawn grid step; `continuous` runs it to x~_0 and re-noises it to
      a continuous s_t; `offline: true` uses forward-diffused data instead;
    - `moment_min_noise_level`: lower end of the log-uniform level s' at which
      moments are matched (s' in [s_lo, s_t));
    - `aux_pull_weight` [beta]: weight of the aux model's pull to the teacher;
      `aux_learning_rate`: the aux rule's own learning rate (None = train's);
    - `reward_weight` [lambda], `reward_samples` [M >= 2 samples per condition],
      `reward_units`: `climatology` (each channel's CRPS in units of its
      climatological std) or `residual` (the model's residual-normalised space);
    - `anchor_weight` [mu]: weight of (mu/2)||Phi_theta - Phi_theta0||^2; None
      means lambda for `rmmd`, `dmd` and `gndm` (the paper's KL proxy) and 0 for `draft`
      and `dmdr` (DMDR's claim: DMD itself is the regulariser);
    - `moment_weight`: the weight w of the linear moment term, in phase 1 and
      in `rmmd`: `edm` (lambda(s'), the paper's) or `balanced`
      (1 / (c_out(s_t) c_out(s')): the gradient in network-output units at
      every level pair; see `moment_matching.moment_weight`);
    - `moment_reference` (`rmmd`): the aux model the moment term compares
      with the teacher. `live` (default, the method as docs/DESIGN.md §5 reads it): the
      phase-1 aux g_phi keeps training in phase 2 on the student's current
      samples (alternating phi / theta updates, as in phase 1), so the term
      vanishes when the student's moments are the teacher's. The others keep
      the phase-1 aux g_phi0 frozen, given the student's drift from phase 1
      delta = sg(Phi_theta - Phi_theta0)/(1 + beta): `posterior_drift` adds
      c_out(s')^2 delta to g_phi0 (our first-order stand-in for a live aux, not
      the paper's); `drift_corrected` adds delta at every s' (a stiff anchor
      at small s'); `frozen` uses g_phi0 as it is, a fixed push that grows the
      student's distance to phase 1 without bound;
    - `moment_term` (`rmmd`): false drops the moment term (and the aux model):
      the ablation "reward + anchor only";
    - `draft_steps`: DRaFT-K's number of final student steps backpropagated through;
    - `dmd` (`dmd`, `gndm`, `dmdr`): DMD's own settings (`DmdConfig`); the fake score g_psi is
      trained as the live aux model is, at `aux_learning_rate`;
    - `gndm` (`gndm`): GNDM's and GNDMR's own settings (`GndmConfig`); GNDM
      does not read lambda except as the default of mu (its CRPS reward
      weight is `gndm.crps_reward_weight`);
    - `dmdr` (`dmdr`): DMDR's stages and dynamic strategies (`DmdrConfig`); lambda
      weighs the CRPS in stage 2 only;
    - `rollout` (`rmmd`, `crps_only`, with `policy_noise: continuous`): every
      condition also gives a second policy state, 12 h further on: the chain
      run again from each member's own finished 12 h sample, re-noised; its
      student call is scored by the 24 h fair CRPS of the M two-step
      trajectories (`rewarded.rollout_draw`). A step then holds 2 B M policy
      states (batch_size 2 costs about what batch_size 4 does without it);
      training batches carry two target steps. Left out of the config dump
      when false, so runs without it keep their recorded config and hashes;
    - `phase1_steps`: phase-2 methods started from a teacher first run this many
      moment-matching steps in `RUN/phase1/` (0: the teacher itself is the
      phase-1 student and aux, so RMMD's moment term starts at zero);
    - `evaluation_batches`: validation batches scored for the Pareto table.
    """

    method: str = "mmd"
    student: StudentSamplerConfig = StudentSamplerConfig()
    training_noise: Literal["grid", "continuous"] = "grid"
    policy_noise: Literal["grid", "continuous"] = "grid"
    offline: bool = False
    moment_min_noise_level: float = Field(0.02, gt=0.0)
    aux_pull_weight: float = Field(1.0, ge=0.0)
    aux_learning_rate: float | None = Field(None, gt=0.0)
    reward_weight: float | tuple[float, ...] = 0.3
    reward_samples: int = Field(2, ge=2)
    reward_units: Literal["climatology", "residual"] = "climatology"
    anchor_weight: float | None = Field(None, ge=0.0)
    moment_weight: Literal["edm", "balanced"] = "edm"
    moment_reference: Literal["live", "posterior_drift", "drift_corrected", "frozen"] = "live"
    moment_term: bool = True
    draft_steps: int = Field(2, ge=1, le=MAX_STUDENT_STEPS)
    dmd: DmdConfig = DmdConfig()
    gndm: GndmConfig = GndmConfig()
    dmdr: DmdrConfig = DmdrConfig()
    rollout: bool = False
    phase1_steps: int = Field(0, ge=0)
    evaluation_batches: int = Field(2, ge=1)

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        from gencast_rmmd.distill.registry import DISTILLERS
        if method not in DISTILLERS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(sorted(DISTILLERS))}")
        return method

    @field_validator("reward_weight")
    @classmethod
    def _non_negative(cls, value: float | tuple[float, ...]) -> float | tuple[float, ...]:
        values = value if isinstance(value, tuple) else (value,)
        if not values or any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"reward weights must be finite and >= 0, got {list(values)}")
        if len(set(values)) != len(values):
            raise ValueError(f"reward weights must be distinct, got {list(values)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "DistillSection":
        if self.is_sweep and self.method in ("mmd", "crps_only"):
            raise ValueError(f"method {self.method} has no reward weight to sweep; give one value")
        if self.method == "crps_only" and self.anchor_weight:
            raise ValueError("crps_only has no distillation terms; leave anchor_weight unset")
        if not self.moment_term and self.method != "rmmd":
            raise ValueError(f"moment_term: false is an rmmd ablation; method {self.method} has no such switch")
        if self.method == "gndm" and (self.student.eta == 0.0 or self.student.steps < 2):
            raise ValueError(f"gndm needs a stochastic student step (student.eta > 0 and student.steps >= 2), got "
                             f"eta {self.student.eta}, steps {self.student.steps}; raise them")
        if self.method == "gndm" and self.offline:
            raise ValueError("gndm's rewards are the student's own rollouts; offline: true has no policy to reward")
        if self.rollout and (self.method not in ("rmmd", "crps_only") or self.policy != Policy.RENOISED):
            raise ValueError(f"rollout: true scores a second step from the student's finished samples: it needs "
                             f"method rmmd or crps_only with policy_noise: continuous and offline: false, got "
                             f"method {self.method}, policy {self.policy.value}")
        if self.draft_steps > self.student.steps:
            raise ValueError(f"draft_steps ({self.draft_steps}) exceeds the student's steps ({self.student.steps})")
        return self

    @model_validator(mode="after")
    def _sections_of_the_method(self) -> "DistillSection":
        for section, methods in METHOD_SECTIONS.items():
            if section in self.model_fields_set and self.method not in methods:
                raise ValueError(f"distill.{section} is read only by method {' or '.join(methods)}, not "
                                 f"{self.method}; remove it or set distill.method")
        return self

    @model_serializer(mode="wrap")
    def _without_other_methods_sections(self, handler) -> dict:
        """The dump without the sections of other methods (`METHOD_SECTIONS`), and without `rollout` when off."""
        data = handler(self)
        for section, methods in METHOD_SECTIONS.items():
            if self.method not in methods:
                data.pop(section, None)
        if not self.rollout:
            data.pop("rollout", None)
        return data

    @property
    def policy(self) -> Policy:
        """The phase-2 state policy these keys select (`offline` wins over `policy_noise`)."""
        if self.offline:
            return Policy.OFFLINE
        return Policy.STOPPED_CHAIN if self.policy_noise == "grid" else Policy.RENOISED

    @property
    def is_sweep(self) -> bool:
        """True when `reward_weight` is a list: one run per value."""
        return isinstance(self.reward_weight, tuple)

    @property
    def reward_weights(self) -> tuple[float, ...]:
        return self.reward_weight if isinstance(self.reward_weight, tuple) else (self.reward_weight,)


class DistillConfig(StrictModel):
    """A `configs/distill/*.yaml` file."""

    seed: int = 0
    distill: DistillSection = DistillSection()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _stages_fit_the_run(self) -> "DistillConfig":
        tilt_steps = self.distill.dmdr.tilt_steps
        if self.distill.method == "dmdr" and tilt_steps > self.train.steps:
            raise ValueError(f"distill.dmdr.tilt_steps ({tilt_steps}) exceeds train.steps ({self.train.steps}): "
                             f"stage 1 would not finish; lower tilt_steps or raise train.steps")
        return self

    def for_reward_weight(self, reward_weight: float) -> "DistillConfig":
        """A copy for one run of a sweep (a new object; this one is left unchanged)."""
        return self.model_copy(update={"distill": self.distill.model_copy(update={"reward_weight": reward_weight})})

    def phase1(self) -> "DistillConfig":
        """The moment-matching run a phase-2 method starts from: `mmd`, `distill.phase1_steps` steps."""
        steps = self.distill.phase1_steps
        warmup = max(0, min(self.train.warmup_steps, steps - 1))
        train = self.train.model_copy(update={"steps": steps, "warmup_steps": warmup})
        distill = self.distill.model_copy(update={"method": "mmd", "reward_weight": self.distill.reward_weights[0]})
        return self.model_copy(update={"distill": distill, "train": train})


def load_distill_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DistillConfig:
    """Load and validate a distill config with `--set` overrides (UserInputError naming a bad key)."""
    return load_config(path, DistillConfig, list(overrides))
