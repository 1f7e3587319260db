"""From records to batches: tokenize, pack into a stream with segment ids, cut windows by step.

Every batch is a pure function of (seed, step): training windows start at offsets drawn from
`np.random.default_rng([seed, step])`, so resuming at step s reproduces exactly the batches an
uninterrupted run would have seen (the "data position" is the step). Evaluation windows are fixed
(non-overlapping, from the start of the validation stream).

Packing: documents are concatenated, each followed by [EOS]; `segment_ids` number the documents
inside a window from 1, so attention and positions stay within a document (see tfm.models).
Examples (seq2seq pairs, classification texts) are padded to fixed lengths instead, and every
example cut to fit is counted.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class TokenStream:
  """All documents of a split, tokenized and concatenated."""

  ids: np.ndarray        # [num_tokens] int32
  segments: np.ndarray   # [num_tokens] int32: index of the document each token belongs to

  def __len__(self) -> int:
    return int(self.ids.shape[0])

  def split_tail(self, fraction: float) -> tuple["TokenStream", "TokenStream"]:
    """Returns (head, tail): the last `fraction` of the tokens held out (for a missing validation split)."""
    cut = int(len(self) * (1.0 - fraction))
    return TokenStream(self.ids[:cut], self.segments[:cut]), TokenStream(self.ids[cut:], self.segments[cut:])


def encode_all(tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  """Returns the ids of every text (batched for subword tokenizers)."""
  if hasattr(tokenizer, "encode_batch"):
    return tokenizer.encode_batch(texts)
  return [tokenizer.encode(t) for t in texts]


def make_stream(tokenizer, texts: Sequence[str]) -> TokenStream:
  """Returns the stream of `texts`, each document followed by [EOS]."""
  pieces, segs = [], []
  for i, ids in enumerate(encode_all(tokenizer, texts)):
    doc = np.concatenate([ids.astype(np.int32), np.array([tokenizer.eos_id], np.int32)])
    pieces.append(doc)
    segs.append(np.full(doc.shape, i, np.int32))
  if not pieces:
    return TokenStream(np.zeros((0,), np.int32), np.zeros((0,), np.int32))
  return TokenStream(np.concatenate(pieces), np.concatenate(segs))


def windows(stream: TokenStream, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (ids, segment_ids), each [len(starts), length]; segment ids renumbered from 1 per row."""
  idx = starts[:, None] + np.arange(length)[None, :]  # [batch, length]
  ids = stream.ids[idx]
  seg = stream.segments[idx]
  seg = seg - seg[:, :1] + 1  # documents inside a window are 1, 2, ...
  return ids.astype(np.int32), seg.astype(np.int32)


def train_starts(stream: TokenStream, length: int, batch: int, seed: int, step: int) -> np.ndarray:
  """Returns [batch] window starts for training step `step` (deterministic in seed and step)."""
  high = len(stream) - length + 1
  if high <= 0:
    raise ValueError(f"the training split has {len(stream)} tokens, fewer than one window of {length} "
                     f"(data.seq_len and the objective); use a shorter data.seq_len or more data")
  rng = np.random.default_rng([seed, step, 0x5EED])
  return rng.integers(0, high, size=batch)


def eval_starts(stream: TokenStream, length: int, max_windows: int) -> np.ndarray:
  """Returns the starts of up to `max_windows` non-overlapping windows from the start of the stream."""
  n = len(stream) // length
  if n == 0:
    raise ValueError(f"the validation split has {len(stream)} tokens, fewer than one window of {length}; "
                     f"use a shorter data.seq_len")
  return np.arange(min(n, max_windows)) * length


@dataclasses.dataclass
class PairExamples:
  """Sequence-to-sequence examples, padded: inputs [n, seq_len], targets [n, target_len]."""

  inputs: np.ndarray
  targets: np.ndarray
  truncated: int  # how many examples were cut to fit (reported, never silent)

  def __len__(self) -> int:
    return int(self.inputs.shape[0])


def pad_rows(rows: Sequence[np.ndarray], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns ([n, length] rows cut / padded to `length`, [n] bool: the row was cut)."""
  out = np.full((len(rows), length), pad, np.int32)
  cut = np.zeros(len(rows), bool)
  for i, r in enumerate(rows):
    cut[i] = len(r) > length
    r = r[:length]
    out[i, :len(r)] = r
  return out, cut


def make_pairs(tokenizer, records: Sequence[dict], input_key: str, target_key: str, seq_len: int,
               target_len: int) -> PairExamples:
  """Returns padded (input, target) id arrays; each side ends with [EOS]."""
  eos = np.array([tokenizer.eos_id], np.int32)
  src = [np.concatenate([s, eos]) for s in encode_all(tokenizer, [r[input_key] for r in records])]
  tgt = [np.concatenate([t, eos]) for t in encode_all(tokenizer, [r[target_key] for r in records])]
  inputs, cut_src = pad_rows(src, seq_len, tokenizer.pad_id)
  targets, cut_tgt = pad_rows(tgt, target_len, tokenizer.pad_id)
  return PairExamples(inputs, targets, int(np.sum(cut_src | cut_tgt)))


def encode_examples(tokenizer, texts: Sequence[str], texts_b, seq_len: int) -> tuple[dict, int, int]:
  """Returns (classification inputs of the texts as [n, seq_len] arrays, number truncated, longest length).

  The inputs are "inputs" (ids), "token_types" (0 for the first text, 1 for the second) and
  "attention_mask" (1 on real tokens); `texts_b` holds the second texts of pair tasks, or None.
  """
  ids, types = tokenizer.encode_pairs(texts, texts_b)
  ids_arr, cut = pad_rows(ids, seq_len, tokenizer.pad_id)
  types_arr, _ = pad_rows(types, seq_len, 0)
  lengths = np.minimum([len(r) for r in ids], seq_len)
  mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
  inputs = {"inputs": ids_arr, "token_types": types_arr, "attention_mask": mask}
  return inputs, int(cut.sum()), max(map(len, ids), default=0)


def pair_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
  """Returns [batch] example indices of step `step`: epochs of seeded permutations, read in order."""
  if n == 0:
    raise ValueError("the training split has no examples")
  flat = step * batch + np.arange(batch)
  epochs, pos = flat // n, flat % n
  out = np.empty(batch, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e), 0xE90C]).permutation(n)
    sel = epochs == e
    out[sel] = perm[pos[sel]]
  return out
