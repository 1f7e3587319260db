"""Token, position and token-type embeddings, and the tied output projection."""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm.config import ModelConfig
from tfm.layers.dense import matmul_t
from tfm.layers.dtypes import to_dtype
from tfm.layers.norms import Norm
from tfm.layers.positions import sinusoidal


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
    logits = matmul_t(x.astype(dtype).reshape(-1, x.shape[-1]), self.embedding.astype(dtype))  # [tokens, vocab]
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
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
