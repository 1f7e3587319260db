"""The attention layer: project q, k, v; apply RoPE; update the KV cache; call the core; project out.

All the maths of attention itself lives in `tfm.attention.dot_product_attention`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm import attention as core
from tfm.config import ModelConfig
from tfm.layers.dense import Dense
from tfm.layers.dtypes import to_dtype
from tfm.layers.positions import apply_rope


class Attention(nn.Module):
  """Self-attention (x_kv is x_q), cross-attention, and cached self-attention when `decode`."""

  config: ModelConfig
  is_cross: bool = False
  causal: bool = False  # self-attention whose mask hides later keys: the core may skip those blocks
  decode: bool = False
  deterministic: bool = True

  def _kv(self, x_kv, kw, qkv_bias):
    """Returns the key and value projections of x_kv, each [batch, kv_len, kv_heads, head_dim]."""
    c = self.config
    kvh, d = c.kv_heads, c.dim_per_head
    k = Dense((kvh, d), ("embed", "kv_heads", "kv"), use_bias=qkv_bias, name="key", **kw)(x_kv)
    v = Dense((kvh, d), ("embed", "kv_heads", "kv"), use_bias=qkv_bias, name="value", **kw)(x_kv)
    k = nn.with_logical_constraint(k, ("batch", "kv_length", "kv_heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "kv_length", "kv_heads", "kv"))
    return k, v

  def _cross_kv(self, encoded, kw, qkv_bias):
    """Returns the cross-attention keys and values when decoding, projected once per generation.

    Called with the encoder output, it projects it and stores the result in the "cache"
    collection (heads-major, like the self-attention cache); called with `encoded=None` (every
    later decoding step), it reads them back instead of projecting the encoder output again.
    """
    c = self.config
    have = self.has_variable("cache", "cross_key")
    if encoded is None:
      if not have:
        raise ValueError("cross-attention decoding without the encoder output needs a cache that holds its "
                         "keys and values: call decode with `encoded` first (tfm.init_cache, then a first step)")
      ck, cv = self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")
      return core.cache_view(ck), core.cache_view(cv)  # [batch, src_len, kv_heads, head_dim]
    k, v = self._kv(encoded, kw, qkv_bias)
    ck = self.variable("cache", "cross_key", jnp.zeros, core.cache_shape(k.shape[0], k.shape[1], *k.shape[2:]), k.dtype)
    cv = self.variable("cache", "cross_value", jnp.zeros, core.cache_shape(v.shape[0], v.shape[1], *v.shape[2:]), v.dtype)
    ck.value, cv.value = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    return k, v

  @nn.compact
  def __call__(self, x_q, x_kv, *, mask=None, bias=None, positions=None, cache_index=None):
    """Returns the attention output [batch, q_len, embed]."""
    c = self.config
    h, kvh, d = c.num_heads, c.kv_heads, c.dim_per_head
    qkv_bias = c.use_bias if c.qkv_bias is None else c.qkv_bias
    kw = dict(init_std=c.kernel_std, dtype=c.dtype, param_dtype=c.param_dtype)
    q_scale = 1.0 if c.scale_attention else d ** -0.5  # fan-in init folds the missing 1/sqrt(d) into the query
    q = Dense((h, d), ("embed", "heads", "kv"), use_bias=qkv_bias, fan_in_scale=q_scale, name="query", **kw)(x_q)   # [batch, q_len, heads, head_dim]
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    if self.decode and self.is_cross:
      k, v = self._cross_kv(x_kv, kw, qkv_bias)
    else:
      k, v = self._kv(x_kv, kw, qkv_bias)
    if c.position == "rope" and not self.is_cross:
      q = apply_rope(q, positions, c.rope_theta)
      k = apply_rope(k, positions, c.rope_theta)

    if self.decode and not self.is_cross:
      # The cache is created (zeros, full length) by an init call; later calls write into it.
      initialized = self.has_variable("cache", "cached_key")
      shape = core.cache_shape(k.shape[0], k.shape[1], kvh, d)  # [batch, kv_heads, max_len, head_dim]
      cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
      cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
      if initialized:
        cached_k.value, cached_v.value = core.update_kv_cache(cached_k.value, cached_v.value, k, v, cache_index)
        k, v = core.cache_view(cached_k.value), core.cache_view(cached_v.value)  # [batch, max_len, kv_heads, head_dim]

    dropout_rng = None
    if not self.deterministic and c.attention_dropout_rate > 0:
      dropout_rng = self.make_rng("dropout")
    out = core.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=d ** -0.5 if c.scale_attention else 1.0,
        dropout_rate=c.attention_dropout_rate, dropout_rng=dropout_rng, deterministic=self.deterministic,
        causal=self.causal and not self.decode and not self.is_cross,
        implementation=c.attention_impl)  # [batch, q_len, heads, head_dim]
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return Dense((x_q.shape[-1],), ("heads", "kv", "embed"), contract=2, use_bias=c.use_bias, name="out", **kw)(out)
