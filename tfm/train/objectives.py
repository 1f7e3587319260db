"""Training objectives: how a batch is made from token windows, and how its loss is computed.

| task    | family          | batch from windows (numpy, seeded)                      | loss on          |
|---------|-----------------|----------------------------------------------------------|------------------|
| lm      | decoder         | inputs = w[:-1], targets = w[1:] (within a document)     | every next token |
| mlm     | encoder         | 15 % of tokens chosen: 80 % [MASK], 10 % random, 10 % kept | chosen tokens    |
| span    | encoder_decoder | T5 span corruption: 15 % noise, mean span 3, sentinels   | target spans     |
| seq2seq | encoder_decoder | (input, target) pairs                                    | target tokens    |
| classify| any             | labelled examples (tfm.train.classify.ClassifyData)      | the label        |

`TASKS` is the dispatch table; a new task is one more row. Losses return *sums* (loss, weight,
correct) so gradient accumulation and data parallelism can add them up exactly before dividing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

NOISE_DENSITY = 0.15   # T5: fraction of tokens corrupted
MEAN_SPAN = 3.0        # T5: mean noise-span length
MLM_RATE = 0.15        # BERT: fraction of tokens chosen for prediction


# ------------------------------------------------------------------------------------------------
# Batch makers (numpy): window ids [batch, raw_len] + segment ids -> model batch
# ------------------------------------------------------------------------------------------------


def lm_batch(ids: np.ndarray, segs: np.ndarray, tokenizer, rng: np.random.Generator) -> dict:
  """Returns the causal-LM batch of windows of seq_len + 1 tokens."""
  del tokenizer, rng
  same_doc = segs[:, 1:] == segs[:, :-1]  # never predict across a document boundary
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segs[:, :-1],
          "weights": same_doc.astype(np.float32)}


def mlm_batch(ids: np.ndarray, segs: np.ndarray, tokenizer, rng: np.random.Generator) -> dict:
  """Returns the BERT masked-LM batch: 15 % of non-special tokens chosen, 80/10/10 mask/random/keep."""
  inputs = ids.copy()
  weights = np.zeros(ids.shape, np.float32)
  if tokenizer.mask_id < 0:
    raise ValueError("masked LM needs a [MASK] token; the tokenizer has none")
  low, high = tokenizer.num_specials, tokenizer.vocab_size
  special = np.array(sorted({tokenizer.pad_id, tokenizer.eos_id, tokenizer.mask_id}), np.int32)
  for b in range(ids.shape[0]):
    cand = np.nonzero((ids[b] >= low) & ~np.isin(ids[b], special))[0]
    if cand.size == 0:
      continue
    n = max(1, int(round(MLM_RATE * cand.size)))
    chosen = rng.choice(cand, size=n, replace=False)
    weights[b, chosen] = 1.0
    action = rng.random(n)
    masked = chosen[action < 0.8]
    randomised = chosen[(action >= 0.8) & (action < 0.9)]  # the last 10 % stay unchanged
    inputs[b, masked] = tokenizer.mask_id
    inputs[b, randomised] = rng.integers(low, high, size=randomised.size)
  return {"inputs": inputs, "targets": ids, "segment_ids": segs, "weights": weights}


def span_lengths(length: int) -> tuple[int, int]:
  """Returns (num_noise_tokens, num_noise_spans) of T5 span corruption for `length` tokens."""
  num_noise = min(max(int(round(length * NOISE_DENSITY)), 1), length - 1)
  num_spans = max(1, int(round(num_noise / MEAN_SPAN)))
  return num_noise, num_spans


def span_shapes(length: int) -> tuple[int, int]:
  """Returns (input_len, target_len) of span-corrupted windows of `length` tokens (target ends with [EOS])."""
  num_noise, num_spans = span_lengths(length)
  return length - num_noise + num_spans, num_noise + num_spans + 1


def _segmentation(rng, num_items: int, num_segments: int) -> np.ndarray:
  """Returns num_segments positive lengths summing to num_items, uniformly at random."""
  cuts = np.sort(rng.choice(np.arange(1, num_items), size=num_segments - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [num_items]]))


def noise_mask(length: int, rng: np.random.Generator) -> np.ndarray:
  """Returns a [length] bool mask of T5 noise spans (alternating keep / noise, starting with keep)."""
  num_noise, num_spans = span_lengths(length)
  noise = _segmentation(rng, num_noise, num_spans)
  keep = _segmentation(rng, length - num_noise, num_spans)
  spans = np.stack([keep, noise], axis=1).reshape(-1)  # keep_0, noise_0, keep_1, noise_1, ...
  flags = np.tile([False, True], num_spans)
  return np.repeat(flags, spans)


def span_batch(ids: np.ndarray, segs: np.ndarray, tokenizer, rng: np.random.Generator) -> dict:
  """Returns the T5 span-corruption batch: inputs keep text with sentinels, targets give the spans."""
  del segs  # a window is one example here (documents inside it stay separated by [EOS])
  batch, length = ids.shape
  in_len, tgt_len = span_shapes(length)
  sentinels = tokenizer.sentinel_ids
  _, num_spans = span_lengths(length)
  if len(sentinels) < num_spans:
    raise ValueError(f"span corruption needs {num_spans} sentinel tokens, the tokenizer has {len(sentinels)}")
  inputs = np.empty((batch, in_len), np.int32)
  targets = np.empty((batch, tgt_len), np.int32)
  for b in range(batch):
    mask = noise_mask(length, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])       # first token of each noise span
    span_id = np.cumsum(starts) - 1                               # which span a noise token is in
    # inputs: kept tokens, each noise span replaced by its sentinel
    keep_in = ~mask | starts
    row = np.where(starts, sentinels[np.maximum(span_id, 0)], ids[b])
    inputs[b] = row[keep_in]
    # targets: sentinel_i then the span's tokens, for every span; then [EOS]
    pieces = []
    for s in range(num_spans):
      pieces.append([sentinels[s]])
      pieces.append(ids[b][mask & (span_id == s)])
    pieces.append([tokenizer.eos_id])
    targets[b] = np.concatenate(pieces)
  return {"inputs": inputs, "targets": targets, "weights": np.ones(targets.shape, np.float32)}


def pairs_batch(inputs: np.ndarray, targets: np.ndarray, pad_id: int) -> dict:
  """Returns the seq2seq batch of padded (input, target) ids."""
  return {"inputs": inputs, "targets": targets, "weights": (targets != pad_id).astype(np.float32)}


# ------------------------------------------------------------------------------------------------
# Losses (jax): sums over the batch, so accumulation and data parallelism add them exactly
# ------------------------------------------------------------------------------------------------


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict:
  """Returns {"loss", "weight", "correct"} sums: float32 cross-entropy of logits [b, l, v] vs targets [b, l]."""
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [batch, length]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(ce * weights), "weight": jnp.sum(weights), "correct": jnp.sum(correct * weights)}


def _rngs(rng, deterministic):
  return None if deterministic else {"dropout": rng}


def lm_loss(model, params, batch, rng, deterministic):
  """Returns the sums of the causal-LM loss (packed: attention within segments)."""
  logits = model.apply({"params": params}, batch["inputs"], segment_ids=batch["segment_ids"],
                       deterministic=deterministic, rngs=_rngs(rng, deterministic))
  return cross_entropy_sums(logits, batch["targets"], batch["weights"])


def mlm_loss(model, params, batch, rng, deterministic):
  """Returns the sums of the masked-LM loss on the chosen positions."""
  logits = model.apply({"params": params}, batch["inputs"], segment_ids=batch["segment_ids"],
                       deterministic=deterministic, rngs=_rngs(rng, deterministic))
  return cross_entropy_sums(logits, batch["targets"], batch["weights"])


def seq2seq_loss(model, params, batch, rng, deterministic):
  """Returns the sums of the teacher-forced encoder-decoder loss (span corruption and seq2seq)."""
  c = model.config
  pad = c.pad_token_id
  decoder_inputs = jnp.concatenate([jnp.full_like(batch["targets"][:, :1], c.decoder_start_token_id),
                                    batch["targets"][:, :-1]], axis=1)
  logits = model.apply({"params": params}, batch["inputs"], attention_mask=(batch["inputs"] != pad).astype(jnp.int32),
                       decoder_input_ids=decoder_inputs, decoder_attention_mask=(batch["weights"] > 0).astype(jnp.int32),
                       deterministic=deterministic, rngs=_rngs(rng, deterministic))
  return cross_entropy_sums(logits, batch["targets"], batch["weights"])


def _classify_loss(model, params, batch, rng, deterministic):
  from tfm.train.classify import classify_loss  # pylint: disable=import-outside-toplevel
  return classify_loss(model, params, batch, rng, deterministic)


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


TASKS = {
    "lm": Task("lm", "decoder", "stream", lambda n: n + 1, lm_batch, lm_loss, generates=True),
    "mlm": Task("mlm", "encoder", "stream", lambda n: n, mlm_batch, mlm_loss),
    "span": Task("span", "encoder_decoder", "stream", lambda n: n, span_batch, seq2seq_loss,
                 num_sentinels=lambda n: span_lengths(n)[1]),
    "seq2seq": Task("seq2seq", "encoder_decoder", "pairs", lambda n: n, None, seq2seq_loss),
    "classify": Task("classify", "any", "labelled", lambda n: n, None, _classify_loss),
}


def get_task(name: str) -> Task:
  """Returns the Task named `name`; raises ValueError listing the allowed names."""
  if name not in TASKS:
    raise ValueError(f"config field 'task' must be one of {sorted(TASKS)}; got {name!r}")
  return TASKS[name]
