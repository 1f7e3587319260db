"""One object per run that turns a data config + task into deterministic train and eval batches."""

from __future__ import annotations

import os
import time
from typing import Iterator

import numpy as np

from tfm.data import pipeline, sources
from tfm.data.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer


class RunData:
  """Tokenizer, train stream / examples and eval batches of a run.

  `train_batch(step)` is a pure function of (seed, step): the data position of a run is its step.
  The tokenizer is saved to WORKDIR/tokenizer.json on the first run and read back on a resume.
  """

  def __init__(self, config, task, workdir: str, log=print):
    d = config.data
    self.task, self.config = task, config
    self.seed = int(config.train.seed)
    self.batch_size = int(config.train.batch_size)
    t0 = time.time()
    train_records = sources.load_split(d, d.train_split, task.name)
    if sources.has_split(d, d.eval_split, task.name):
      eval_records, held_out = sources.load_split(d, d.eval_split, task.name), False
    else:
      eval_records, held_out = None, True

    tok_path = os.path.join(workdir, "tokenizer.json")
    init_tok = os.path.join(config.init_from, "tokenizer.json") if config.init_from else ""
    if os.path.exists(tok_path):
      self.tokenizer = load_tokenizer(tok_path)
    elif init_tok and os.path.exists(init_tok) and not d.tokenizer.endswith(".json"):
      self.tokenizer = load_tokenizer(init_tok)  # the tokenizer that goes with the params we start from
      save_tokenizer(self.tokenizer, tok_path)
    else:
      texts = [r[k] for r in train_records for k in sources.fields_for(d, task.name)]
      self.tokenizer = build_tokenizer(d.tokenizer, texts, vocab_size=d.vocab_size,
                                       num_sentinels=task.num_sentinels(d.seq_len))
      save_tokenizer(self.tokenizer, tok_path)
    tok = self.tokenizer

    if task.source == "stream":
      key = d.text_key
      self.train = pipeline.make_stream(tok, [r[key] for r in train_records])
      if held_out:
        self.train, self.eval = self.train.split_tail(d.validation_fraction)
      else:
        self.eval = pipeline.make_stream(tok, [r[key] for r in eval_records])
      self.raw_len = task.raw_len(d.seq_len)
      starts = pipeline.eval_starts(self.eval, self.raw_len, config.train.eval_batches * self.batch_size)
      self.eval_starts = starts
      sizes = f"{len(self.train):,} train / {len(self.eval):,} eval tokens"
    else:
      make = lambda recs: pipeline.make_pairs(tok, recs, d.input_key, d.target_key, d.seq_len, d.target_len)
      if held_out:
        cut = int(len(train_records) * (1 - d.validation_fraction))
        train_records, eval_records = train_records[:cut], train_records[cut:]
      self.train, self.eval = make(train_records), make(eval_records)
      for name, ex in (("train", self.train), ("eval", self.eval)):
        if ex.truncated:
          log(f"NOTE: {ex.truncated} of {len(ex)} {name} examples were longer than data.seq_len={d.seq_len} / "
              f"data.target_len={d.target_len} and were truncated")
      sizes = f"{len(self.train):,} train / {len(self.eval):,} eval examples"
    log(f"data: {d.name} ({sizes}{', eval held out from train' if held_out else ''}), tokenizer "
        f"{d.tokenizer} with {tok.vocab_size} ids, saved to {tok_path} ({time.time() - t0:.1f}s)")

  def _rng(self, step: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, step, salt])

  def train_batch(self, step: int) -> dict:
    """Returns the training batch of step `step` (numpy arrays)."""
    if self.task.source == "stream":
      starts = pipeline.train_starts(self.train, self.raw_len, self.batch_size, self.seed, step)
      ids, segs = pipeline.windows(self.train, starts, self.raw_len)
      return self.task.make_batch(ids, segs, self.tokenizer, self._rng(step, 1))
    idx = pipeline.pair_indices(len(self.train), self.batch_size, self.seed, step)
    from tfm.train.objectives import pairs_batch
    return pairs_batch(self.train.inputs[idx], self.train.targets[idx], self.tokenizer.pad_id)

  def eval_batches(self) -> Iterator[dict]:
    """Yields the fixed evaluation batches (the same every time; masking seeded per batch)."""
    b = self.batch_size
    if self.task.source == "stream":
      if len(self.eval_starts) < b:
        raise ValueError(f"the eval split has {len(self.eval_starts)} windows of {self.raw_len} tokens, fewer than "
                         f"train.batch_size={b}; use a smaller batch or data.seq_len")
      for i in range(0, len(self.eval_starts) - b + 1, b):
        ids, segs = pipeline.windows(self.eval, self.eval_starts[i:i + b], self.raw_len)
        yield self.task.make_batch(ids, segs, self.tokenizer, np.random.default_rng([self.seed, i, 2]))
    else:
      from tfm.train.objectives import pairs_batch
      n = min(len(self.eval), self.config.train.eval_batches * b) // b * b
      if n == 0:
        raise ValueError(f"the eval split has {len(self.eval)} examples, fewer than train.batch_size={b}")
      for i in range(0, n, b):
        yield pairs_batch(self.eval.inputs[i:i + b], self.eval.targets[i:i + b], self.tokenizer.pad_id)

  def sample_prompt(self, n_tokens: int = 32) -> np.ndarray:
    """Returns prompt ids: the first `n_tokens` of the eval stream (lm only)."""
    return self.eval.ids[:n_tokens]
