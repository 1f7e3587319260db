"""Training objectives: which model family a task trains, how its batches are made, how its loss is computed.

| task    | family          | batch (tfm.data)                                  | loss                          |
|---------|-----------------|---------------------------------------------------|-------------------------------|
| lm      | decoder         | packed windows, next token (batches.lm_batch)     | lm_loss: every next token     |
| mlm     | encoder         | packed windows, 15 % masked (batches.mlm_batch)   | lm_loss: the chosen tokens    |
| span    | encoder_decoder | T5 span corruption (batches.span_batch)           | seq2seq_loss: target spans    |
| seq2seq | encoder_decoder | (input, target) pairs (batches.pairs_batch)       | seq2seq_loss: target tokens   |
| classify| any             | labelled examples (dataset.ClassifyData)          | classify_loss: the label      |

`TASKS` is the dispatch table; a new task is one more row. Losses return *sums* (loss, weight,
correct) so gradient accumulation and data parallelism can add them up exactly before dividing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from tfm.data import batches
from tfm.models import shift_right

LOWER_IS_BETTER = ("loss", "perplexity")  # eval metrics where smaller wins (train.best_metric); the others: higher


# ------------------------------------------------------------------------------------------------
# Losses (jax): sums over the batch, so accumulation and data parallelism add them exactly
# ------------------------------------------------------------------------------------------------


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, label_smoothing: float = 0.0) -> dict:
  """Returns {"loss", "weight", "correct"} sums: float32 cross-entropy of logits [b, l, v] vs targets [b, l].

  With `label_smoothing` e > 0 the target distribution is (1 - e) on the label plus e spread evenly
  over the whole vocabulary (Szegedy et al. 2016, as in Vaswani et al. 2017).
  """
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [batch, length]
  if label_smoothing:
    uniform = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)  # [batch, length]: CE against the uniform distribution
    ce = (1.0 - label_smoothing) * ce + label_smoothing * uniform
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(ce * weights), "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}


def _rngs(rng, deterministic):
  return None if deterministic else {"dropout": rng}


def lm_loss(model, params, batch, rng, deterministic, label_smoothing=0.0):
  """Returns the sums of a causal or masked LM loss: logits at every position, weighted (packed: segment ids)."""
  logits = model.apply({"params": params}, batch["inputs"], segment_ids=batch["segment_ids"],
                       deterministic=deterministic, rngs=_rngs(rng, deterministic))
  return cross_entropy_sums(logits, batch["targets"], batch["weights"], label_smoothing)


def seq2seq_loss(model, params, batch, rng, deterministic, label_smoothing=0.0):
  """Returns the sums of the teacher-forced encoder-decoder loss (span corruption and seq2seq)."""
  c = model.config
  pad = c.pad_token_id
  decoder_inputs = shift_right(batch["targets"], c.decoder_start_token_id)  # [batch, target_len]
  logits = model.apply({"params": params}, batch["inputs"], attention_mask=(batch["inputs"] != pad).astype(jnp.int32),
                       decoder_input_ids=decoder_inputs, decoder_attention_mask=(batch["weights"] > 0).astype(jnp.int32),
                       deterministic=deterministic, rngs=_rngs(rng, deterministic))
  return cross_entropy_sums(logits, batch["targets"], batch["weights"], label_smoothing)


def classify_logits(model, params, batch, rng=None, deterministic=True):
  """Returns the [batch, num_labels] logits of a classification batch."""
  kw = {}
  if model.config.family == "encoder" and model.config.type_vocab_size:
    kw["token_type_ids"] = batch["token_types"]
  return model.apply({"params": params}, batch["inputs"], attention_mask=batch["attention_mask"],
                     deterministic=deterministic, rngs=_rngs(rng, deterministic), **kw)


def classify_loss(model, params, batch, rng, deterministic, label_smoothing=0.0):
  """Returns {"loss", "weight", "correct"} sums of the (class-weighted) cross-entropy of the labels [batch]."""
  logits = classify_logits(model, params, batch, rng, deterministic).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])  # [batch]
  if label_smoothing:
    ce = (1.0 - label_smoothing) * ce - label_smoothing * jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
  w = batch["weights"]
  correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
  return {"loss": jnp.sum(ce * w), "weight": jnp.sum(w), "correct": jnp.sum(correct * (w > 0))}


# ------------------------------------------------------------------------------------------------
# The tasks
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
  """One objective: which model family it trains, how batches are made, how the loss is computed."""

  name: str
  family: str
  source: str                          # "stream" (packed documents), "pairs" (seq2seq) or "labelled"
  raw_len: Callable[[int], int]        # seq_len -> tokens per window taken from the stream
  make_batch: Optional[Callable]       # (ids, segs, tokenizer, rng) -> batch (stream tasks)
  loss: Callable                       # (model, params, batch, rng, deterministic) -> sums
  num_sentinels: Callable[[int], int] = lambda seq_len: 0
  generates: bool = False              # print a generated sample at each eval
  metrics: tuple = ("loss", "accuracy", "perplexity")  # eval metrics, any of them can be train.best_metric
  label_smoothing: float = 0.0         # training loss only (train.label_smoothing); eval losses are plain NLL


TASKS = {
    "lm": Task("lm", "decoder", "stream", lambda n: n + 1, batches.lm_batch, lm_loss, generates=True),
    "mlm": Task("mlm", "encoder", "stream", lambda n: n, batches.mlm_batch, lm_loss),
    "span": Task("span", "encoder_decoder", "stream", lambda n: n, batches.span_batch, seq2seq_loss,
                 num_sentinels=lambda n: batches.span_lengths(n)[1]),
    "seq2seq": Task("seq2seq", "encoder_decoder", "pairs", lambda n: n, None, seq2seq_loss,
                    metrics=("loss", "accuracy", "perplexity", "bleu", "chrf")),
    "classify": Task("classify", "any", "labelled", lambda n: n, None, classify_loss,
                     metrics=("loss", "accuracy", "perplexity", "macro_f1", "mcc")),
}


def get_task(name: str) -> Task:
  """Returns the Task named `name`; raises ValueError listing the allowed names."""
  if name not in TASKS:
    raise ValueError(f"config field 'task' must be one of {sorted(TASKS)}; got {name!r}")
  return TASKS[name]
