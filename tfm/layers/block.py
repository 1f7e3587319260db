"""The Transformer layer of every family, top-down: the stack, the block, the attention layer, the MLP.

- `Stack`: `num_layers` Blocks (unrolled or `nn.scan`-ned, optionally rematerialised), then the final norm.
- `Block`: self-attention, optional cross-attention and the MLP, each a residual sublayer, pre- or post-norm.
- `Attention`: projects q, k, v; applies RoPE; reads and writes the KV cache; calls the one core
  (`tfm.attention.dot_product_attention`, where all the maths of attention lives); projects out.
- `Mlp`: plain (ReLU, GELU, SiLU) or gated (GeGLU, SwiGLU, ReGLU).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfm import attention as core
from tfm.config import ModelConfig
from tfm.layers.primitives import Dense, Dropout, Norm, activation, row_keys

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Stack(nn.Module):
  """`num_layers` Blocks, then the final norm when the config has one."""

  config: ModelConfig
  num_layers: int
  has_cross: bool = False

  @nn.compact
  def __call__(self, x, *, encoded=None, self_mask=None, self_bias=None, cross_mask=None,
               positions=None, cache_index=None, decode=False, deterministic=True):
    """Returns the hidden states [batch, length, embed] after every layer (and the final norm)."""
    c = self.config
    block = Block
    if c.remat != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    kw = dict(has_cross=self.has_cross, decode=decode, deterministic=deterministic)
    args = (encoded, self_mask, self_bias, cross_mask, positions, cache_index)
    if c.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast,) * len(args), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(c, name="layers", **kw)(x, *args)
    else:
      for i in range(self.num_layers):
        x, _ = block(c, name=f"layer_{i}", **kw)(x, *args)
    if c.has_final_norm:
      x = Norm(c, name="final_norm")(x)
    return x


class Block(nn.Module):
  """Self-attention, optional cross-attention, MLP; each a residual sublayer, pre- or post-norm."""

  config: ModelConfig
  has_cross: bool = False
  decode: bool = False
  deterministic: bool = True

  def _sublayer(self, x, fn, norm_name):
    """Returns x + fn(x) with the norm before fn (pre-norm) or after the sum (post-norm), and dropout on fn's output."""
    c = self.config
    drop = Dropout(c.dropout_rate)
    if c.norm_position == "pre":
      return x + drop(fn(Norm(c, name=norm_name)(x)), deterministic=self.deterministic)
    return Norm(c, name=norm_name)(x + drop(fn(x), deterministic=self.deterministic))

  @nn.compact
  def __call__(self, x, encoded, self_mask, self_bias, cross_mask, positions, cache_index):
    """Returns (x [batch, length, embed], None): the layer output, in the form nn.scan expects."""
    c = self.config
    attn = Attention(c, decode=self.decode, deterministic=self.deterministic, name="self_attention")
    x = self._sublayer(x, lambda h: attn(h, h, mask=self_mask, bias=self_bias, positions=positions,
                                         cache_index=cache_index), "attention_norm")
    if self.has_cross:
      cross = Attention(c, is_cross=True, decode=self.decode, deterministic=self.deterministic,
                        name="cross_attention")
      x = self._sublayer(x, lambda h: cross(h, encoded, mask=cross_mask), "cross_attention_norm")
    x = self._sublayer(x, Mlp(c, name="mlp"), "mlp_norm")
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class Attention(nn.Module):
  """Self-attention (x_kv is x_q), cross-attention, and cached self-attention when `decode`."""

  config: ModelConfig
  is_cross: bool = False
  decode: bool = False
  deterministic: bool = True

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
      dropout_rng = row_keys(self.make_rng("dropout"), x_q.shape[0])  # [batch] keys: masks follow global rows
    out = core.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=d ** -0.5 if c.scale_attention else 1.0,
        dropout_rate=c.attention_dropout_rate, dropout_rng=dropout_rng, deterministic=self.deterministic,
        implementation=c.attention_impl)  # [batch, q_len, heads, head_dim]
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return Dense((x_q.shape[-1],), ("heads", "kv", "embed"), contract=2, use_bias=c.use_bias, name="out", **kw)(out)

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


class Mlp(nn.Module):
  """wo(act(wi x)) or, gated, wo(act(wi_0 x) * wi_1 x)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    """Returns the MLP output [batch, length, embed]."""
    c = self.config
    kw = dict(use_bias=c.use_bias, init_std=c.kernel_std, dtype=c.dtype, param_dtype=c.param_dtype)
    act = activation(c.mlp)
    if c.gated_mlp:
      h = act(Dense((c.d_ff,), ("embed", "mlp"), name="wi_0", **kw)(x)) * Dense((c.d_ff,), ("embed", "mlp"), name="wi_1", **kw)(x)
    else:
      h = act(Dense((c.d_ff,), ("embed", "mlp"), name="wi", **kw)(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))  # [batch, length, mlp]
    return Dense((x.shape[-1],), ("mlp", "embed"), name="wo", **kw)(h)
