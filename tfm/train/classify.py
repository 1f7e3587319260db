"""Text classification as a task of the training loop: data, loss, metrics and start points.

- `ClassifyData`: labelled examples (TFDS by name, GLUE SST-2 offline, CSV / TSV / JSONL) tokenised
  into [EOS] a [EOS] (b [EOS]) rows (or the [CLS] a [SEP] template of an imported Hugging Face
  tokenizer), the label mapping saved as WORKDIR/labels.json, and deterministic batches per step.
- `classify_loss`: the (optionally class-weighted) cross-entropy sums the generic train step expects.
- `classification_eval`: accuracy, macro-F1, MCC, per-class precision / recall and the confusion
  matrix on the validation split.
- `start_point`: the model config and parameters to start from (scratch, a tfm run or params
  checkpoint, or a Hugging Face directory); only the head (pooler / classifier) is new.
"""

from __future__ import annotations

import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tfm.data.labelled import load_labelled
from tfm.data.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer
from tfm.train.classify_metrics import classification_metrics

LABELS_FILE = "labels.json"
HEAD_MODULES = ("classifier", "pooler")  # parameters that a classifier adds to a backbone


# ------------------------------------------------------------------------------------------------
# Tokenisation
# ------------------------------------------------------------------------------------------------


class _HFPairEncoder:
  """Encodes (a, b) with an imported Hugging Face tokenizer's own template ([CLS] a [SEP] b [SEP])."""

  def __init__(self, tok):
    self.tok = tok
    pad = next((t for t in ("[PAD]", "<pad>", "<|endoftext|>") if tok.token_to_id(t) is not None), None)
    self.pad_id = tok.token_to_id(pad) if pad else 0
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

  def encode_pairs(self, texts, texts_b):
    """Returns (ids, token types) lists of each example."""
    encs = self.tok.encode_batch(list(zip(texts, texts_b)) if texts_b else list(texts))
    return [np.asarray(e.ids, np.int32) for e in encs], [np.asarray(e.type_ids, np.int32) for e in encs]


class _TfmPairEncoder:
  """Encodes (a, b) as [EOS] a [EOS] (b [EOS]) with a tfm tokenizer ([EOS] doubles as [CLS] / [SEP])."""

  def __init__(self, tok):
    self.tok = tok
    self.pad_id, self.vocab_size = tok.pad_id, tok.vocab_size

  def _enc(self, texts):
    return self.tok.encode_batch(texts) if hasattr(self.tok, "encode_batch") else [self.tok.encode(t) for t in texts]

  def encode_pairs(self, texts, texts_b):
    """Returns (ids, token types) lists of each example."""
    e = np.array([self.tok.eos_id], np.int32)
    a = self._enc(texts)
    if not texts_b:
      ids = [np.concatenate([e, x, e]) for x in a]
      return ids, [np.zeros_like(x) for x in ids]
    b = self._enc(texts_b)
    ids = [np.concatenate([e, x, e, y, e]) for x, y in zip(a, b)]
    types = [np.concatenate([np.zeros(len(x) + 2, np.int32), np.ones(len(y) + 1, np.int32)]) for x, y in zip(a, b)]
    return ids, types


def make_encoder(tokenizer):
  """Returns the pair encoder of a tfm tokenizer or of a Hugging Face `tokenizers.Tokenizer`."""
  return _TfmPairEncoder(tokenizer) if hasattr(tokenizer, "eos_id") else _HFPairEncoder(tokenizer)


def encode_examples(encoder, texts, texts_b, seq_len: int) -> tuple[dict, int, int]:
  """Returns (model inputs of the texts, number truncated, longest length) as [n, seq_len] arrays."""
  ids, types = encoder.encode_pairs(texts, texts_b)
  ids_arr, cut = _pad_rows(ids, seq_len, encoder.pad_id)
  types_arr, _ = _pad_rows(types, seq_len, 0)
  lengths = np.minimum([len(r) for r in ids], seq_len)
  mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
  return {"inputs": ids_arr, "token_types": types_arr, "attention_mask": mask}, cut, max(map(len, ids), default=0)


def _pad_rows(rows, length: int, pad: int) -> tuple[np.ndarray, int]:
  """Returns ([n, length] array of rows cut / padded to `length`, number of rows that were cut)."""
  out = np.full((len(rows), length), pad, np.int32)
  cut = 0
  for i, r in enumerate(rows):
    if len(r) > length:
      cut += 1
      r = r[:length]
    out[i, :len(r)] = r
  return out, cut


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


