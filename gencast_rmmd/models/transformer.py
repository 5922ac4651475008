"""The processor: a pre-LN transformer over mesh nodes with k-hop-restricted attention.

Each of L layers (GenCast: 16 layers, 4 heads, FFW 2048, GELU):
    h = h + W_o · MHA(LN_c(h))          attention only to j with ((A + I)^k)_{ij} != 0
    h = h + W_2 · gelu(W_1 · LN_c(h))
LN_c is a LayerNorm with FiLM noise conditioning; the final projections W_o
and W_2 start at zero, so every block is the identity at initialisation.
Attention is dense with an [N, N] mask, banded (one contiguous key window
per query block: static slices, the fastest on small meshes), or block-sparse
over the banded node order (big meshes); see `gencast_rmmd.geometry`. All
three compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.models.layers import ConditionedLayerNorm


def dense_masked_attention(queries: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d) + log mask) v per head. q, k, v: [N, H, d]; mask: [N, N] bool."""
    logits = jnp.einsum("qhd,khd->hqk", queries, keys) / np.sqrt(queries.shape[-1]).astype(queries.dtype)
    logits = jnp.where(mask[None], logits.astype(jnp.float32), -1e30)
    weights = jax.nn.softmax(logits, axis=-1).astype(values.dtype)
    return jnp.einsum("hqk,khd->qhd", weights, values)


def banded_attention(queries: jax.Array, keys: jax.Array, values: jax.Array,
                     windows: tuple[tuple[int, int, int, int], ...], masks: tuple[np.ndarray, ...]) -> jax.Array:
    """Dense masked attention computed window by window: rows [a, b) of q against keys [c, d) only.

    `windows`/`masks` are a `BandLayout`'s; every slice is static, so there are no gathers. Exact:
    equals `dense_masked_attention` with the layout's dense mask.
    """
    blocks = [dense_masked_attention(queries[start:stop], keys[key_start:key_stop], values[key_start:key_stop],
                                     mask)
              for (start, stop, key_start, key_stop), mask in zip(windows, masks)]
    return jnp.concatenate(blocks, axis=0)


def block_sparse_attention(queries: jax.Array, keys: jax.Array, values: jax.Array,
                           key_blocks: jax.Array, block_masks: jax.Array, block_size: int) -> jax.Array:
    """Attention over banded blocks: each query block attends only to its listed key blocks.

    q, k, v: [N, H, d] with N padded to a multiple of `block_size`;
    key_blocks: [n_blocks, max_key_blocks] int (block indices);
    block_masks: [n_blocks, max_key_blocks, block, block] bool (False for padding).
    Exact: equals dense attention with the union of the block masks.
    """
    n, heads, width = queries.shape
    n_blocks = n // block_size
    q = queries.reshape(n_blocks, block_size, heads, width)
    k = keys.reshape(n_blocks, block_size, heads, width)[key_blocks]        # [nb, kb, b, H, d]
    v = values.reshape(n_blocks, block_size, heads, width)[key_blocks]
    logits = jnp.einsum("nqhd,nkshd->nhqks", q, k) / np.sqrt(width).astype(q.dtype)
    mask = jnp.transpose(block_masks, (0, 2, 1, 3))[:, None]               # [nb, 1, b, kb, b]
    logits = jnp.where(mask, logits.astype(jnp.float32), -1e30)
    shape = logits.shape
    weights = jax.nn.softmax(logits.reshape(*shape[:3], -1), axis=-1).reshape(shape).astype(v.dtype)
    out = jnp.einsum("nhqks,nkshd->nqhd", weights, v)
    return out.reshape(n, heads, width)


@dataclass(frozen=True, eq=False)
class DenseAttention:
    """Every query against every key, k-hop mask [N, N] bool (small meshes)."""

    mask: np.ndarray

    def attend(self, queries: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
        return dense_masked_attention(queries, keys, values, self.mask)


@dataclass(frozen=True, eq=False)
class BandedAttention:
    """One contiguous key window per query block: windows [nb] starts, window_masks [nb, b, w] (small meshes)."""

    windows: np.ndarray
    window_masks: np.ndarray

    def attend(self, queries: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
        return banded_attention(queries, keys, values, self.windows, self.window_masks)


@dataclass(frozen=True, eq=False)
class BlockSparseAttention:
    """Key blocks per query block over the banded node order, nodes padded to `padded_nodes` (big meshes)."""

    key_blocks: np.ndarray
    block_masks: np.ndarray
    block_size: int
    padded_nodes: int

    def attend(self, queries: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
        n = queries.shape[0]
        padding = ((0, self.padded_nodes - n), (0, 0), (0, 0))
        return block_sparse_attention(jnp.pad(queries, padding), jnp.pad(keys, padding), jnp.pad(values, padding),
                                      self.key_blocks, self.block_masks, self.block_size)[:n]


# The processor's k-hop attention as constants; all three compute the same function.
AttentionLayout = DenseAttention | BandedAttention | BlockSparseAttention


class KHopAttention(hk.Module):
    """Multi-head self-attention restricted to the k-hop neighbourhood; output projection starts at 0."""

    def __init__(self, num_heads: int, name: str | None = None):
        super().__init__(name=name)
        self._heads = num_heads

    def __call__(self, x: jax.Array, attention: AttentionLayout) -> jax.Array:
        n, width = x.shape
        head_width = width // self._heads

        def project(name: str) -> jax.Array:
            return hk.Linear(width, with_bias=False, name=name)(x).reshape(n, self._heads, head_width)

        out = attention.attend(project("query"), project("key"), project("value"))
        return hk.Linear(width, w_init=hk.initializers.Constant(0.0), name="output")(out.reshape(n, width))


class TransformerBlock(hk.Module):
    """h + Attn(LN_c(h)), then h + FFW(LN_c(h)); the FFW output projection starts at 0."""

    def __init__(self, num_heads: int, ffw_hidden: int, name: str | None = None):
        super().__init__(name=name)
        self._heads, self._ffw = num_heads, ffw_hidden

    def __call__(self, latents: jax.Array, conditioning: jax.Array, attention: AttentionLayout) -> jax.Array:
        width = latents.shape[-1]
        normed = ConditionedLayerNorm(name="attention_norm")(latents, conditioning)
        latents = latents + KHopAttention(self._heads, name="attention")(normed, attention)
        normed = ConditionedLayerNorm(name="ffw_norm")(latents, conditioning)
        hidden = jax.nn.gelu(hk.Linear(self._ffw, name="ffw_hidden")(normed))
        return latents + hk.Linear(width, w_init=hk.initializers.Constant(0.0), name="ffw_output")(hidden)


class MeshTransformer(hk.Module):
    """A stack of `TransformerBlock`s over [N, D] mesh latents, conditioned on the noise-level encoding.

    With `final_norm` the stack ends in a conditioned LayerNorm, as graphcast's sparse transformer does.
    """

    def __init__(self, num_layers: int, num_heads: int, ffw_hidden: int, final_norm: bool = False,
                 name: str | None = None):
        super().__init__(name=name)
        self._layers, self._heads, self._ffw, self._final_norm = num_layers, num_heads, ffw_hidden, final_norm

    def __call__(self, latents: jax.Array, conditioning: jax.Array, attention: AttentionLayout) -> jax.Array:
        for layer in range(self._layers):
            latents = TransformerBlock(self._heads, self._ffw, name=f"layer_{layer}")(latents, conditioning, attention)
        if self._final_norm:
            latents = ConditionedLayerNorm(name="final_norm")(latents, conditioning)
        return latents
