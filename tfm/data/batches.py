"""Model batches of each objective, made from token windows or padded examples (numpy, seeded).

| task    | batch from windows / examples                                | weights (loss on)  |
|---------|--------------------------------------------------------------|--------------------|
| lm      | inputs = w[:-1], targets = w[1:] (within a document)         | every next token   |
| mlm     | 15 % of tokens chosen: 80 % [MASK], 10 % random, 10 % kept   | chosen tokens      |
| span    | T5 span corruption: 15 % noise, mean span 3, sentinels       | target spans       |
| seq2seq | (input, target) pairs, padded                                | target tokens      |

Classification batches (labelled examples) are made by `tfm.data.dataset.ClassifyData`. The losses
that read these batches are in `tfm.train.objectives`.
"""

from __future__ import annotations

import numpy as np

NOISE_DENSITY = 0.15   # T5: fraction of tokens corrupted
MEAN_SPAN = 3.0        # T5: mean noise-span length
MLM_RATE = 0.15        # BERT: fraction of tokens chosen for prediction


def lm_batch(ids: np.ndarray, segs: np.ndarray, tokenizer, rng: np.random.Generator) -> dict:
  """Returns the causal-LM batch of windows ids / segs [batch, seq_len + 1]."""
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
  """Returns the seq2seq batch of padded inputs [batch, seq_len] and targets [batch, target_len]."""
  return {"inputs": inputs, "targets": targets, "weights": (targets != pad_id).astype(np.float32)}
