"""From the modal model state to WB2 variables on pressure levels, on the WB2 64x32 grid.

Horizontal: the modal state is truncated to T21 (a no-op for a T21 run) and
evaluated exactly on the WB2 64x32 equiangular nodes (longitude 0, 5.625, ...,
354.375; latitude -87.1875 ... 87.1875, no poles). Spectral truncation is the
natural regridding of a spectral model; T21 is what a 64x32 grid resolves.

Vertical: winds and temperature at the sigma-layer centres, geopotential from
dinosaur's hydrostatic discretisation of the model (`get_geopotential_on_sigma`),
interpolated linearly in ln(p) to each pressure level. Outside the model
layers (a level above the top layer centre, or below the lowest one, which
with a flat 1000 hPa planet is where 925/1000 hPa often fall):
- below the lowest layer (pressure p > p_K): temperature follows the standard
  lapse rate gamma = 6.5 K/km, T = T_K (p / p_K)^(R gamma / g), and
  geopotential the matching hydrostatic profile,
  Phi = Phi_K + (g T_K / gamma)(1 - (p / p_K)^(R gamma / g)) (as ECMWF
  extrapolates below ground); winds keep their lowest-layer values;
- above the top layer: isothermal, Phi = Phi_1 - R T_1 ln(p / p_1), winds constant.

Surface stand-ins (documented in the store attributes): `2m_temperature` is the
lowest-layer temperature carried down to the surface pressure along the same
lapse rate; `10m_u/v_component_of_wind` are the lowest-layer winds
(sigma ~ 0.96, a few hundred metres up); `mean_sea_level_pressure` is the
surface pressure reduced to sea level, p_s (1 + gamma z_s / T_s)^(g / (R gamma)),
which equals p_s on this flat planet. Everything is returned in SI units.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import primitive_equations, scales, spherical_harmonic

from gencast_rmmd.data.simulator.model import HeldSuarezModel

UNITS = scales.units
WB2_LONGITUDES_64: np.ndarray = np.arange(64) * 5.625
WB2_LATITUDES_32: np.ndarray = np.linspace(-87.1875, 87.1875, 32)
OUTPUT_TRUNCATION = 21
STANDARD_LAPSE_RATE = 0.0065  # K m-1

ATMOSPHERIC_VARIABLES: tuple[str, ...] = (
    "temperature", "geopotential", "u_component_of_wind", "v_component_of_wind")
SURFACE_VARIABLES: tuple[str, ...] = (
    "2m_temperature", "mean_sea_level_pressure", "10m_u_component_of_wind", "10m_v_component_of_wind")
STATIC_VARIABLES: tuple[str, ...] = ("geopotential_at_surface", "land_sea_mask")


def output_grid(truncation: int) -> spherical_harmonic.Grid:
    """The WB2 64x32 equiangular grid carrying the first min(truncation, 21) wavenumbers."""
    kept = min(truncation, OUTPUT_TRUNCATION)
    return spherical_harmonic.Grid(
        longitude_wavenumbers=kept + 1, total_wavenumbers=kept + 2,
        longitude_nodes=WB2_LONGITUDES_64.size, latitude_nodes=WB2_LATITUDES_32.size,
        latitude_spacing="equiangular")


@dataclasses.dataclass(frozen=True, eq=False)
class PressureLevelDiagnostics:
    """Compiled conversion of model states to stored variables.

    `levels` are the pressure levels (hPa); `fields(dynamics)` maps a batch of
    modal dynamics states (leading axis: batch) to a dict of float32 arrays:
    atmospheric variables `(batch, level, longitude, latitude)`, surface
    variables `(batch, longitude, latitude)`, SI units. `static` holds the
    time-invariant fields `(longitude, latitude)`.
    """

    levels: tuple[int, ...]
    fields: Callable[[primitive_equations.State], dict[str, jax.Array]]
    static: dict[str, np.ndarray]


@functools.lru_cache(maxsize=8)
def build_diagnostics(model: HeldSuarezModel, levels: tuple[int, ...]) -> PressureLevelDiagnostics:
    """Build (and cache per model and levels) the conversion to `levels` (hPa) on the WB2 64x32 grid."""
    specs = model.physics_specs
    grid = output_grid(model.config.truncation)
    modal_shape = grid.modal_shape
    sigma = np.asarray(model.coords.vertical.centers, dtype=np.float64)
    log_sigma = jnp.asarray(np.log(sigma), dtype=jnp.float32)
    gas_constant = float(specs.dimensionalize(specs.R, UNITS.J / UNITS.kilogram / UNITS.degK).m)
    gravity = float(specs.dimensionalize(specs.g, UNITS.m / UNITS.s ** 2).m)
    velocity_si = float(specs.dimensionalize(1.0, UNITS.m / UNITS.s).m)
    temperature_si = float(specs.dimensionalize(1.0, UNITS.degK).m)
    log_pressure_offset = float(np.log(specs.dimensionalize(1.0, UNITS.pascal).m))
    exponent = gas_constant * STANDARD_LAPSE_RATE / gravity
    level_log_pressure = jnp.asarray(np.log(np.asarray(levels, dtype=np.float64) * 100.0), dtype=jnp.float32)
    reference_temperature = jnp.asarray(model.reference_temperature * temperature_si, dtype=jnp.float32)
    surface_geopotential = np.zeros(grid.nodal_shape, dtype=np.float32)  # flat planet
    geopotential_weights = jnp.asarray(
        primitive_equations.get_geopotential_weights_sigma(model.coords.vertical, gas_constant), jnp.float32)

    # ln(p_s) is ~45 in dinosaur's units: transform only its anomaly from the global mean
    # (coefficient (0, 0)) so rounding does not depend on how a batch is summed.
    unit_mean = np.zeros((1, *modal_shape), dtype=np.float32)
    unit_mean[0, 0, 0] = 1.0
    mean_harmonic_value = float(np.asarray(grid.to_nodal(unit_mean))[0, 0, 0])

    def truncate(modal: jax.Array) -> jax.Array:
        return modal[..., :modal_shape[0], :modal_shape[1]]

    def column_interp(target: jax.Array, values: jax.Array) -> jax.Array:
        # target (J, x, y) in ln sigma, values (K, x, y) on log_sigma -> (J, x, y); constant outside.
        per_column = jax.vmap(jax.vmap(jnp.interp, (1, None, 1), 1), (1, None, 1), 1)
        return per_column(target, log_sigma, values)

    def single(dynamics: primitive_equations.State) -> dict[str, jax.Array]:
        u, v = spherical_harmonic.vor_div_to_uv_nodal(
            grid, truncate(dynamics.vorticity), truncate(dynamics.divergence))
        u, v = u * velocity_si, v * velocity_si
        temperature = reference_temperature[:, None, None] + grid.to_nodal(
            truncate(dynamics.temperature_variation)) * temperature_si
        modal_log_pressure = truncate(dynamics.log_surface_pressure)
        global_mean = modal_log_pressure[0, 0, 0] * mean_harmonic_value + log_pressure_offset
        log_surface_pressure = grid.to_nodal(modal_log_pressure.at[0, 0, 0].set(0.0))[0] + global_mean
        geopotential = surface_geopotential + jnp.einsum("gh,hxy->gxy", geopotential_weights, temperature)
        # ln(p / p_s) of each level, per column: the sigma the level sits at.
        target = level_log_pressure[:, None, None] - log_surface_pressure[None]
        below = target > log_sigma[-1]
        above = target < log_sigma[0]
        lowest_temperature, top_temperature = temperature[-1], temperature[0]
        lapse_ratio = jnp.exp(exponent * (target - log_sigma[-1]))  # (p / p_K)^(R gamma / g)
        level_temperature = jnp.where(below, lowest_temperature * lapse_ratio,
                                      column_interp(target, temperature))
        level_geopotential = column_interp(target, geopotential)
        level_geopotential = jnp.where(
            below, geopotential[-1] + gravity * lowest_temperature / STANDARD_LAPSE_RATE * (1.0 - lapse_ratio),
            level_geopotential)
        level_geopotential = jnp.where(
            above, geopotential[0] - gas_constant * top_temperature * (target - log_sigma[0]), level_geopotential)
        surface_temperature = lowest_temperature * jnp.exp(-exponent * log_sigma[-1])
        surface_height = surface_geopotential / gravity
        mean_sea_level_pressure = jnp.exp(log_surface_pressure) * (
            1.0 + STANDARD_LAPSE_RATE * surface_height / surface_temperature) ** (1.0 / exponent)
        fields = {
            "temperature": level_temperature,
            "geopotential": level_geopotential,
            "u_component_of_wind": column_interp(target, u),
            "v_component_of_wind": column_interp(target, v),
            "2m_temperature": surface_temperature,
            "mean_sea_level_pressure": mean_sea_level_pressure,
            "10m_u_component_of_wind": u[-1],
            "10m_v_component_of_wind": v[-1],
        }
        return {name: value.astype(jnp.float32) for name, value in fields.items()}

    static = {"geopotential_at_surface": surface_geopotential.copy(),
              "land_sea_mask": np.zeros(grid.nodal_shape, dtype=np.float32)}
    return PressureLevelDiagnostics(levels=tuple(levels), fields=jax.jit(jax.vmap(single)), static=static)
