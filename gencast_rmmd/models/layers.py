"""Building blocks: FiLM-conditioned LayerNorm, MLPs, the noise-level encoder.

GenCast conditions every LayerNorm on the noise level: the normalised
activations are scaled by (1 + Linear(c)) and shifted by Linear(c), where c is
the noise-level encoding; both Linears start at zero, so at initialisation the
norm is a plain LayerNorm.
"""

from __future__ import annotations

from typing import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


class ConditionedLayerNorm(hk.Module):
    """LayerNorm over the last axis with FiLM: y = norm(x) * (1 + W_s c) + W_o c (W init 0)."""

    def __init__(self, name: str | None = None):
        super().__init__(name=name)

    def __call__(self, x: jax.Array, conditioning: jax.Array) -> jax.Array:
        normalized = hk.LayerNorm(axis=-1, create_scale=False, create_offset=False)(x)
        width = x.shape[-1]
        scale = hk.Linear(width, w_init=hk.initializers.Constant(0.0), name="film_scale")(conditioning)
        offset = hk.Linear(width, w_init=hk.initializers.Constant(0.0), name="film_offset")(conditioning)
        return normalized * (1.0 + scale) + offset


Part = tuple[jax.Array, "jax.Array | np.ndarray | None"]


class _GatheredLinear(hk.Module):
    """hk.Linear on concat([x_i[index_i] for each part]), computed as sum_i (x_i W_i)[index_i] + b.

    The same parameters ("w" [sum of widths, out], "b") and initialiser as `hk.Linear`. Projecting
    each part on its own rows before gathering costs one matmul per node instead of per edge: for
    the encoder and decoder edge MLPs that is 2/3 of the first layer's work.
    """

    def __init__(self, output_size: int, name: str | None = None):
        super().__init__(name=name)
        self._output_size = output_size

    def __call__(self, parts: Sequence[Part]) -> jax.Array:
        widths = [x.shape[-1] for x, _ in parts]
        dtype = parts[0][0].dtype
        w = hk.get_parameter("w", [sum(widths), self._output_size], dtype,
                             init=hk.initializers.TruncatedNormal(1.0 / np.sqrt(sum(widths))))
        b = hk.get_parameter("b", [self._output_size], dtype, init=jnp.zeros)
        out, offset = None, 0
        for (x, index), width in zip(parts, widths):
            projected = x @ w[offset:offset + width]
            projected = projected if index is None else projected[index]
            out = projected if out is None else out + projected
            offset += width
        return out + b


class _MLP(hk.Module):
    """hk.nets.MLP (swish between layers, none after the last), whose first layer takes gathered parts."""

    def __init__(self, sizes: Sequence[int], name: str | None = None):
        super().__init__(name=name)
        self._first = _GatheredLinear(sizes[0], name="linear_0")
        self._rest = [hk.Linear(size, name=f"linear_{index}") for index, size in enumerate(sizes[1:], start=1)]

    def __call__(self, parts: Sequence[Part]) -> jax.Array:
        x = self._first(parts)
        for layer in self._rest:
            x = layer(jax.nn.swish(x))
        return x


class ConditionedMLP(hk.Module):
    """MLP (swish) whose output goes through a conditioned LayerNorm (GraphCast's GNN MLPs).

    `x` is one array, or a sequence of parts (array, index or None) standing for
    concat([array[index] ...], axis=-1) (e.g. edge, sender and receiver latents of every edge).
    """

    def __init__(self, hidden_size: int, output_size: int, hidden_layers: int, name: str | None = None):
        super().__init__(name=name)
        self._sizes = [hidden_size] * hidden_layers + [output_size]

    def __call__(self, x: "jax.Array | Sequence[Part]", conditioning: jax.Array) -> jax.Array:
        parts = [(x, None)] if isinstance(x, jax.Array | np.ndarray) else list(x)
        x = _MLP(self._sizes, name="mlp")(parts)
        return ConditionedLayerNorm(name="norm")(x, conditioning)


def fourier_features(values: jax.Array, base_period: float, num_frequencies: int) -> jax.Array:
    """[..., ] -> [..., 2F]: sin and cos of 2 pi (k / base_period) v for k = 1..F."""
    frequencies = np.arange(1, num_frequencies + 1, dtype=np.float32) / base_period
    phases = 2.0 * np.pi * values[..., None] * frequencies
    return jnp.concatenate([jnp.sin(phases), jnp.cos(phases)], axis=-1)


class NoiseLevelEncoder(hk.Module):
    """sigma -> Fourier features of log(sigma) -> MLP (gelu); GenCast: 32 frequencies, period 16, MLP (32, 16)."""

    def __init__(self, base_period: float, num_frequencies: int, output_sizes: Sequence[int],
                 name: str | None = None):
        super().__init__(name=name)
        self._base_period, self._num_frequencies = base_period, num_frequencies
        self._output_sizes = tuple(output_sizes)

    def __call__(self, noise_level: jax.Array) -> jax.Array:
        features = fourier_features(jnp.log(noise_level), self._base_period, self._num_frequencies)
        # Variance scaling 2 suits sin/cos inputs (variance 1/2) and gelu hidden layers.
        w_init = hk.initializers.VarianceScaling(2.0, mode="fan_in", distribution="uniform")
        return hk.nets.MLP(self._output_sizes, w_init=w_init, activation=jax.nn.gelu, name="mlp")(features)
