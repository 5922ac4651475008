"""The Held-Suarez dynamical core: dinosaur's dry primitive equations on sigma levels.

`build_model(config)` assembles everything a run needs from a `SimulationConfig`:
the spectral grid (T`truncation`, Gaussian nodes), equidistant sigma layers,
the Held & Suarez (1994) relaxation and Rayleigh drag, the IMEX SIL3 time
stepper with dinosaur's standard exponential filter (tau = 0.0087504,
order 1.5, cutoff 0.8, as in dinosaur's Held-Suarez example), and the
stochastic vorticity forcing of `forcing.py`. The orography is flat.

A `SimulatorState` is the full model state: the modal dynamics (nondimensional),
the AR(1) forcing and the absolute step count since the start of the spin-up.
`HeldSuarezModel.advance(state, stream_key)` moves it one output interval
(`output_hours`) forward. It is the one compiled function that every run uses
(spin-up, stored trajectory, re-integration from restarts, reference members),
so the same inputs give bit-identical states whichever path reached them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import (
    coordinate_systems,
    held_suarez,
    primitive_equations,
    primitive_equations_states,
    scales,
    sigma_coordinates,
    spherical_harmonic,
    time_integration,
    xarray_utils,
)

from gencast_rmmd.config import SimulationConfig
from gencast_rmmd.data.simulator.forcing import StochasticForcing, build_forcing

UNITS = scales.units
REFERENCE_SURFACE_PRESSURE_PA = 1.0e5
# Random streams derived from the seed with jax.random.fold_in (explicit, never global).
TRUTH_STREAM = 0
MEMBER_STREAM = 1
INITIAL_PERTURBATION_STREAM = 2
# SimulationConfig fields the compiled model depends on.
DYNAMICS_FIELDS: tuple[str, ...] = ("truncation", "sigma_layers", "time_step_minutes", "output_hours",
                                    "initial_perturbation_kelvin", "stochastic")


class SimulatorState(NamedTuple):
    """The full state of a run: enough to continue it bit-identically.

    `dynamics` is dinosaur's modal `State` (vorticity, divergence, temperature
    variation, log surface pressure; nondimensional), `forcing` the AR(1)
    forcing (modal, nondimensional, shape `(2, m, l)`: vorticity, heating), `step` the
    number of model time steps since the start of the spin-up (int32 scalar).
    """

    dynamics: primitive_equations.State
    forcing: jax.Array
    step: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class HeldSuarezModel:
    """A built simulation: grid, physics constants and the compiled time stepping.

    Attributes: `coords` (spectral grid + sigma layers), `physics_specs`
    (dinosaur's nondimensionalisation), `reference_temperature` (288 K,
    nondimensional, per layer), `time_step` (nondimensional), `steps_per_output` (model steps per
    `output_hours`), `forcing`, and `advance`: the jitted function moving one
    state one output interval forward with the noise of a stream key.
    """

    config: SimulationConfig
    coords: coordinate_systems.CoordinateSystem
    physics_specs: primitive_equations.PrimitiveEquationsSpecs
    reference_temperature: np.ndarray
    time_step: float
    steps_per_output: int
    forcing: StochasticForcing
    advance: Callable[[SimulatorState, jax.Array], SimulatorState]

    @property
    def steps_per_day(self) -> int:
        """Model time steps per simulated day."""
        return self.steps_per_output * 24 // self.config.output_hours

    def initial_state(self, seed: int) -> SimulatorState:
        """The start of the spin-up under `seed`: an isothermal (288 K) resting atmosphere at 1000 hPa plus noise.

        The temperature noise (`initial_perturbation_kelvin` RMS over the
        sphere, all resolved wavenumbers >= 1, seeded) breaks the zonal
        symmetry so baroclinic eddies grow from every longitude at once.
        """
        make_state, _ = primitive_equations_states.isothermal_rest_atmosphere(
            self.coords, self.physics_specs, p0=REFERENCE_SURFACE_PRESSURE_PA * UNITS.pascal)
        key = stream_key(seed, INITIAL_PERTURBATION_STREAM)
        state = make_state(rng_key=jax.random.fold_in(key, 0))
        grid = self.coords.horizontal
        _, total_wavenumber = grid.modal_mesh
        mask = np.asarray(grid.mask) & (total_wavenumber >= 1) & (total_wavenumber < grid.total_wavenumbers - 1)
        kelvin = self.physics_specs.nondimensionalize(self.config.initial_perturbation_kelvin * UNITS.degK)
        # Orthonormal harmonics: the area mean of Y^2 is 1/(4 pi), so N unit modes give variance N/(4 pi).
        scale = kelvin * math.sqrt(4.0 * math.pi / max(int(mask.sum()), 1))
        noise = jax.random.normal(jax.random.fold_in(key, 1), self.coords.modal_shape, dtype=jnp.float32)
        temperature = state.temperature_variation + scale * noise * mask
        dynamics = primitive_equations.State(
            vorticity=state.vorticity, divergence=state.divergence,
            temperature_variation=temperature, log_surface_pressure=state.log_surface_pressure)
        return SimulatorState(dynamics, self.forcing.zero_state(), jnp.asarray(0, dtype=jnp.int32))


def stream_key(seed: int, stream: int, *path: int) -> jax.Array:
    """The random key of `stream` (`TRUTH_STREAM`, `MEMBER_STREAM`, ...) under `seed`, folded with `path`.

    Keys are derived with `jax.random.fold_in` only, so e.g. member 3 of the
    reference run started at step 960 always gets
    `fold_in(fold_in(fold_in(key(seed), MEMBER_STREAM), 960), 3)`.
    """
    key = jax.random.fold_in(jax.random.key(seed), stream)
    for index in path:
        key = jax.random.fold_in(key, index)
    return key


def dynamics_config(config: SimulationConfig) -> SimulationConfig:
    """`config` reduced to what the compiled model depends on (others reset to defaults).

    Two configs with the same dynamics share one `build_model` result, e.g.
    runs that differ only in seed, length, start date or levels.
    """
    defaults = SimulationConfig()
    return config.model_copy(update={name: getattr(defaults, name) for name in SimulationConfig.model_fields
                                     if name not in DYNAMICS_FIELDS})


def spectral_grid(truncation: int) -> spherical_harmonic.Grid:
    """The Gaussian grid of a triangular truncation T`truncation` without aliasing of quadratic terms.

    Uses 4·n longitudes and 2·n Gaussian latitudes with n = ceil((3·T + 1) / 4),
    which reproduces dinosaur's T21 (64x32), T31 (96x48) and T42 (128x64) grids.
    """
    gaussian_nodes = math.ceil((3 * truncation + 1) / 4)
    return spherical_harmonic.Grid.construct(max_wavenumber=truncation, gaussian_nodes=gaussian_nodes)


def build_model(config: SimulationConfig) -> HeldSuarezModel:
    """Build the Held-Suarez model for `config` (cached per `dynamics_config(config)`).

    Compiles nothing yet; the first `advance` call compiles (seconds). The
    cache makes repeated runs in one process (tests, the reference ensemble
    after the main run) reuse the compiled functions.
    """
    return _build_model(dynamics_config(config))


@functools.lru_cache(maxsize=4)
def _build_model(config: SimulationConfig) -> HeldSuarezModel:
    coords = coordinate_systems.CoordinateSystem(
        horizontal=spectral_grid(config.truncation),
        vertical=sigma_coordinates.SigmaCoordinates.equidistant(config.sigma_layers))
    physics_specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
    _, aux_features = primitive_equations_states.isothermal_rest_atmosphere(
        coords, physics_specs, p0=REFERENCE_SURFACE_PRESSURE_PA * UNITS.pascal)
    reference_temperature = np.asarray(aux_features[xarray_utils.REF_TEMP_KEY])
    orography = primitive_equations.truncated_modal_orography(aux_features[xarray_utils.OROGRAPHY], coords)
    dynamics = primitive_equations.PrimitiveEquations(reference_temperature, orography, coords, physics_specs)
    relaxation = held_suarez.HeldSuarezForcing(
        coords=coords, physics_specs=physics_specs, reference_temperature=reference_temperature,
        p0=REFERENCE_SURFACE_PRESSURE_PA * UNITS.pascal)
    time_step = float(physics_specs.nondimensionalize(config.time_step_minutes * UNITS.minute))
    dycore_step = time_integration.imex_rk_sil3(
        time_integration.compose_equations([dynamics, relaxation]), time_step)
    dycore_step = time_integration.step_with_filters(dycore_step, [
        time_integration.exponential_step_filter(coords.horizontal, time_step, tau=0.0087504, order=1.5,
                                                 cutoff=0.8)])
    forcing = build_forcing(config.stochastic, coords, physics_specs, time_step)
    steps_per_output = round(config.output_hours * 60.0 / config.time_step_minutes)

    def step(state: SimulatorState, key: jax.Array) -> SimulatorState:
        # Operator splitting: dynamics + Held-Suarez over dt, then the AR(1) forcing
        # (advanced with the noise of this step) adds dt * F to vorticity and temperature.
        dynamics_next = dycore_step(state.dynamics)
        forcing_next = forcing.advance(state.forcing, jax.random.fold_in(key, state.step))
        vorticity_tendency, temperature_tendency = forcing.tendencies(forcing_next)
        dynamics_next = dataclasses.replace(
            dynamics_next,
            vorticity=dynamics_next.vorticity + time_step * vorticity_tendency,
            temperature_variation=dynamics_next.temperature_variation + time_step * temperature_tendency)
        return SimulatorState(dynamics_next, forcing_next, state.step + 1)

    def advance(state: SimulatorState, key: jax.Array) -> SimulatorState:
        body = lambda carry, _: (step(carry, key), None)
        final, _ = jax.lax.scan(body, state, xs=None, length=steps_per_output)
        return final

    return HeldSuarezModel(
        config=config, coords=coords, physics_specs=physics_specs,
        reference_temperature=reference_temperature, time_step=time_step,
        steps_per_output=steps_per_output, forcing=forcing,
        advance=jax.jit(advance))
