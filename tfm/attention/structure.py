"""What an attention mask and an attention bias are made of: positions, segments, lengths, never [len, len].

A model describes its attention once, at its top, as a `Mask` (causal or not, the slot index of every
query and key, per-token positions for a sliding window, packed-segment ids, which keys are real
tokens) and, for T5 and ALiBi, a `Bias` (the learned bucket table or the head slopes, plus positions).
Every kernel turns that into its own form: the XLA and reference paths build a dense mask with
`Mask.block` over the whole range, the blockwise path one block at a time, cuDNN and the Pallas
kernels their own arguments (sequence lengths, segment ids, window sizes). Nothing here is a kernel.

Shapes: q_len / kv_len as in tfm.attention; `batch` may be 1 where an array is the same for every row.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


# A finite "minus infinity" for masked scores (every kernel): a row that sees no key then stays finite
# (no NaN), and bf16 / fp32 never overflow when a bias is added.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _cut(x: Optional[jax.Array], start, size: int, axis: int) -> Optional[jax.Array]:
  """Returns x[..., start:start + size, ...] along `axis` (start may be traced), or None."""
  if x is None:
    return None
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


@struct.dataclass
class Mask:
  """Query i may attend to key j (of batch row b) iff every condition present holds:

  causal:   kv_index[j] <= q_index[i]
  window:   |q_positions[b, i] - kv_positions[b, j]| < window   (with causal: the last `window` keys)
  segments: q_segments[b, i] == kv_segments[b, j]               (packed sequences)
  padding:  kv_valid[b, j]                                      (a real token, not padding)

  q_index / kv_index are the slots of queries and keys in the sequence (arange over a full sequence;
  over a KV cache, the queries' cache slots `cache_index + arange(q_len)` and `arange(max_len)`).
  """

  q_index: jax.Array                          # [q_len] int32
  kv_index: jax.Array                         # [kv_len] int32
  q_positions: Optional[jax.Array] = None     # [batch, q_len] int32 (needed by a window)
  kv_positions: Optional[jax.Array] = None    # [batch, kv_len] int32
  q_segments: Optional[jax.Array] = None      # [batch, q_len] int32
  kv_segments: Optional[jax.Array] = None     # [batch, kv_len] int32
  kv_valid: Optional[jax.Array] = None        # [batch, kv_len] bool
  causal: bool = struct.field(pytree_node=False, default=False)
  window: Optional[int] = struct.field(pytree_node=False, default=None)
  # q_index == kv_index == arange(len), known when tracing (self-attention over a whole sequence): what
  # lets a kernel skip the key blocks after a causal query block without looking at the indices.
  aligned: bool = struct.field(pytree_node=False, default=False)

  @property
  def q_len(self) -> int:
    """Returns the number of queries."""
    return self.q_index.shape[0]

  @property
  def kv_len(self) -> int:
    """Returns the number of keys."""
    return self.kv_index.shape[0]

  def block(self, q_start, q_size: int, k_start, k_size: int) -> Optional[jax.Array]:
    """Returns the [batch|1, 1, q_size, k_size] bool mask of queries q_start: and keys k_start: (None: all
    visible). Starts may be traced (inside a loop over blocks)."""
    parts = []
    if self.causal:
      qi = _cut(jnp.asarray(self.q_index), q_start, q_size, 0)
      ki = _cut(jnp.asarray(self.kv_index), k_start, k_size, 0)
      parts.append((ki[None, :] <= qi[:, None])[None, None])
    if self.window:
      qp = _cut(self.q_positions, q_start, q_size, 1)
      kp = _cut(self.kv_positions, k_start, k_size, 1)
      parts.append((jnp.abs(qp[:, :, None] - kp[:, None, :]) < self.window)[:, None])
    if self.q_segments is not None:
      qs = _cut(self.q_segments, q_start, q_size, 1)
      ks = _cut(self.kv_segments, k_start, k_size, 1)
      parts.append((qs[:, :, None] == ks[:, None, :])[:, None])
    if self.kv_valid is not None:
      parts.append(_cut(self.kv_valid, k_start, k_size, 1).astype(bool)[:, None, None, :])
    if not parts:
      return None
    out = parts[0]
    for p in parts[1:]:
      out = jnp.logical_and(out, p)
    return out

  def dense(self) -> Optional[jax.Array]:
    """Returns the whole [batch|1, 1, q_len, kv_len] bool mask (None: all visible): for the dense paths only."""
    return self.block(0, self.q_len, 0, self.kv_len)


def arange_index(n: int) -> jax.Array:
  """Returns arange(n) as int32: the slots of a whole sequence."""
  return jnp.arange(n, dtype=jnp.int32)


def self_mask(length: int, *, causal: bool, positions: Optional[jax.Array] = None,
              attention_mask: Optional[jax.Array] = None, segment_ids: Optional[jax.Array] = None,
              window: Optional[int] = None) -> Mask:
  """Returns the Mask of a self-attention over a whole sequence of `length` tokens."""
  # positions: [batch, len] (restarting per packed segment); attention_mask: [batch, len] 1/0
  idx = arange_index(length)
  if window and positions is None:
    positions = idx[None]  # [1, len]: the same positions for every row
  return Mask(q_index=idx, kv_index=idx,
              q_positions=positions if window else None, kv_positions=positions if window else None,
              q_segments=segment_ids, kv_segments=segment_ids,
              kv_valid=None if attention_mask is None else attention_mask.astype(bool),
              causal=causal, window=window or None, aligned=True)


def cached_mask(cache_index: jax.Array, q_len: int, max_len: int, *, q_positions: jax.Array,
                kv_positions: jax.Array, attention_mask: Optional[jax.Array] = None,
                window: Optional[int] = None) -> Mask:
  """Returns the Mask of q_len new queries over a KV cache of max_len slots (slot s visible iff s <= index + t)."""
  # attention_mask, when given, covers every cache slot: [batch, max_len] (1 = real token)
  return Mask(q_index=cache_index.astype(jnp.int32) + arange_index(q_len), kv_index=arange_index(max_len),
              q_positions=q_positions if window else None, kv_positions=kv_positions if window else None,
              kv_valid=None if attention_mask is None else attention_mask.astype(bool),
              causal=True, window=window or None)


def cross_mask(q_len: int, encoder_mask: Optional[jax.Array] = None, q_segments: Optional[jax.Array] = None,
               kv_segments: Optional[jax.Array] = None) -> Optional[Mask]:
  """Returns the Mask of decoder queries over encoder keys (None: every key visible)."""
  # encoder_mask: [batch, src_len] 1/0; q_segments: [batch, q_len], kv_segments: [batch, src_len]
  packed = q_segments is not None and kv_segments is not None
  if encoder_mask is None and not packed:
    return None
  kv_len = (encoder_mask if encoder_mask is not None else kv_segments).shape[1]
  return Mask(q_index=arange_index(q_len), kv_index=arange_index(kv_len),
              q_segments=q_segments if packed else None, kv_segments=kv_segments if packed else None,
              kv_valid=None if encoder_mask is None else encoder_mask.astype(bool))


# ----------------------------------------------------------------------------------------------
# Bias
# ----------------------------------------------------------------------------------------------


@struct.dataclass
class Bias:
  """An additive score bias computed from positions, one block at a time.

  kind "relative" (T5): params is the learned table [num_buckets, heads]; the bias of (i, j) is
  table[bucket(kv_pos[j] - q_pos[i])]. kind "alibi": params is the slope of every head [heads]; the
  bias is -slope * |q_pos[i] - kv_pos[j]|. Kernels that cannot add a bias take the blockwise path.
  """

  params: jax.Array                 # relative: [num_buckets, heads]; alibi: [heads] (float)
  q_positions: jax.Array            # [batch, q_len] int32
  kv_positions: jax.Array           # [batch, kv_len] int32
  kind: str = struct.field(pytree_node=False, default="relative")
  bidirectional: bool = struct.field(pytree_node=False, default=True)
  max_distance: int = struct.field(pytree_node=False, default=128)

  @property
  def num_heads(self) -> int:
    """Returns the number of heads the bias covers."""
    return self.params.shape[-1]

  def block(self, q_start, q_size: int, k_start, k_size: int) -> jax.Array:
    """Returns the [batch, heads, q_size, k_size] float32 bias of queries q_start: and keys k_start:."""
    qp = _cut(self.q_positions, q_start, q_size, 1)
    kp = _cut(self.kv_positions, k_start, k_size, 1)
    rel = kp[:, None, :] - qp[:, :, None]  # [batch, q_size, k_size]
    if self.kind == "alibi":
      dist = jnp.abs(rel).astype(jnp.float32)
      return -self.params.astype(jnp.float32)[None, :, None, None] * dist[:, None]
    buckets = relative_bucket(rel, self.bidirectional, self.params.shape[0], self.max_distance)
    bias = jnp.take(self.params.astype(jnp.float32), buckets, axis=0)  # [batch, q_size, k_size, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))

  def dense(self) -> jax.Array:
    """Returns the whole [batch, heads, q_len, kv_len] bias: for the dense paths only."""
    return self.block(0, self.q_positions.shape[1], 0, self.kv_positions.shape[1])


def relative_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                    max_distance: int) -> jax.Array:
  """Returns T5's bucket index for each (key - query) offset: exact for small, log-spaced for large."""
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Log-spaced buckets from max_exact to max_distance; float32 as in the reference implementation.
  val_if_large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
      * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


# Attention dropout keys ------------------------------------------------------------------------
# A kernel's dropout_rng is one key for the whole batch, or one key per batch row ([batch] typed
# keys or uint32 [batch, 2] raw ones, as the layers pass them): then row b's keep-mask is drawn
# from its own key alone, so it does not depend on how the batch is split over devices.


def per_row_keys(rng: jax.Array) -> bool:
  """Returns whether `rng` holds one key per batch row (rather than a single key)."""
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  return rng.ndim == (1 if typed else 2)


def fold_in_keys(rng: jax.Array, data) -> jax.Array:
  """Returns fold_in(rng, data): of the single key, or of each row's key."""
  if per_row_keys(rng):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, data)
  return jax.random.fold_in(rng, data)


def dropout_keep(rng: jax.Array, keep_prob: float, shape) -> jax.Array:
  """Returns a bool keep-mask of `shape` [batch, ...]; with per-row keys, row b is drawn from rng[b] alone."""
  if per_row_keys(rng):
    if rng.shape[0] != shape[0]:
      raise ValueError(f"attention dropout: {rng.shape[0]} row keys for a batch of {shape[0]}")
    return jax.vmap(lambda k: jax.random.bernoulli(k, keep_prob, tuple(shape[1:])))(rng)
  return jax.random.bernoulli(rng, keep_prob, tuple(shape))
