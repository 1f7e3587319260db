"""The benchmark's own training step: random tokens, the family's loss, optax AdamW, jit with donated state.

Kept minimal and independent of tfm.train so the speed benchmark measures the model, not a loop:
causal / masked LM and seq2seq use token cross-entropy against random targets, classifiers use
label cross-entropy. The optimizer is AdamW (lr 3e-4, weight decay 0.1), as in the PyTorch baselines.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tfm
from tfm.config import ModelConfig


@dataclasses.dataclass
class Batch:
  """Random inputs of one step, as numpy arrays (the same arrays feed tfm and PyTorch)."""

  input_ids: np.ndarray                  # [batch, seq]
  targets: np.ndarray                    # [batch, seq] | [batch, tgt] | [batch] labels
  decoder_input_ids: Optional[np.ndarray] = None  # [batch, tgt] (encoder-decoder)

  def as_jax(self) -> dict:
    """Returns the batch as a dict of jnp arrays (None entries dropped)."""
    return {k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items() if v is not None}


def random_batch(config: ModelConfig, batch: int, seq: int, tgt: Optional[int] = None, seed: int = 0) -> Batch:
  """Returns a Batch of random tokens (ids >= 1, so none is the pad id 0) for `config`'s family and head."""
  r = np.random.RandomState(seed)
  ids = r.randint(1, config.vocab_size, (batch, seq)).astype(np.int32)
  if config.num_labels:
    return Batch(ids, r.randint(0, config.num_labels, (batch,)).astype(np.int32))
  if config.family == "encoder_decoder":
    if not tgt:
      raise ValueError("encoder-decoder benchmarks need a decoder length (tgt_seq)")
    labels = r.randint(1, config.vocab_size, (batch, tgt)).astype(np.int32)
    dec_in = np.asarray(tfm.shift_right(jnp.asarray(labels), config.decoder_start_token_id))
    return Batch(ids, labels, dec_in)
  return Batch(ids, r.randint(1, config.vocab_size, (batch, seq)).astype(np.int32))


def loss_fn(model: nn.Module) -> Callable:
  """Returns loss(params, batch_dict, rng) -> scalar float32 cross-entropy of `model`'s family and head."""
  c = model.config
  train = c.dropout_rate > 0 or c.attention_dropout_rate > 0

  def loss(params, batch, rng):
    kw = {}
    if "decoder_input_ids" in batch:
      kw["decoder_input_ids"] = batch["decoder_input_ids"]
    logits = model.apply({"params": params}, batch["input_ids"], deterministic=not train,
                         rngs={"dropout": rng} if train else None, **kw)
    logits = logits.astype(jnp.float32)  # [batch, (len,) vocab | labels]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
  return loss


@dataclasses.dataclass
class Steps:
  """A model's jitted training and forward functions, with their example arguments."""

  model: nn.Module
  state: Any               # (params, opt_state)
  batch: dict
  train_step: Callable     # (state, batch, rng) -> (state, loss); the state argument is donated
  forward: Callable        # (params, batch, rng) -> loss
  num_params: int


def make_steps(config: ModelConfig, batch: Batch, seed: int = 0, learning_rate: float = 3e-4) -> Steps:
  """Returns Steps for `config`: params initialised from `seed`, AdamW state, and the jitted steps."""
  model = tfm.build(config)
  data = batch.as_jax()
  init_kw = {"decoder_input_ids": data["decoder_input_ids"]} if "decoder_input_ids" in data else {}
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), data["input_ids"], **init_kw)["params"])
  tx = optax.adamw(learning_rate, weight_decay=0.1)
  loss = loss_fn(model)

  def train_step(state, batch, rng):
    params, opt_state = state
    value, grads = jax.value_and_grad(loss)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  return Steps(model=model, state=(params, tx.init(params)), batch=data,
               train_step=jax.jit(train_step, donate_argnums=0), forward=jax.jit(loss),
               num_params=tfm.count_params(params))
