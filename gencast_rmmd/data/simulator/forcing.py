"""Stochastic forcing: what makes the stored 12 h transition uncertain.

The stored fields are a T21-equivalent view of the model, so without noise the
next stored state would be (almost) a deterministic function of the current
one. Small random forcings of the vorticity and temperature equations, like the
stochastic eddy forcings of idealised GCM studies or the stochastic physics of
operational ensembles, give every 12 h step a spread of possible outcomes while
leaving the Held-Suarez climate intact.

Each forcing F_c (c = vorticity, heating; modal, one horizontal pattern) follows
an AR(1) process per model step of length dt:

    F_c(n+1) = phi F_c(n) + sqrt(1 - phi^2) s_c xi_c(n),   phi = exp(-dt / tau),

with xi_c(n) independent standard normals on the spherical harmonics of total
wavenumber l in [min_wavenumber, max_wavenumber] and zero elsewhere. Dinosaur's
harmonics are orthonormal on the unit sphere (the area mean of Y^2 is
1/(4 pi)), so with N forced modes the stationary area-mean variance of F_c on the
grid is s_c^2 N / (4 pi); s_c is chosen so that its square root equals the
configured amplitude. The tendencies added to the model are F_vorticity at
every sigma layer and sigma * F_heating (no heating at the top, full at the
surface). The noise of step n is drawn from `fold_in(stream_key, n)`: any run
that reaches step n with the same key draws the same noise, and a different
key (an ensemble member) draws independent noise.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import coordinate_systems, primitive_equations, scales

from gencast_rmmd.config import StochasticForcingConfig

UNITS = scales.units
VORTICITY, HEATING = 0, 1


@dataclasses.dataclass(frozen=True, eq=False)
class StochasticForcing:
    """The AR(1) forcing processes on a given spectral grid (all quantities nondimensional).

    `band_mask` is 1 on the forced modes `(m, l)`, `persistence` is phi,
    `innovation_scale` the standard deviation of the new noise per forced
    coefficient and step, per component `(2,)`, and `vertical_profiles` the
    weight of each component at each sigma layer `(2, layers)`.
    """

    band_mask: np.ndarray
    persistence: float
    innovation_scale: np.ndarray
    vertical_profiles: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the forcing state: `(2, m, l)`, vorticity then heating."""
        return (2, *self.band_mask.shape)

    def zero_state(self) -> jax.Array:
        """The forcing at the start of the spin-up (no forcing yet)."""
        return jnp.zeros(self.shape, dtype=jnp.float32)

    def advance(self, forcing: jax.Array, key: jax.Array) -> jax.Array:
        """One AR(1) step: `phi * forcing + innovation_scale * xi`, xi drawn from `key` on the band."""
        noise = jax.random.normal(key, self.shape, dtype=jnp.float32)
        scale = jnp.asarray(self.innovation_scale, jnp.float32)[:, None, None]
        return self.persistence * forcing + scale * noise * self.band_mask

    def tendencies(self, forcing: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The modal vorticity and temperature tendencies `(layers, m, l)` of a forcing state."""
        profiles = jnp.asarray(self.vertical_profiles, jnp.float32)[:, :, None, None]
        return profiles[VORTICITY] * forcing[VORTICITY], profiles[HEATING] * forcing[HEATING]


def build_forcing(config: StochasticForcingConfig, coords: coordinate_systems.CoordinateSystem,
                  physics_specs: primitive_equations.PrimitiveEquationsSpecs,
                  time_step: float) -> StochasticForcing:
    """The forcing processes for `config` on `coords`; `time_step` is the nondimensional model step.

    The amplitudes (vorticity tendency in s^-2, heating in K s^-1) are
    converted to dinosaur's nondimensional units and spread over the forced
    band so that the stationary RMS over the sphere equals them;
    `correlation_hours` sets phi = exp(-dt / tau).
    """
    grid = coords.horizontal
    _, total_wavenumber = grid.modal_mesh
    band = (np.asarray(grid.mask) & (total_wavenumber >= config.min_wavenumber)
            & (total_wavenumber <= config.max_wavenumber))
    forced_modes = int(band.sum())
    amplitudes = np.array([
        physics_specs.nondimensionalize(config.amplitude / UNITS.s ** 2),
        physics_specs.nondimensionalize(config.heating_amplitude * UNITS.degK / UNITS.s),
    ], dtype=np.float64)
    tau = float(physics_specs.nondimensionalize(config.correlation_hours * UNITS.hour))
    persistence = math.exp(-time_step / tau)
    stationary_scale = amplitudes * math.sqrt(4.0 * math.pi / forced_modes) if forced_modes else 0.0 * amplitudes
    sigma = np.asarray(coords.vertical.centers, dtype=np.float64)
    return StochasticForcing(
        band_mask=band.astype(np.float32),
        persistence=persistence,
        innovation_scale=math.sqrt(1.0 - persistence ** 2) * stationary_scale,
        vertical_profiles=np.stack([np.ones_like(sigma), sigma]).astype(np.float32))
