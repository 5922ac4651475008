"""One interaction-network message-passing step on a bipartite graph (GenCast encoder/decoder).

With sender latents s, receiver latents r and edge latents e (all width D),
conditioning c (the noise-level encoding):
    m_k  = MLP_e([e_k, s_{sender(k)}, r_{receiver(k)}]; c),   e'_k = e_k + m_k
    r'_i = r_i + MLP_r([r_i, sum_{k: receiver(k)=i} a_k]; c)
    s'_j = s_j + MLP_s(s_j; c)             (optional: encoder updates grid nodes too)
where the aggregated a_k is the updated edge latent e'_k (`updated_edge_latents`) or the
message m_k alone (`edge_mlp_outputs`: graphcast's typed InteractionNetwork, whose
residual is added after the node update). Every MLP ends in a FiLM-conditioned
LayerNorm. Aggregation is a float32 sum.
Arrays are unbatched ([nodes, D]); the denoiser vmaps over the batch.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from gencast_rmmd.models.layers import ConditionedMLP


class InteractionNetwork(hk.Module):
    """A single message-passing step from senders to receivers."""

    def __init__(self, latent_size: int, hidden_layers: int, update_senders: bool,
                 aggregate: str = "updated_edge_latents", name: str | None = None):
        super().__init__(name=name)
        self._latent, self._hidden_layers, self._update_senders = latent_size, hidden_layers, update_senders
        self._aggregate_messages_only = aggregate == "edge_mlp_outputs"

    def __call__(self, sender_latents: jax.Array, receiver_latents: jax.Array, edge_latents: jax.Array,
                 senders: jax.Array, receivers: jax.Array, conditioning: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns updated (sender_latents, receiver_latents, edge_latents)."""
        mlp = lambda name: ConditionedMLP(self._latent, self._latent, self._hidden_layers, name=name)  # noqa: E731
        # = MLP(concat([e, s[senders], r[receivers]])): the first layer projects the nodes, then gathers
        messages = [(edge_latents, None), (sender_latents, senders), (receiver_latents, receivers)]
        edge_messages = mlp("edge_mlp")(messages, conditioning)
        edge_latents = edge_latents + edge_messages
        sent = edge_messages if self._aggregate_messages_only else edge_latents
        aggregated = jax.ops.segment_sum(sent.astype(jnp.float32), receivers,
                                         num_segments=receiver_latents.shape[0]).astype(edge_latents.dtype)
        receiver_latents = receiver_latents + mlp("receiver_mlp")(
            jnp.concatenate([receiver_latents, aggregated], axis=-1), conditioning)
        if self._update_senders:
            sender_latents = sender_latents + mlp("sender_mlp")(sender_latents, conditioning)
        return sender_latents, receiver_latents, edge_latents
