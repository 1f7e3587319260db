"""The three model families, composed from one `Tower` (embeddings + masks + position bias + Stack).

- `EncoderModel` (BERT, RoBERTa): a bidirectional tower, then the MLM head, or a classifier on [CLS].
- `DecoderModel` (GPT-2, Llama, Mistral, Qwen2): a causal tower, then the LM head, or a classifier on
  the last real token.
- `EncoderDecoderModel` (T5, BART, Vaswani et al.): a bidirectional tower and a causal tower with
  cross-attention sharing one token embedding, then the LM head or a classifier.

Calling convention (as in Hugging Face): `model.apply({"params": p}, input_ids, attention_mask=None,
token_type_ids=None, decoder_input_ids=None, decoder_attention_mask=None, deterministic=True)`
returns logits. Extra tfm arguments: `position_ids`, `segment_ids` (packed sequences: tokens attend
only within their segment, positions restart per segment) and `decode=True` (incremental decoding
with the KV cache in the "cache" collection; see `init_cache`).
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm import attention as core
from tfm.config import ModelConfig
from tfm.layers.block import Stack
from tfm.layers.embeddings import (ClassifierHead, Embed, InputEmbedding, LMHead, Pooler, RelativePositionBias,
                                   alibi_bias, pool, positions_from_segments)


class Tower(nn.Module):
  """Embeds tokens, builds the masks and position bias once, and runs a Stack of layers."""

  config: ModelConfig
  num_layers: int
  causal: bool
  token_embed: Embed
  has_cross: bool = False

  @nn.compact
  def __call__(self, input_ids, *, attention_mask=None, token_type_ids=None, position_ids=None,
               segment_ids=None, encoded=None, encoder_mask=None, encoder_segment_ids=None,
               decode=False, deterministic=True):
    """Returns the hidden states [batch, length, embed]."""
    c = self.config
    batch, length = input_ids.shape
    cached = False
    cache_index = None
    if decode:
      # A first call (model.init with decode=True) creates the cache; later calls append to it.
      cached = self.has_variable("cache", "index")
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      cache_index = index.value
    if position_ids is None:
      if segment_ids is not None:
        position_ids = positions_from_segments(segment_ids)
      else:
        start = cache_index if cached else 0
        position_ids = jnp.broadcast_to(start + jnp.arange(length), (batch, length))
    position_ids = position_ids.astype(jnp.int32)
    x = InputEmbedding(c, self.token_embed, name="embed")(input_ids, position_ids, token_type_ids, deterministic)

    window = c.sliding_window  # causal: the last `window` keys (Mistral); bidirectional: |q - k| < window (Longformer-style local attention)
    # What the attention masks are made of (tfm.attention.structure): no [len, len] array is built here.
    if decode:
      # Position held by every cache slot: [batch, max_len]; relative bias and windows read it.
      slot_pos = self.variable("cache", "positions", jnp.zeros, (batch, length), jnp.int32)
      if cached:
        slot_pos.value = jax.lax.dynamic_update_slice(slot_pos.value, position_ids, (0, cache_index))
        index.value = cache_index + length
      kv_positions = slot_pos.value
      if cached:
        mask = core.cached_mask(cache_index, length, kv_positions.shape[1], q_positions=position_ids,
                                kv_positions=kv_positions, attention_mask=attention_mask, window=window)
      else:
        mask = core.self_mask(length, causal=True, positions=position_ids, attention_mask=attention_mask, window=window)
    else:
      kv_positions = position_ids
      mask = core.self_mask(length, causal=self.causal, positions=position_ids, attention_mask=attention_mask,
                            segment_ids=segment_ids, window=window)

    bias = None
    if c.position == "relative":
      bias = RelativePositionBias(c, bidirectional=not self.causal, name="relative_bias")(position_ids, kv_positions)
    elif c.position == "alibi":
      bias = alibi_bias(position_ids, kv_positions, c.num_heads)

    cross_mask = None
    if self.has_cross:
      cross_mask = core.cross_mask(length, encoder_mask, segment_ids, encoder_segment_ids)
    return Stack(c, self.num_layers, has_cross=self.has_cross, name="layers")(
        x, encoded=encoded, self_mask=mask, self_bias=bias, cross_mask=cross_mask, positions=position_ids,
        cache_index=cache_index if cached else None, decode=decode, deterministic=deterministic)


def _token_embed(c: ModelConfig) -> Embed:
  return Embed(c.vocab_size, c.d_model, ("vocab", "embed"), c.embed_std, c.dtype, c.param_dtype, name="token_embed")


def _reject(family: str, **unsupported):
  for name, value in unsupported.items():
    if value is not None:
      raise ValueError(f"{family} models do not take {name!r}")


class EncoderModel(nn.Module):
  """Encoder-only (BERT): MLM logits, classification logits, or (hidden, pooled) without a head."""

  config: ModelConfig

  def setup(self):
    c = self.config
    self.token_embed = _token_embed(c)
    self.encoder = Tower(c, c.num_layers, causal=False, token_embed=self.token_embed)
    if c.pooler and (c.num_labels or not c.lm_head):
      self.pooler = Pooler(c)
    if c.num_labels:
      self.classifier = ClassifierHead(c)
    elif c.lm_head:
      self.lm_head = LMHead(c, self.token_embed)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, decoder_input_ids=None,
               decoder_attention_mask=None, *, position_ids=None, segment_ids=None, deterministic=True):
    """Returns logits ([batch, len, vocab] MLM or [batch, num_labels]), or (hidden, pooled)."""
    c = self.config
    _reject("encoder-only", decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
    h = self.encoder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     position_ids=position_ids, segment_ids=segment_ids, deterministic=deterministic)
    if c.num_labels:
      pooled = pool(h, attention_mask, c.pooling)  # [batch, embed]
      if c.pooler:
        pooled = self.pooler(pooled)
      return self.classifier(pooled, deterministic=deterministic)
    if c.lm_head:
      return self.lm_head(h)
    return h, (self.pooler(pool(h, attention_mask, c.pooling)) if c.pooler else None)


class DecoderModel(nn.Module):
  """Decoder-only (GPT-2, Llama): LM logits, or classification logits from the last real token."""

  config: ModelConfig

  def setup(self):
    c = self.config
    self.token_embed = _token_embed(c)
    self.decoder = Tower(c, c.num_layers, causal=True, token_embed=self.token_embed)
    if c.num_labels:
      self.classifier = ClassifierHead(c)
    elif c.lm_head:
      self.lm_head = LMHead(c, self.token_embed)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, decoder_input_ids=None,
               decoder_attention_mask=None, *, position_ids=None, segment_ids=None, deterministic=True,
               decode=False):
    """Returns logits [batch, len, vocab] (or [batch, num_labels]); hidden states without a head.

    With `decode=True` the KV cache in the "cache" collection is read and extended (apply with
    mutable=["cache"]); `attention_mask` then covers every cache slot: [batch, max_len].
    """
    c = self.config
    _reject("decoder-only", decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
    h = self.decoder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     position_ids=position_ids, segment_ids=segment_ids, decode=decode,
                     deterministic=deterministic)
    if c.num_labels:
      return self.classifier(pool(h, attention_mask, c.pooling), deterministic=deterministic)
    return self.lm_head(h) if c.lm_head else h


def shift_right(ids: jax.Array, start_token_id: int) -> jax.Array:
  """Returns ids shifted one step right with `start_token_id` first (teacher-forcing decoder inputs)."""
  return jnp.concatenate([jnp.full_like(ids[:, :1], start_token_id), ids[:, :-1]], axis=1)


class EncoderDecoderModel(nn.Module):
  """Encoder-decoder (T5, BART, Vaswani): seq2seq LM logits or classification logits."""

  config: ModelConfig

  def setup(self):
    c = self.config
    self.token_embed = _token_embed(c)
    self.encoder = Tower(c, c.num_layers, causal=False, token_embed=self.token_embed)
    if not (c.num_labels and c.classifier_source == "encoder"):
      self.decoder = Tower(c, c.decoder_layers, causal=True, has_cross=True, token_embed=self.token_embed)
    if c.num_labels:
      self.classifier = ClassifierHead(c)
    elif c.lm_head:
      self.lm_head = LMHead(c, self.token_embed)

  def encode(self, input_ids, attention_mask=None, *, position_ids=None, segment_ids=None, deterministic=True):
    """Returns the encoder output [batch, src_len, embed]."""
    return self.encoder(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        segment_ids=segment_ids, deterministic=deterministic)

  def decode(self, encoded, decoder_input_ids, encoder_mask=None, decoder_attention_mask=None, *,
             decoder_position_ids=None, decoder_segment_ids=None, encoder_segment_ids=None,
             deterministic=True, decode=False):
    """Returns decoder logits [batch, tgt_len, vocab] (hidden states without an LM head).

    With `decode=True` a call that is given `encoded` also stores the cross-attention keys and
    values in the cache; later steps may pass `encoded=None` to read them from there instead of
    projecting the encoder output again at every token. The first call after `init_cache` must
    pass `encoded` (the fresh cache has no cross-attention entries; without them it is an error).
    """
    c = self.config
    h = self.decoder(decoder_input_ids, attention_mask=decoder_attention_mask, position_ids=decoder_position_ids,
                     segment_ids=decoder_segment_ids, encoded=encoded, encoder_mask=encoder_mask,
                     encoder_segment_ids=encoder_segment_ids, decode=decode, deterministic=deterministic)
    if c.num_labels:
      return h
    return self.lm_head(h) if c.lm_head else h

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, decoder_input_ids=None,
               decoder_attention_mask=None, *, position_ids=None, segment_ids=None, decoder_position_ids=None,
               decoder_segment_ids=None, deterministic=True, decode=False):
    """Returns seq2seq logits [batch, tgt_len, vocab], or [batch, num_labels] when classifying."""
    c = self.config
    _reject("encoder-decoder", token_type_ids=token_type_ids)
    encoded = self.encode(input_ids, attention_mask, position_ids=position_ids, segment_ids=segment_ids,
                          deterministic=deterministic)
    if c.num_labels and c.classifier_source == "encoder":
      return self.classifier(pool(encoded, attention_mask, c.pooling), deterministic=deterministic)
    if decoder_input_ids is None:
      if not c.num_labels:
        raise ValueError("encoder-decoder models need decoder_input_ids (e.g. shift_right(labels, "
                         "config.decoder_start_token_id))")
      decoder_input_ids, decoder_attention_mask = shift_right(input_ids, c.decoder_start_token_id), attention_mask
    out = self.decode(encoded, decoder_input_ids, attention_mask, decoder_attention_mask,
                      decoder_position_ids=decoder_position_ids, decoder_segment_ids=decoder_segment_ids,
                      encoder_segment_ids=segment_ids, deterministic=deterministic, decode=decode)
    if c.num_labels:
      return self.classifier(pool(out, decoder_attention_mask, c.pooling), deterministic=deterministic)
    return out


_FAMILIES = {"encoder": EncoderModel, "decoder": DecoderModel, "encoder_decoder": EncoderDecoderModel}


def build(config: ModelConfig) -> nn.Module:
  """Returns the flax.linen Module of `config`'s family."""
  if not isinstance(config, ModelConfig):
    raise TypeError(f"build() takes a tfm.ModelConfig (see tfm.get_config); got {type(config).__name__}")
  return _FAMILIES[config.family](config)


