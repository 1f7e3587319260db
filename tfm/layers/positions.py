"""Position schemes: sinusoidal tables, rotary (RoPE), T5 relative-position bias and ALiBi.

Learned absolute positions are an `Embed` table (tfm.layers.embeddings). Biases here are
[batch, heads, q_len, kv_len] arrays that the attention core adds to the scores.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfm.config import ModelConfig
from tfm.layers.dtypes import to_dtype


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
  """Returns [batch, len] positions that restart at 0 at the start of every packed segment."""
  length = segment_ids.shape[1]
  idx = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  # Index of the current segment's first token: running max of start indices.
  first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - first


def sinusoidal(positions: jax.Array, dim: int, max_timescale: float = 10000.0) -> jax.Array:
  """Returns [batch, len, dim] sinusoids: sin in the first half, cos in the second (tensor2tensor layout)."""
  half = dim // 2
  inv = np.exp(-math.log(max_timescale) * np.arange(half) / max(half - 1, 1)).astype(np.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [batch, len, half]
  out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  if dim % 2:
    out = jnp.pad(out, ((0, 0), (0, 0), (0, 1)))
  return out


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Returns x [batch, len, heads, head_dim] rotated by RoPE (half-split layout, as in HF Llama)."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float32) / d))  # [head_dim/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, len, head_dim/2]
  cos = jnp.cos(angles)[:, :, None, :]  # [batch, len, 1, head_dim/2]
  sin = jnp.sin(angles)[:, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


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


class RelativePositionBias(nn.Module):
  """T5's learned bias per (bucket of key - query offset, head), shared by all layers of a stack."""

  config: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
    """Returns the bias [batch, heads, q_len, kv_len] in float32."""
    c = self.config
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(c.relative_bias_std), ("rel_buckets", "heads")),
                       (c.relative_buckets, c.num_heads), to_dtype(c.param_dtype))
    rel = kv_positions[:, None, :] - q_positions[:, :, None]  # [batch, q_len, kv_len]
    buckets = relative_bucket(rel, self.bidirectional, c.relative_buckets, c.relative_max_distance)
    bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [batch, q_len, kv_len, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Returns the ALiBi slope of every head (geometric, as in Press et al. 2022)."""
  def power_of_2(n):
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if math.log2(num_heads).is_integer():
    return np.array(power_of_2(num_heads), np.float32)
  closest = 2 ** math.floor(math.log2(num_heads))
  return np.array(power_of_2(closest) + power_of_2(2 * closest)[0::2][: num_heads - closest], np.float32)


def alibi_bias(q_positions: jax.Array, kv_positions: jax.Array, num_heads: int) -> jax.Array:
  """Returns the ALiBi bias -slope_h * |q_pos - kv_pos| as [batch, heads, q_len, kv_len]."""
  dist = jnp.abs(q_positions[:, :, None] - kv_positions[:, None, :]).astype(jnp.float32)
  return -alibi_slopes(num_heads)[None, :, None, None] * dist[:, None]
