"""Output heads: the LM / MLM head, BERT's pooler, sequence pooling and the classification head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm.config import ModelConfig
from tfm.layers.dense import Dense
from tfm.layers.dtypes import to_dtype
from tfm.layers.embeddings import Embed
from tfm.layers.mlp import activation
from tfm.layers.norms import Norm


def pool(hidden: jax.Array, mask, mode: str) -> jax.Array:
  """Returns [batch, embed]: the first token, the last real token, or the masked mean of hidden."""
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
  m = mask[..., None].astype(hidden.dtype)
  return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)


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
  """BERT's pooler: dense + tanh on the first ([CLS]) token."""

  config: ModelConfig

  @nn.compact
  def __call__(self, hidden):
    """Returns the pooled output [batch, embed]."""
    c = self.config
    return jnp.tanh(Dense((c.d_model,), ("embed", "embed"), init_std=c.kernel_std, dtype=c.dtype,
                          param_dtype=c.param_dtype, name="dense")(hidden[:, 0]))


class ClassifierHead(nn.Module):
  """Pooled features -> [batch, num_labels] logits (optionally through dense + tanh first)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, pooled, deterministic=True):
    """Returns the classification logits [batch, num_labels]."""
    c = self.config
    kw = dict(init_std=c.kernel_std, dtype=c.dtype, param_dtype=c.param_dtype)
    x = nn.Dropout(c.dropout_rate)(pooled, deterministic=deterministic)
    if c.classifier_hidden:
      x = jnp.tanh(Dense((c.d_model,), ("embed", "embed"), name="dense", **kw)(x))
      x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    return Dense((c.num_labels,), ("embed", "labels"), use_bias=c.classifier_bias, name="out", **kw)(x)
