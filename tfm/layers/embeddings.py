"""What enters the stack of layers and what leaves it.

In: the token table (`Embed`), `InputEmbedding` (tokens + learned or sinusoidal positions + token
types), and the position schemes a model builds once at its top: packed-segment positions, T5's
relative-position bias and ALiBi (each a `tfm.attention.Bias`: the table or slopes plus positions, which
the attention kernel turns into scores bias one block at a time; RoPE rotates q and k inside the attention layer, tfm.layers.block).
Out: the LM / MLM head (tied to the token table, or its own projection), BERT's pooler, sequence
pooling and the classification head.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfm import attention as core
from tfm import ops
from tfm.config import ModelConfig
from tfm.layers.primitives import Dense, Dropout, Norm, activation, to_dtype

# ----------------------------------------------------------------------------------------------
# In: tokens and positions
# ----------------------------------------------------------------------------------------------


class Embed(nn.Module):
  """A lookup table [num_embeddings, features] with logical axes; `attend` is its transpose."""

  num_embeddings: int
  features: int
  axes: tuple = ("vocab", "embed")
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"

  def setup(self):
    self.embedding = self.param("embedding",
                                nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes),
                                (self.num_embeddings, self.features), to_dtype(self.param_dtype))

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Returns the rows of `ids`: [..., features]."""
    return jnp.take(self.embedding, ids, axis=0).astype(to_dtype(self.dtype))

  def attend(self, x: jax.Array) -> jax.Array:
    """Returns x · tableᵀ: [..., num_embeddings] (the tied LM head)."""
    dtype = to_dtype(self.dtype)
    lead = x.shape[:-1]
    logits = ops.matmul_t(x.astype(dtype).reshape(-1, x.shape[-1]), self.embedding.astype(dtype))  # [tokens, vocab]
    return logits.reshape(lead + (self.num_embeddings,))


class InputEmbedding(nn.Module):
  """Token embedding (shared module) + absolute positions + token types, then norm and dropout."""

  config: ModelConfig
  token_embed: Embed

  @nn.compact
  def __call__(self, input_ids, positions, token_type_ids=None, deterministic=True):
    """Returns the embedded inputs [batch, length, embed]."""
    c = self.config
    x = self.token_embed(input_ids)  # [batch, length, embed]
    if c.embed_scale:
      x = x * math.sqrt(c.d_model)
    if c.position == "learned":
      table = Embed(c.max_len + c.position_offset, c.d_model, ("position", "embed"), c.init_std, c.dtype,
                    c.param_dtype, name="position_embed")
      x = x + table(positions + c.position_offset)
    elif c.position == "sinusoidal":
      x = x + sinusoidal(positions, c.d_model).astype(x.dtype)
    if c.type_vocab_size:
      types = Embed(c.type_vocab_size, c.d_model, ("type_vocab", "embed"), c.init_std, c.dtype, c.param_dtype,
                    name="token_type_embed")
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + types(token_type_ids)
    if c.embed_norm:
      x = Norm(c, name="embed_norm")(x)
    x = Dropout(c.dropout_rate)(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def sinusoidal(positions: jax.Array, dim: int, max_timescale: float = 10000.0) -> jax.Array:
  """Returns [batch, len, dim] sinusoids: sin in the first half, cos in the second (tensor2tensor layout)."""
  half = dim // 2
  inv = np.exp(-math.log(max_timescale) * np.arange(half) / max(half - 1, 1)).astype(np.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv  # [batch, len, half]
  out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  if dim % 2:
    out = jnp.pad(out, ((0, 0), (0, 0), (0, 1)))
  return out


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
  """Returns [batch, len] positions that restart at 0 at the start of every packed segment."""
  length = segment_ids.shape[1]
  idx = jnp.broadcast_to(jnp.arange(length), segment_ids.shape)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  # Index of the current segment's first token: running max of start indices.
  first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - first


class RelativePositionBias(nn.Module):
  """T5's learned bias per (bucket of key - query offset, head), shared by all layers of a stack."""

  config: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: jax.Array, kv_positions: jax.Array) -> core.Bias:
    """Returns the bias as a `tfm.attention.Bias`: the table and the positions, computed per block by the kernel."""
    c = self.config
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(c.relative_bias_std), ("rel_buckets", "heads")),
                       (c.relative_buckets, c.num_heads), to_dtype(c.param_dtype))  # [num_buckets, heads]
    return core.Bias(table, q_positions, kv_positions, kind="relative", bidirectional=self.bidirectional,
                     max_distance=c.relative_max_distance)