class ClassifyData:
  """Tokenised train / validation examples of a classification run, with deterministic batches."""

  def __init__(self, config, task, workdir: str, log=print, hf_tokenizer=None):
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
    tok_path = os.path.join(workdir, "tokenizer.json")
    if hf_tokenizer is not None:
      self.tokenizer = hf_tokenizer
      hf_tokenizer.save(tok_path)
    elif os.path.exists(tok_path):
      self.tokenizer = load_tokenizer(tok_path)
    else:
      texts = train.texts + (train.texts_b or [])
      self.tokenizer = build_tokenizer(d.tokenizer, texts, vocab_size=d.vocab_size)
      save_tokenizer(self.tokenizer, tok_path)
    self.encoder = make_encoder(self.tokenizer)
    with open(labels_path + ".tmp", "w") as f:
      json.dump({"labels": names, "label_column": d.label_column, "text_column": d.text_column,
                 "text_b_column": d.text_b_column, "seq_len": d.seq_len,
                 "tokenizer": "hf" if hf_tokenizer is not None else "tfm"}, f, indent=1)
    os.replace(labels_path + ".tmp", labels_path)
    self.pad_id = self.encoder.pad_id
    self.vocab_size = self.encoder.vocab_size

    self.train = self._encode(train, "train", d.seq_len, log)
    self.eval = self._encode(valid, "validation", d.seq_len, log)
    counts = np.bincount(self.train["labels"], minlength=len(names))
    if t.class_weights == "balanced":
      self.class_weights = (counts.sum() / (len(names) * np.maximum(counts, 1))).astype(np.float32)
    elif t.class_weights in ("", "none"):
      self.class_weights = np.ones(len(names), np.float32)
    else:
      raise ValueError(f"config field 'train.class_weights' must be 'none' or 'balanced'; got {t.class_weights!r}")
    self.by_label = [np.flatnonzero(self.train["labels"] == k) for k in range(len(names))]
    log(f"data: {d.name} ({len(self.train['labels']):,} train / {len(self.eval['labels']):,} validation examples, "
        f"labels {names} with train counts {counts.tolist()}), tokenizer with {self.vocab_size} ids "
        f"({time.time() - t0:.1f}s)")

  def _encode(self, split, name, seq_len, log) -> dict:
    out, cut, longest = encode_examples(self.encoder, split.texts, split.texts_b, seq_len)
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

  def eval_batches(self):
    """Yields every validation example once, in batches (the last batch padded with weight 0)."""
    n, b = len(self.eval["labels"]), self.batch_size
    for i in range(0, n, b):
      idx = np.arange(i, i + b) % n
      batch = self._batch(self.eval, idx)
      batch["weights"] = np.where(np.arange(i, i + b) < n, 1.0, 0.0).astype(np.float32)
      yield batch


_PERMS: dict = {}


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  key = (seed, epoch, n)
  if key not in _PERMS:
    _PERMS.clear()
    _PERMS[key] = np.random.default_rng([seed, epoch, 11]).permutation(n)
  return _PERMS[key]


# ------------------------------------------------------------------------------------------------
# Loss and evaluation
# ------------------------------------------------------------------------------------------------


def classify_logits(model, params, batch, rng=None, deterministic=True):
  """Returns the [batch, num_labels] logits of a classification batch."""
  kw = {}
  if model.config.family == "encoder" and model.config.type_vocab_size:
    kw["token_type_ids"] = batch["token_types"]
  return model.apply({"params": params}, batch["inputs"], attention_mask=batch["attention_mask"],
                     deterministic=deterministic, rngs=None if deterministic else {"dropout": rng}, **kw)


def classify_loss(model, params, batch, rng, deterministic):
  """Returns {"loss", "weight", "correct"} sums of the (class-weighted) cross-entropy."""
  logits = classify_logits(model, params, batch, rng, deterministic).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])  # [batch]
  w = batch["weights"]
  correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
  return {"loss": jnp.sum(ce * w), "weight": jnp.sum(w), "correct": jnp.sum(correct * (w > 0))}