def count_params(params) -> int:
  """Returns the total number of parameter elements in a (possibly boxed) params tree."""
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
  return int(sum(x.size for x in leaves))


CROSS_CACHE_KEYS = ("cross_key", "cross_value")  # cache entries of the encoder output's projected keys / values


def cache_shapes(model: nn.Module, batch_size: int, max_len: int, encoder_len: int = 1):
  """Returns the shapes (ShapeDtypeStruct tree) of the full decoding cache, cross-attention entries included."""
  c = model.config
  rng = jax.random.PRNGKey(0)
  ids = jnp.zeros((batch_size, max_len), jnp.int32)
  if c.family == "encoder":
    raise ValueError("encoder-only models have no decoder and no KV cache")
  if c.family == "decoder":
    return jax.eval_shape(lambda: model.init(rng, ids, decode=True))["cache"]
  enc = jnp.zeros((batch_size, encoder_len, c.d_model), jnp.float32)
  return jax.eval_shape(lambda: model.init(rng, enc, ids, decode=True, method=model.decode))["cache"]


def _drop_cross_entries(tree):
  """Returns the nested dict `tree` without its CROSS_CACHE_KEYS entries."""
  if not isinstance(tree, Mapping):
    return tree
  return {k: _drop_cross_entries(v) for k, v in tree.items() if k not in CROSS_CACHE_KEYS}


def init_cache(model: nn.Module, batch_size: int, max_len: int):
  """Returns a zero KV cache ("cache" collection) for decoding up to `max_len` tokens.

  An encoder-decoder's cache holds no cross-attention keys / values yet: the first `decode` call
  that is given the encoder output creates them, and a call with `encoded=None` before that is an
  error (rather than attention over zeros).
  """
  shapes = _drop_cross_entries(cache_shapes(model, batch_size, max_len))
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