def alibi_bias(q_positions: jax.Array, kv_positions: jax.Array, num_heads: int) -> core.Bias:
  """Returns the ALiBi bias -slope_h * |q_pos - kv_pos| as a `tfm.attention.Bias` (computed per block)."""
  return core.Bias(jnp.asarray(alibi_slopes(num_heads)), q_positions, kv_positions, kind="alibi")


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Returns the ALiBi slope of every head (geometric, as in Press et al. 2022)."""
  def power_of_2(n):
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if math.log2(num_heads).is_integer():
    return np.array(power_of_2(num_heads), np.float32)
  closest = 2 ** math.floor(math.log2(num_heads))
  return np.array(power_of_2(closest) + power_of_2(2 * closest)[0::2][: num_heads - closest], np.float32)


# ----------------------------------------------------------------------------------------------
# Out: heads
# ----------------------------------------------------------------------------------------------


class LMHead(nn.Module):
  """Hidden states -> vocabulary logits; tied to the token embedding or its own projection."""

  config: ModelConfig
  token_embed: Embed

  @nn.compact
  def __call__(self, x):
    """Returns logits [batch, length, vocab]."""
    c = self.config
    kw = dict(init_std=c.kernel_std, dtype=c.dtype, param_dtype=c.param_dtype)
    if c.lm_transform:
      x = activation(c.mlp)(Dense((c.d_model,), ("embed", "embed"), use_bias=True, name="transform", **kw)(x))
      x = Norm(c, name="transform_norm")(x)
    if c.tie_embeddings:
      if c.scale_tied_logits:
        x = x * (c.d_model ** -0.5)
      logits = self.token_embed.attend(x)
    else:
      logits = Dense((c.vocab_size,), ("embed", "vocab"), use_bias=False, name="output",
                     **dict(kw, init_std=c.embed_std))(x)
    if c.lm_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)), (c.vocab_size,),
                        to_dtype(c.param_dtype))
      logits = logits + bias.astype(logits.dtype)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Pooler(nn.Module):
  """BERT's pooler: dense + tanh on the pooled token (the first, [CLS], unless classifier_pooling says)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, pooled):
    """Returns the pooler output [batch, embed] of pooled [batch, embed]."""
    c = self.config
    return jnp.tanh(Dense((c.d_model,), ("embed", "embed"), init_std=c.kernel_std, dtype=c.dtype,
                          param_dtype=c.param_dtype, name="dense")(pooled))


class ClassifierHead(nn.Module):
  """Pooled features -> [batch, num_labels] logits (optionally through dense + tanh first)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, pooled, deterministic=True):
    """Returns the classification logits [batch, num_labels]."""
    c = self.config
    kw = dict(init_std=c.kernel_std, dtype=c.dtype, param_dtype=c.param_dtype)
    x = Dropout(c.dropout_rate)(pooled, deterministic=deterministic)
    if c.classifier_hidden:
      x = jnp.tanh(Dense((c.d_model,), ("embed", "embed"), name="dense", **kw)(x))
      x = Dropout(c.dropout_rate)(x, deterministic=deterministic)
    return Dense((c.num_labels,), ("embed", "labels"), use_bias=c.classifier_bias, name="out", **kw)(x)


def pool(hidden: jax.Array, mask, mode: str) -> jax.Array:
  """Returns [batch, embed]: the first token, the last real token, or the masked mean or max of hidden.

  "max" is max-over-time pooling (each feature's largest value over the real tokens), the pooling
  of the convolutional sentence classifiers: it keeps whether a feature fired anywhere.
  """
  # hidden: [batch, length, embed]; mask: [batch, length] 1/0 or None (all real)
  if mode == "first":
    return hidden[:, 0]
  if mask is None:
    mask = jnp.ones(hidden.shape[:2], jnp.int32)
  mask = mask.astype(jnp.int32)
  if mode == "last":
    length = hidden.shape[1]
    # Last index whose mask is 1 (works for right and left padding alike).
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  if mode == "max":
    real = mask[..., None] > 0  # [batch, length, 1]
    return jnp.max(jnp.where(real, hidden, jnp.finfo(hidden.dtype).min), axis=1)
  m = mask[..., None].astype(hidden.dtype)
  return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)