def classification_eval(model, params, data: ClassifyData, predict=None) -> dict:
  """Returns the validation metrics (accuracy, macro_f1, mcc, per_class, confusion_matrix)."""
  if predict is None:
    predict = jax.jit(lambda p, b: classify_logits(model, p, b))
  preds, labels = [], []
  for batch in data.eval_batches():
    keep = batch["weights"] > 0
    logits = np.asarray(jax.device_get(predict(params, batch)))
    preds.append(np.argmax(logits, -1)[keep])
    labels.append(batch["labels"][keep])
  return classification_metrics(np.concatenate(labels), np.concatenate(preds), data.label_names)


# ------------------------------------------------------------------------------------------------
# Start points
# ------------------------------------------------------------------------------------------------


def _is_hf_dir(path: str) -> bool:
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return False
  with open(cfg) as f:
    blob = json.load(f)
  return "model_type" in blob or "architectures" in blob


def _is_run_dir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(os.path.join(path, "config.json"))


def load_start_point(path: str):
  """Returns (ModelConfig, params, hf tokenizer or None, tfm tokenizer path or None) from init_from `path`.

  `path` is a Hugging Face model directory, a tfm training workdir (its newest checkpoint and its
  tokenizer.json), or a tfm params checkpoint (`tfm.hf.checkpoint.save_params`).
  """
  import tfm
  from tfm.hf.checkpoint import load_params
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"config field 'init_from': {path} is not a directory")
  if _is_hf_dir(path):
    mc, params = tfm.from_pretrained(path)
    try:
      hf_tok = tfm.load_tokenizer(path)
    except FileNotFoundError:
      hf_tok = None
    return mc, params, hf_tok, None
  if _is_run_dir(path):
    from tfm.train.checkpoint import run_model_config, run_params
    params, _ = run_params(path, "latest")
    tok = os.path.join(path, "tokenizer.json")
    return run_model_config(path), params, None, tok if os.path.exists(tok) else None
  mc, params = load_params(path)
  tok = os.path.join(path, "tokenizer.json")
  return mc, params, None, tok if os.path.exists(tok) else None


def merge_backbone(fresh, loaded, source: str, log=print):
  """Returns `fresh` params with every non-head parameter taken from `loaded` (shapes checked)."""
  flat_new = dict(jax.tree_util.tree_flatten_with_path(nn.meta.unbox(fresh))[0])
  flat_old = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(loaded))[0]}
  out, new = {}, []
  for k, v in flat_new.items():
    name = jax.tree_util.keystr(k)
    if "['classifier']" in name:  # the label projection is always new (its label set is this run's)
      out[k], _ = v, new.append(name)
    elif name in flat_old:
      if tuple(np.shape(flat_old[name])) != tuple(v.shape):
        raise ValueError(f"init_from={source}: parameter {name} has shape {tuple(np.shape(flat_old[name]))} in the "
                         f"checkpoint but {tuple(v.shape)} in the model; the checkpoint and the model config differ")
      arr = jnp.asarray(flat_old[name], v.dtype)
      out[k] = jax.device_put(arr, v.sharding) if hasattr(v, "sharding") else arr
    elif any(f"['{h}']" in name for h in HEAD_MODULES):
      out[k], _ = v, new.append(name)
    else:
      raise ValueError(f"init_from={source}: the checkpoint has no parameter {name}; it does not match the model "
                       f"(checkpoint parameters: {sorted(flat_old)[:8]} ...)")
  log(f"initialised from {source}; new (randomly initialised) head parameters: {new}")
  treedef = jax.tree_util.tree_structure(nn.meta.unbox(fresh))
  return jax.tree_util.tree_unflatten(treedef, [out[k] for k in flat_new])


class StartPoint:
  """What a classification run starts from: a model config, its params and (maybe) a tokenizer."""

  def __init__(self, config, params, hf_tokenizer):
    self.config, self.params, self.hf_tokenizer = config, params, hf_tokenizer


def prepare_start_point(path: str, workdir: str) -> StartPoint:
  """Returns the StartPoint of init_from `path`; a tfm tokenizer found there is copied into `workdir`."""
  import shutil
  mc, params, hf_tok, tok_path = load_start_point(path)
  dst = os.path.join(workdir, "tokenizer.json")
  if tok_path and not os.path.exists(dst):
    shutil.copyfile(tok_path, dst)
  return StartPoint(mc, params, hf_tok)
