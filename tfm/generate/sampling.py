"""Token choice for one decoding step: greedy argmax, and sampling with temperature / top-k / top-p.

The logits processors follow Hugging Face's order and rules (temperature, then top-k, then top-p,
keeping at least one token), so a user switching from `transformers` gets the same distribution.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def greedy(logits: jax.Array) -> jax.Array:
  """Returns the most likely token of each row: [batch] int32 (the first on ties)."""
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Returns logits with everything below the k-th largest value of each row set to -inf."""
  kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [batch, 1]
  return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """Returns logits keeping the smallest set of most likely tokens whose probability reaches top_p."""
  # As in HF's TopPLogitsWarper: sort ascending, drop the prefix whose cumulative probability is
  # <= 1 - top_p, but always keep the most likely token.
  ascending = jnp.sort(logits, axis=-1)  # [batch, vocab]
  cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  drop = cum <= 1.0 - top_p
  drop = drop.at[..., -1].set(False)
  # `drop` is a prefix of the ascending order, so the kept tokens are those >= the first kept value.
  cutoff = jnp.take_along_axis(ascending, jnp.argmin(drop, axis=-1)[..., None], axis=-1)  # [batch, 1]
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample(logits: jax.Array, key: jax.Array, *, temperature: jax.Array, top_k: Optional[int],
           top_p: Optional[jax.Array]) -> jax.Array:
  """Returns one token per row sampled from softmax(processed logits): [batch] int32."""
  # logits: [batch, vocab] float32; temperature, top_p: scalars (traced: changing them never recompiles)
  logits = logits / temperature
  if top_k is not None:
    logits = top_k_filter(logits, top_k)
  if top_p is not None:
    logits = top_p_filter(logits, top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
