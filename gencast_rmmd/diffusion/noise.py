"""Isotropic white noise on the sphere, sampled on a latitude/longitude grid.

GenCast (graphcast `samplers_utils.py`) perturbs targets with spherical noise,
not i.i.d. noise per grid point: i.i.d. noise on a lat/lon grid has far more
power per unit area near the poles, where points crowd together. Here a field is
a random spherical-harmonic series truncated at total wavenumber L,

    z(phi, lam) = sum_{l=0}^{L} sum_{|m|<=l} a_lm Y_lm(phi, lam),  a_lm ~ N(0, s_l^2) independent,

with real, L2(sphere)-orthonormal Y_lm. The addition theorem
sum_m Y_lm(p)^2 = (2l + 1) / (4 pi) gives Var z(p) = sum_l s_l^2 (2l + 1) / (4 pi) at
every point p, and Cov(z(p), z(q)) = sum_l s_l^2 (2l + 1) / (4 pi) P_l(cos gamma_pq)
depends only on the angular distance gamma_pq: the field is isotropic. The power
of total wavenumber l is w_l = (l + 1)^p / sum_k (k + 1)^p, s_l^2 = 4 pi w_l / (2l + 1),
so the variance is 1 at every grid point (poles included). p = 0 is GenCast's
flat spectrum (w_l = 1 / (L + 1)); p > 0 moves power from the planetary scales to
the small ones. L defaults to the largest wavenumber the grid resolves,
min(n_lon / 2 - 1, n_lat - 1) (31 on the WB2 64x32 grid).

The associated Legendre functions come from `dinosaur.associated_legendre`,
evaluated at the grid's own latitudes, so any ascending or descending
latitude vector works (equiangular with or without poles, Gaussian).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from dinosaur import associated_legendre

# (key, shape [B, lat, lon, C]) -> unit-variance noise of that shape.
NoiseFn = Callable[[jax.Array, tuple[int, ...]], jax.Array]


def resolvable_wavenumber(n_latitudes: int, n_longitudes: int) -> int:
    """The largest total wavenumber L a grid resolves: min(n_lon // 2 - 1, n_lat - 1).

    Longitudinal wavenumbers stay below the Nyquist wavenumber n_lon / 2, and at
    most n_lat Legendre functions of one order can be told apart on n_lat latitudes.
    """
    return min(n_longitudes // 2 - 1, n_latitudes - 1)


@dataclass(frozen=True, eq=False)
class SphericalNoise:
    """Unit-variance isotropic noise with a flat spherical-harmonic spectrum on a fixed grid.

    Build once per grid (`for_grid`), then call `noise(key, (B, lat, lon, C))`
    under `jit`: every [lat, lon] field is an independent sample (channels and
    examples are independent). The two basis tables are numpy constants:

    - `legendre[m, j, l] = s_l * Pbar_l^m(sin phi_j)` (zero for l < m), [M+1, lat, L+1];
    - `fourier[i, m, k]` = cos(m lam_i) (k = 0) or sin(m lam_i) (k = 1), times
      1/sqrt(2 pi) for m = 0 and 1/sqrt(pi) otherwise, [lon, M+1, 2];

    so z[j, i] = sum_{m, l, k} fourier[i, m, k] legendre[m, j, l] a[m, l, k], a ~ N(0, 1).
    """

    legendre: np.ndarray
    fourier: np.ndarray
    max_wavenumber: int
    spectral_exponent: float = 0.0

    @property
    def spec(self) -> dict:
        """What rebuilds this noise on its grid (`from_spec`); checkpoints store it."""
        return {"max_wavenumber": int(self.max_wavenumber), "spectral_exponent": float(self.spectral_exponent)}

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(n_lat, n_lon) of the grid the noise lives on."""
        return self.legendre.shape[1], self.fourier.shape[0]

    @classmethod
    def from_spec(cls, latitudes: np.ndarray, longitudes: np.ndarray, spec: dict | None) -> "SphericalNoise":
        """`for_grid` with a stored `spec` (None or missing keys: GenCast's noise for the grid)."""
        return cls.for_grid(latitudes, longitudes, **(spec or {}))

    @classmethod
    def for_grid(cls, latitudes: np.ndarray, longitudes: np.ndarray,
                 max_wavenumber: int | None = None, spectral_exponent: float = 0.0) -> "SphericalNoise":
        """Noise for a grid given by its latitudes and longitudes in degrees (cached per grid).

        `max_wavenumber` (L) defaults to `resolvable_wavenumber`; a smaller L gives
        smoother noise, still of unit variance. `spectral_exponent` (p) shapes the
        power per total wavenumber, (l + 1)^p (module docstring); 0 is flat.
        """
        latitudes = np.asarray(latitudes, dtype=np.float64)
        longitudes = np.asarray(longitudes, dtype=np.float64)
        if latitudes.ndim != 1 or longitudes.ndim != 1:
            raise ValueError("latitudes and longitudes must be 1-D coordinate vectors in degrees")
        if np.any(np.abs(latitudes) > 90.0 + 1e-9):
            raise ValueError(f"latitudes must lie in [-90, 90] degrees; got range "
                             f"[{latitudes.min()}, {latitudes.max()}]")
        resolvable = resolvable_wavenumber(len(latitudes), len(longitudes))
        wavenumber = resolvable if max_wavenumber is None else int(max_wavenumber)
        if not 1 <= wavenumber <= resolvable:
            raise ValueError(f"max_wavenumber must be in [1, {resolvable}] for a "
                             f"{len(latitudes)}x{len(longitudes)} grid; got {wavenumber}")
        return _build(tuple(latitudes.tolist()), tuple(longitudes.tolist()), wavenumber, float(spectral_exponent))

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        """A sample of shape [B, lat, lon, C]: independent unit-variance isotropic fields."""
        batch, n_lat, n_lon, channels = shape
        if (n_lat, n_lon) != self.grid_shape:
            raise ValueError(f"noise was built for a {self.grid_shape[0]}x{self.grid_shape[1]} "
                             f"(lat x lon) grid, asked for {n_lat}x{n_lon}")
        n_m, _, n_l = self.legendre.shape
        # Drawn flat, then reshaped: XLA on CPU compiles a multi-dimensional threefry draw ~5x slower.
        coefficient_shape = (batch, n_m, n_l, 2, channels)
        coefficients = jax.random.normal(key, (int(np.prod(coefficient_shape)),), dtype=jnp.float32)
        coefficients = coefficients.reshape(coefficient_shape)
        precision = jax.lax.Precision.HIGHEST
        by_order = jnp.einsum("mjl,bmlkc->bmjkc", self.legendre, coefficients, precision=precision)
        field = jnp.einsum("imk,bmjkc->bjic", self.fourier, by_order, precision=precision)
        return field.astype(dtype)


@functools.lru_cache(maxsize=16)
def _build(latitudes: tuple[float, ...], longitudes: tuple[float, ...], max_wavenumber: int,
           spectral_exponent: float) -> SphericalNoise:
    n_wavenumbers = max_wavenumber + 1
    sin_latitude = np.sin(np.deg2rad(np.asarray(latitudes)))
    legendre = associated_legendre.evaluate(n_m=n_wavenumbers, n_l=n_wavenumbers, x=sin_latitude)
    total = np.arange(n_wavenumbers)
    power = (total + 1.0) ** spectral_exponent
    power = power / power.sum()                    # w_l: the share of the variance in total wavenumber l
    spectrum_scale = np.sqrt(4.0 * np.pi * power / (2 * total + 1))
    legendre = legendre * spectrum_scale[None, None, :]

    angle = np.deg2rad(np.asarray(longitudes))[:, None] * np.arange(n_wavenumbers)[None, :]
    norm = np.where(np.arange(n_wavenumbers) == 0, 1.0 / np.sqrt(2.0 * np.pi), 1.0 / np.sqrt(np.pi))
    fourier = np.stack([np.cos(angle) * norm, np.sin(angle) * norm], axis=-1)
    return SphericalNoise(legendre=legendre.astype(np.float32), fourier=fourier.astype(np.float32),
                          max_wavenumber=max_wavenumber, spectral_exponent=spectral_exponent)


def iid_noise(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """I.i.d. standard normal noise per grid point (a `NoiseFn`; for tests and ablations, not GenCast)."""
    return jax.random.normal(key, (int(np.prod(shape)),), dtype=dtype).reshape(shape)
