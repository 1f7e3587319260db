"""The benchmark's training step: tfm.train.step.train_step itself, fed random batches in each task's format.

The speed benchmark times exactly the step `train.py` runs (the task's loss, AdamW with warm-up,
global-norm clipping and no decay on norms and biases, jit with the state donated), not a copy of
it. Random tokens fill the batch: decoders train the causal-LM task, encoders the masked-LM task
(every position is a target, as in the PyTorch baselines), encoder-decoders the seq2seq task,
classifiers the classification task. The same numpy arrays (`Batch`) feed the PyTorch side.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import tfm
from tfm.config import ModelConfig
from tfm.train.defaults import base_config
from tfm.train.objectives import get_task
from tfm.train.optim import make_optimizer
from tfm.train.state import create_train_state
from tfm.train.step import eval_step, train_step


@dataclasses.dataclass
class Batch:
  """Random inputs of one step, as numpy arrays (the same arrays feed tfm and PyTorch)."""

  input_ids: np.ndarray                  # [batch, seq]
  targets: np.ndarray                    # [batch, seq] | [batch, tgt] | [batch] labels
  decoder_input_ids: Optional[np.ndarray] = None  # [batch, tgt] (encoder-decoder)


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


def task_name(config: ModelConfig) -> str:
  """Returns the training task the benchmark runs for `config`: classify, lm, mlm or seq2seq."""
  if config.num_labels:
    return "classify"
  return {"decoder": "lm", "encoder": "mlm", "encoder_decoder": "seq2seq"}[config.family]


def task_batch(config: ModelConfig, batch: Batch) -> dict:
  """Returns `batch` as the dict of jnp arrays the task's loss reads (see tfm.train.objectives)."""
  b, s = batch.input_ids.shape
  ones = np.ones((b, s), np.int32)
  if config.num_labels:
    out = {"inputs": batch.input_ids, "attention_mask": ones, "labels": batch.targets,
           "weights": np.ones((b,), np.float32)}
    if config.family == "encoder" and config.type_vocab_size:
      out["token_types"] = np.zeros((b, s), np.int32)
  elif config.family == "encoder_decoder":  # the seq2seq loss shifts the targets into decoder inputs itself
    out = {"inputs": batch.input_ids, "targets": batch.targets, "weights": np.ones(batch.targets.shape, np.float32)}
  else:  # causal or masked LM over one unpacked sequence per row
    out = {"inputs": batch.input_ids, "targets": batch.targets, "segment_ids": ones,
           "weights": np.ones((b, s), np.float32)}
  return {k: jnp.asarray(v) for k, v in out.items()}


@dataclasses.dataclass
class Steps:
  """A model's jitted training and forward functions, with their example arguments."""

  model: nn.Module
  state: Any               # tfm.train.state.TrainState
  batch: dict
  train_step: Callable     # (state, batch, rng) -> (state, loss); the state argument is donated
  forward: Callable        # (params, batch) -> loss (deterministic: no dropout)
  num_params: int


def make_steps(config: ModelConfig, batch: Batch, seed: int = 0, total_steps: int = 1000) -> Steps:
  """Returns Steps for `config`: params from `seed`, train.py's default optimizer, and the jitted steps."""
  model = tfm.build(config)
  task = get_task(task_name(config))
  data = task_batch(config, batch)
  init_kw = {"decoder_input_ids": jnp.asarray(batch.decoder_input_ids)} if batch.decoder_input_ids is not None else {}
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), data["inputs"], **init_kw)["params"])
  tx = make_optimizer(base_config().optimizer, total_steps)
  state = create_train_state(params, tx, jax.random.PRNGKey(seed + 1))
  step = functools.partial(train_step, model=model, tx=tx, task=task)

  def train(state, batch, rng):
    state, metrics = step(state, batch, rng)
    return state, metrics["loss"]

  def forward(params, batch):
    sums = eval_step(params, batch, model=model, task=task)
    return sums["loss"] / jnp.maximum(sums["weight"], 1.0)

  return Steps(model=model, state=state, batch=data, train_step=jax.jit(train, donate_argnums=0),
               forward=jax.jit(forward), num_params=tfm.count_params(params))
