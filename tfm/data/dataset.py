"""One object per run that turns a data config + task into deterministic train and eval batches.

- `RunData`: packed token streams (lm, mlm, span) or padded (input, target) pairs (seq2seq).
- `ClassifyData`: labelled examples (classify), the label mapping saved as WORKDIR/labels.json.

Both read the same data fields (tfm/train/defaults.py), save the tokenizer as WORKDIR/tokenizer.json
on the first run (a resumed run, or one that starts from a model, finds it there) and make
`train_batch(step)` a pure function of (seed, step): the data position of a run is its step.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from tfm.data import batches, pipeline, sources
from tfm.data.labelled import LabelledSplit, load_labelled
from tfm.data.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer
from tfm.errors import UserError

LABELS_FILE = "labels.json"


def run_tokenizer(d, workdir: str, texts: Callable[[], Sequence[str]], num_sentinels: int = 0):
  """Returns WORKDIR/tokenizer.json if it exists, else the `data.tokenizer` built on `texts()` (and saved there)."""
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):  # a resumed run's, or the one of the model it starts from (init_from)
    return load_tokenizer(path), path
  tok = build_tokenizer(d.tokenizer, texts(), vocab_size=d.vocab_size, num_sentinels=num_sentinels)
  save_tokenizer(tok, path)
  return tok, path


class RunData:
  """Tokenizer, train stream / examples and eval batches of a language-modelling or seq2seq run."""

  def __init__(self, config, task, workdir: str, log=print):
    d = config.data
    self.task, self.config = task, config
    self.seed = int(config.train.seed)
    self.batch_size = int(config.train.batch_size)
    t0 = time.time()
    keys = sources.key_fields(d, task.source)
    train_records = sources.load_split(d, d.train_split, keys)
    if sources.has_split(d, d.eval_split):
      eval_records, held_out = sources.load_split(d, d.eval_split, keys), False
    else:
      eval_records, held_out = None, True

    self.tokenizer, tok_path = run_tokenizer(d, workdir, lambda: [r[k] for r in train_records for k in keys.values()],
                                             num_sentinels=task.num_sentinels(d.seq_len))
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
      train_records = _check_empty_pairs(d, d.train_split, train_records, keys, log)
      if held_out:
        cut = int(len(train_records) * (1 - d.validation_fraction))
        train_records, eval_records = train_records[:cut], train_records[cut:]
      else:
        eval_records = _check_empty_pairs(d, d.eval_split, eval_records, keys, log)
      self.eval_pairs = [(r[d.input_key], r[d.target_key]) for r in eval_records]  # raw texts: decoding eval, BLEU
      if d.input_prefix:  # e.g. T5's task prefix: part of every source the model sees (the decoding adds it too)
        train_records = [{**r, d.input_key: d.input_prefix + r[d.input_key]} for r in train_records]
        eval_records = [{**r, d.input_key: d.input_prefix + r[d.input_key]} for r in eval_records]
      if d.long_pairs == "drop":
        n = len(train_records)
        train_records, longest = drop_long_pairs(tok, train_records, d.input_key, d.target_key, d.seq_len, d.target_len)
        log(f"data.long_pairs=drop: dropped {n - len(train_records)} of {n} train pairs longer than data.seq_len="
            f"{d.seq_len} / data.target_len={d.target_len} tokens (with [EOS]; longest dropped: {longest} tokens)")
      self.train, self.eval = make(train_records), make(eval_records)
      self.buckets = PairBuckets(self.train, tok.pad_id, d.seq_len, d.target_len) if d.bucket_pairs else None
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
    if self.buckets is not None:
      idx, src_len, tgt_len = self.buckets.batch(self.batch_size, self.seed, step)
      return batches.pairs_batch(self.train.inputs[idx, :src_len], self.train.targets[idx, :tgt_len],
                                 self.tokenizer.pad_id)
    idx = pipeline.pair_indices(len(self.train), self.batch_size, self.seed, step)
    return batches.pairs_batch(self.train.inputs[idx], self.train.targets[idx], self.tokenizer.pad_id)

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
      n = min(len(self.eval), self.config.train.eval_batches * b) // b * b
      if n == 0:
        raise ValueError(f"the eval split has {len(self.eval)} examples, fewer than train.batch_size={b}")
      for i in range(0, n, b):
        yield batches.pairs_batch(self.eval.inputs[i:i + b], self.eval.targets[i:i + b], self.tokenizer.pad_id)

  def sample_prompt(self, n_tokens: int = 32) -> np.ndarray:
    """Returns prompt ids: the first `n_tokens` of the eval stream (lm only)."""
    return self.eval.ids[:n_tokens]


def _check_empty_pairs(d, split: str, records: list, keys: dict, log) -> list:
  """Returns `records` without pairs whose source or target is empty (data.empty_pairs=skip, counted), or raises.

  data.empty_pairs=error: a UserError naming the file and line of the first such pair (local files).
  """
  empty = lambda r: not r[d.input_key].strip() or not r[d.target_key].strip()
  bad = sum(map(empty, records))
  if not bad:
    return records
  if d.empty_pairs == "skip":
    log(f"data.empty_pairs=skip: skipped {bad} of {len(records)} {split} pairs with an empty source or target")
    return [r for r in records if not empty(r)]
  where = sources.locate(d, split, keys, empty) or f"dataset {d.name!r}, split {split!r}"
  raise UserError(f"{where}: empty source ({d.input_key!r}) or target ({d.target_key!r}) in a seq2seq pair "
                  f"({bad} such pairs in the {split} split); fix the data, or skip them with "
                  f"--config.data.empty_pairs=skip")


def drop_long_pairs(tokenizer, records: Sequence[dict], input_key: str, target_key: str, seq_len: int,
                    target_len: int) -> tuple[list, int]:
  """Returns (the records whose input fits seq_len and target fits target_len tokens with [EOS], longest dropped length)."""
  src = pipeline.encode_all(tokenizer, [r[input_key] for r in records])
  tgt = pipeline.encode_all(tokenizer, [r[target_key] for r in records])
  kept, longest = [], 0
  for r, s, t in zip(records, src, tgt):
    if len(s) + 1 <= seq_len and len(t) + 1 <= target_len:
      kept.append(r)
    else:
      longest = max(longest, len(s) + 1, len(t) + 1)
  return kept, longest


BUCKET_LENGTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # padded lengths of length-bucketed pair batches


class PairBuckets:
  """Length-bucketed batches of (input, target) pairs: each batch holds pairs of one bucket, cut to its length.

  A pair's bucket is the smallest of BUCKET_LENGTHS that holds both of its sides (capped at seq_len /
  target_len), so a batch pads to that length rather than to seq_len, and there are few distinct
  shapes (one compiled step each). Every epoch, a permutation seeded by (seed, epoch) orders each
  bucket's pairs into batches, the last one of a bucket filled up with the bucket's first pairs, and
  another permutation orders the batches: batch(step) is a pure function of (seed, step).
  """

  def __init__(self, examples, pad_id: int, seq_len: int, target_len: int):
    src = np.sum(examples.inputs != pad_id, axis=1)  # [n] real tokens ([EOS] included; pad never is a real token)
    tgt = np.sum(examples.targets != pad_id, axis=1)
    longest = np.maximum(src, tgt)  # [n]
    caps = [b for b in BUCKET_LENGTHS if b < max(seq_len, target_len)] + [max(seq_len, target_len)]
    self.lengths = np.array(caps)
    self.bucket = np.searchsorted(self.lengths, longest)  # [n]: index of the smallest bucket that holds the pair
    self.seq_len, self.target_len = seq_len, target_len
    self.members = [np.flatnonzero(self.bucket == k) for k in range(len(caps))]
    self._epoch = None

  def _epoch_batches(self, batch_size: int, seed: int, epoch: int) -> list:
    """Returns the (bucket, [batch_size] example indices) of every batch of `epoch`, in order."""
    if self._epoch is None or self._epoch[0] != (batch_size, seed, epoch):
      rng = np.random.default_rng([seed, epoch, 0xB0C7])
      out = []
      for k, idx in enumerate(self.members):
        if len(idx) == 0:
          continue
        perm = rng.permutation(idx)
        reps = -(-len(perm) // batch_size) * batch_size
        perm = np.resize(perm, reps)  # the last batch of the bucket wraps around to its first pairs
        out.extend((k, perm[i:i + batch_size]) for i in range(0, reps, batch_size))
      order = rng.permutation(len(out))
      self._epoch = ((batch_size, seed, epoch), [out[i] for i in order])
    return self._epoch[1]

  def batch(self, batch_size: int, seed: int, step: int) -> tuple[np.ndarray, int, int]:
    """Returns ([batch_size] example indices of step `step`, input length, target length) of its bucket."""
    per_epoch = sum(-(-len(m) // batch_size) for m in self.members)
    epoch, pos = divmod(step, per_epoch)
    k, idx = self._epoch_batches(batch_size, seed, epoch)[pos]
    length = int(self.lengths[k])
    return idx, min(length, self.seq_len), min(length, self.target_len)


class ClassifyData:
  """Tokenised train / validation examples of a classification run, with deterministic batches.

  Examples are [EOS] a [EOS] (b [EOS]) rows, or the [CLS] a [SEP] template of an imported Hugging
  Face tokenizer (`tokenizer.encode_pairs`); every validation example is evaluated once.
  """

  def __init__(self, config, task, workdir: str, log=print):
    d, t = config.data, config.train
    self.task, self.config = task, config
    self.seed, self.batch_size = int(t.seed), int(t.batch_size)
    t0 = time.time()
    labels_path = os.path.join(workdir, LABELS_FILE)
    known = None
    if os.path.exists(labels_path):
      with open(labels_path) as f:
        known = json.load(f)["labels"]
    train, names = load_labelled(d, d.train_split, known)
    valid, _ = load_labelled(d, d.eval_split, names)
    if len(names) < 2:
      raise ValueError(f"{train.source}: classification needs at least 2 distinct labels; found {names}")
    self.label_names = names
    train, holdout = split_holdout(train, d.holdout_fraction, len(names))
    self.texts = {"train": train, "holdout": holdout, "eval": valid}  # raw splits, for the baselines
    self.tokenizer, _ = run_tokenizer(d, workdir, lambda: train.texts + (train.texts_b or []))
    with open(labels_path + ".tmp", "w") as f:
      json.dump({"labels": names, "label_key": d.label_key, "text_key": d.text_key,
                 "text_pair_key": d.text_pair_key, "seq_len": d.seq_len}, f, indent=1)
    os.replace(labels_path + ".tmp", labels_path)
    self.pad_id = self.tokenizer.pad_id
    self.vocab_size = self.tokenizer.vocab_size

    self.train = self._encode(train, "train", d.seq_len, log)
    self.holdout = self._encode(holdout, "holdout", d.seq_len, log)
    self.eval = self._encode(valid, "validation", d.seq_len, log)
    counts = np.bincount(self.train["labels"], minlength=len(names))
    if t.class_weights == "balanced":
      self.class_weights = (counts.sum() / (len(names) * np.maximum(counts, 1))).astype(np.float32)
    else:
      self.class_weights = np.ones(len(names), np.float32)
    self.by_label = [np.flatnonzero(self.train["labels"] == k) for k in range(len(names))]
    log(f"data: {d.name} ({len(self.train['labels']):,} train / {len(self.holdout['labels']):,} holdout (carved from "
        f"train: picks the best checkpoint) / {len(self.eval['labels']):,} validation examples, {len(names)} labels "
        f"{_label_counts(names, counts)}), tokenizer with {self.vocab_size} ids ({time.time() - t0:.1f}s)")

  def _encode(self, split, name, seq_len, log) -> dict:
    out, cut, longest = pipeline.encode_examples(self.tokenizer, split.texts, split.texts_b, seq_len)
    if cut:
      log(f"NOTE: {cut} of {len(split.texts)} {name} examples are longer than data.seq_len={seq_len} tokens and "
          f"were truncated (the longest has {longest}); raise data.seq_len to keep them whole")
    out["labels"] = split.labels
    return out

  def _batch(self, src: dict, idx: np.ndarray) -> dict:
    b = {k: v[idx] for k, v in src.items()}
    b["weights"] = self.class_weights[b["labels"]]
    return b

  def train_batch(self, step: int) -> dict:
    """Returns the training batch of step `step` (a pure function of seed and step)."""
    rng = np.random.default_rng([self.seed, step, 7])
    if self.config.data.balanced_sampling:
      labels = rng.integers(0, len(self.by_label), self.batch_size)
      idx = np.array([self.by_label[k][rng.integers(0, len(self.by_label[k]))] for k in labels])
    else:
      # Epoch-wise permutation: every example once per epoch, order fixed by (seed, epoch).
      n = len(self.train["labels"])
      start = step * self.batch_size
      idx = np.empty(self.batch_size, np.int64)
      for j in range(self.batch_size):
        epoch, pos = divmod(start + j, n)
        idx[j] = _permutation(self.seed, epoch, n)[pos]
    return self._batch(self.train, idx)

  def eval_batches(self, split: str = "eval") -> Iterator[dict]:
    """Yields every example of `split` (eval | holdout) once, in batches (the last batch padded with weight 0)."""
    src = {"eval": self.eval, "holdout": self.holdout}[split]
    n, b = len(src["labels"]), self.batch_size
    for i in range(0, n, b):
      idx = np.arange(i, i + b) % n
      batch = self._batch(src, idx)
      batch["weights"] = np.where(np.arange(i, i + b) < n, 1.0, 0.0).astype(np.float32)
      yield batch


_PERMS: dict = {}
def _label_counts(names, counts, show: int = 12) -> str:
  """Returns "name: count, ..." of the most frequent training labels (all of them when there are few)."""
  order = np.argsort(-counts, kind="stable")
  shown = ", ".join(f"{names[i]}: {counts[i]}" for i in order[:show])
  return f"with train counts {shown}" + (f", ... ({len(names) - show} more)" if len(names) > show else "")


HOLDOUT_SEED = 0x401D  # the holdout split does not depend on train.seed: every seed selects on the same examples


def split_holdout(split, fraction: float, num_labels: int):
  """Returns (train, holdout) LabelledSplits: `fraction` of each label's examples held out (rounded down).

  Stratified, so the holdout has the label mix of the training data and a class with fewer than
  1 / fraction examples keeps them all for training.
  """
  rng = np.random.default_rng(HOLDOUT_SEED)
  hold = np.zeros(len(split.labels), bool)
  for k in range(num_labels):
    idx = np.flatnonzero(split.labels == k)
    hold[rng.permutation(idx)[:int(len(idx) * fraction)]] = True
  if not hold.any():
    raise ValueError(f"{split.source}: data.holdout_fraction={fraction} holds out no training example "
                     f"({len(split.labels)} examples); raise it")

  def take(mask):
    keep = np.flatnonzero(mask)
    return LabelledSplit([split.texts[i] for i in keep],
                         [split.texts_b[i] for i in keep] if split.texts_b is not None else None,
                         split.labels[keep], split.source)
  return take(~hold), take(hold)


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """Returns the permutation of n examples for (seed, epoch), cached for the epoch being read."""
  key = (seed, epoch, n)
  if key not in _PERMS:
    _PERMS.clear()
    _PERMS[key] = np.random.default_rng([seed, epoch, 11]).permutation(n)
  return _PERMS[key]
