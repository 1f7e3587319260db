"""Tokenizers: byte-level, character-level and subword (BPE / WordPiece / Unigram via HF `tokenizers`).

Every tokenizer has the same small surface: `encode(text) -> int32 ids`, `encode_batch(texts)`,
`encode_pairs(texts, texts_b) -> (ids, token types)` (classification inputs), `decode(ids) -> str`,
`vocab_size`, the special ids `pad_id`, `eos_id`, `mask_id` and `sentinel_ids` (T5 span
corruption), and `to_json()`. Special tokens come first: [PAD]=0, [EOS]=1, [MASK]=2, then the
sentinels <extra_id_0>... A run saves its tokenizer as `WORKDIR/tokenizer.json`.

`load_tokenizer` (also `tfm.load_tokenizer`) is the one loader: a tokenizer.json (ours or any
Hugging Face one), a run or params directory, or a Hugging Face model directory or hub id.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Iterable, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer

from tfm.hf.api import resolve_directory
from tfm.hf.tokenizer import read_tokenizer

KINDS = ("byte", "char", "bpe", "wordpiece", "unigram")
BASE_SPECIALS = ("[PAD]", "[EOS]", "[MASK]")


def special_tokens(num_sentinels: int) -> list[str]:
  """Returns the special tokens in id order: [PAD], [EOS], [MASK], <extra_id_0>, ..."""
  return list(BASE_SPECIALS) + [f"<extra_id_{i}>" for i in range(num_sentinels)]


class _Base:
  """Shared special-token bookkeeping."""

  specials: list[str]

  @property
  def pad_id(self) -> int:
    """Returns the padding id (0)."""
    return 0

  @property
  def eos_id(self) -> int:
    """Returns the end-of-sequence id."""
    return 1

  @property
  def mask_id(self) -> int:
    """Returns the [MASK] id (masked language modelling)."""
    return 2

  @property
  def sentinel_ids(self) -> np.ndarray:
    """Returns the ids of the span-corruption sentinels <extra_id_i>, in order."""
    return np.arange(len(BASE_SPECIALS), len(self.specials), dtype=np.int32)

  @property
  def num_specials(self) -> int:
    """Returns the number of special ids (they occupy ids 0 .. num_specials-1)."""
    return len(self.specials)

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[np.ndarray]:
    """Returns the int32 ids of each text."""
    return [self.encode(t, add_special_tokens) for t in texts]

  def encode_pairs(self, texts: Sequence[str], texts_b: Optional[Sequence[str]] = None):
    """Returns (ids, token types) of each example as [EOS] a [EOS] (b [EOS]) ([EOS] doubles as [CLS] / [SEP])."""
    e = np.array([self.eos_id], np.int32)
    a = self.encode_batch(texts)
    if not texts_b:
      ids = [np.concatenate([e, x, e]) for x in a]
      return ids, [np.zeros_like(x) for x in ids]
    b = self.encode_batch(texts_b)
    ids = [np.concatenate([e, x, e, y, e]) for x, y in zip(a, b)]
    types = [np.concatenate([np.zeros(len(x) + 2, np.int32), np.ones(len(y) + 1, np.int32)]) for x, y in zip(a, b)]
    return ids, types


class ByteTokenizer(_Base):
  """UTF-8 bytes shifted past the special ids: vocab = specials + 256."""

  kind = "byte"

  def __init__(self, num_sentinels: int = 0):
    self.specials = special_tokens(num_sentinels)

  @property
  def vocab_size(self) -> int:
    """Returns the number of ids."""
    return self.num_specials + 256

  def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
    """Returns the int32 ids of `text`'s UTF-8 bytes (no template: `add_special_tokens` adds nothing)."""
    del add_special_tokens
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.num_specials

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids` (special ids are dropped, broken UTF-8 replaced)."""
    ids = np.asarray(ids, np.int64)
    ids = ids[ids >= self.num_specials] - self.num_specials
    return bytes(ids.astype(np.uint8).tolist()).decode("utf-8", errors="replace")

  def to_json(self) -> dict:
    """Returns the JSON form of this tokenizer."""
    return {"tfm_tokenizer": "byte", "specials": self.specials}


class CharTokenizer(_Base):
  """One id per character seen in the training text (sorted), after the special ids."""

  kind = "char"

  def __init__(self, chars: Sequence[str], num_sentinels: int = 0):
    self.specials = special_tokens(num_sentinels)
    self.chars = list(chars)
    self._index = {ch: i + self.num_specials for i, ch in enumerate(self.chars)}
    # Lookup table for the BMP (fast path); other characters go through the dict.
    self._table = np.full(65536, -1, np.int32)
    for ch, i in self._index.items():
      if ord(ch) < 65536:
        self._table[ord(ch)] = i

  @classmethod
  def train(cls, texts: Iterable[str], num_sentinels: int = 0) -> "CharTokenizer":
    """Returns a tokenizer over the sorted set of characters in `texts`."""
    chars = set()
    for t in texts:
      chars.update(t)
    return cls(sorted(chars), num_sentinels)

  @property
  def vocab_size(self) -> int:
    """Returns the number of ids."""
    return self.num_specials + len(self.chars)

  def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
    """Returns the int32 ids of `text` (no template); raises ValueError on a character outside the vocabulary."""
    del add_special_tokens
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    if codes.size and codes.max() < 65536:
      ids = self._table[codes]
    else:
      ids = np.array([self._index.get(ch, -1) for ch in text], np.int32)
    if ids.size and ids.min() < 0:
      bad = sorted({text[i] for i in np.nonzero(ids < 0)[0][:20]})
      raise ValueError(f"character tokenizer: characters {bad!r} are not in the vocabulary (built from the "
                       f"training split); use data.tokenizer='byte' or a subword tokenizer for open text")
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids` (special ids are dropped)."""
    n = self.num_specials
    return "".join(self.chars[i - n] for i in np.asarray(ids).tolist() if n <= i < self.vocab_size)

  def to_json(self) -> dict:
    """Returns the JSON form of this tokenizer."""
    return {"tfm_tokenizer": "char", "specials": self.specials, "chars": self.chars}


# Names of the special tokens in familiar Hugging Face vocabularies (BERT, RoBERTa/BART, T5, GPT-2).
_ALIASES = {"pad": ("[PAD]", "<pad>", "<|endoftext|>"), "eos": ("[EOS]", "</s>", "[SEP]", "<|endoftext|>"),
            "mask": ("[MASK]", "<mask>")}


class HFTokenizer(_Base):
  """A Hugging Face `tokenizers.Tokenizer` (BPE, WordPiece or Unigram).

  Trained here, its special tokens come first ([PAD]=0, [EOS]=1, [MASK]=2, sentinels). Loaded from
  another tokenizer.json (e.g. a pretrained model's), pad / eos / mask are found by their usual names
  ([PAD] / <pad>, </s> / [SEP], [MASK] / <mask>; a vocabulary without a padding token pads with its
  end-of-sequence token; None where it has neither) unless `pad_id` / `eos_id` are given (a model's
  config.json), and the sentinels are its <extra_id_i> tokens. A tokenizer whose post-processor adds tokens (BERT's
  [CLS] a [SEP] b [SEP], RoBERTa's <s> a </s></s> b </s>) encodes pairs with that template.
  """

  kind = "subword"

  def __init__(self, tokenizer, specials: Sequence[str], *, pad_id: Optional[int] = None,
               eos_id: Optional[int] = None):
    self.tok = tokenizer
    self.specials = list(specials)
    ids = {}
    for role, names in _ALIASES.items():
      found = [tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None]
      ids[role] = found[0] if found else None
    eos = eos_id if eos_id is not None else ids["eos"]
    self._eos = eos
    self._pad = pad_id if pad_id is not None else (ids["pad"] if ids["pad"] is not None else eos)
    self._mask = ids["mask"] if ids["mask"] is not None else -1
    self._sentinels = np.array([tokenizer.token_to_id(f"<extra_id_{i}>") for i in range(1000)
                                if tokenizer.token_to_id(f"<extra_id_{i}>") is not None], np.int32)

  @property
  def pad_id(self) -> Optional[int]:
    """Returns the padding id (None if the vocabulary has neither a padding nor an end-of-sequence token)."""
    return self._pad

  @property
  def eos_id(self) -> Optional[int]:
    """Returns the end-of-sequence id (None if the vocabulary has none)."""
    return self._eos

  @property
  def mask_id(self) -> int:
    """Returns the mask id (-1 if the vocabulary has none)."""
    return self._mask

  @property
  def num_specials(self) -> int:
    """Returns the number of leading special ids (0 for a foreign vocabulary with specials elsewhere)."""
    n = 0
    while n < len(self.specials) and self.tok.token_to_id(self.specials[n]) == n:
      n += 1
    return n

  @property
  def has_template(self) -> bool:
    """Returns whether the tokenizer's post-processor adds special tokens (a pretrained model's template)."""
    return self.tok.num_special_tokens_to_add(False) > 0

  @classmethod
  def train(cls, texts: Sequence[str], kind: str, vocab_size: int, num_sentinels: int = 0) -> "HFTokenizer":
    """Returns a `kind` (bpe | wordpiece | unigram) tokenizer trained on `texts`.

    Reproducible: bpe and wordpiece give the same tokenizer.json on every run (wordpiece through
    `_train_wordpiece`). unigram does not: the `tokenizers` Unigram trainer's float sums follow the
    order of its hash maps, seeded anew in every process (RAYON_NUM_THREADS=1 does not help), so
    piece scores differ in the last digits and near-ties swap ids. A run keeps its tokenizer in
    WORKDIR/tokenizer.json and a resumed run reads it back, so only a fresh run trains again.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    specials = special_tokens(num_sentinels)
    if kind == "bpe":
      # Byte-level BPE (GPT-2 style): every string is representable, no unknown token needed.
      tok = Tokenizer(models.BPE())
      tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.decoder = decoders.ByteLevel()
      trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "wordpiece":
      return cls._train_wordpiece(texts, specials + ["[UNK]"], vocab_size)
    elif kind == "unigram":
      specials = specials + ["[UNK]"]
      tok = Tokenizer(models.Unigram())
      tok.pre_tokenizer = pre_tokenizers.Metaspace()
      tok.decoder = decoders.Metaspace()
      trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]")
    else:
      raise ValueError(f"unknown subword tokenizer kind {kind!r}; allowed: bpe, wordpiece, unigram")
    tok.train_from_iterator(texts, trainer=trainer)
    return cls(tok, specials)

  @classmethod
  def _train_wordpiece(cls, texts: Sequence[str], specials: list[str], vocab_size: int) -> "HFTokenizer":
    """Returns a WordPiece tokenizer trained on `texts`, the same vocabulary and ids on every run.

    The `tokenizers` WordPiece trainer numbers the continuation pieces "##c" in the order it meets
    them while walking its word counts, a hash map whose order changes with every process: the ids
    of "##c", then the merges it picks among pairs of equal count (ties go to the lower ids), and so
    the vocabulary changed from one run to the next. Here every "##c" that the words need is given
    to the trainer first, sorted, in the list of tokens it reserves, so every id is fixed; they are
    ordinary (not special) tokens of the tokenizer returned.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    pre = pre_tokenizers.BertPreTokenizer()
    continuation = set()  # characters that occur after the first of a word: the "##c" pieces
    for text in texts:
      for word, _ in pre.pre_tokenize_str(text):
        continuation.update(word[1:])
    pieces = [f"##{c}" for c in sorted(continuation)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    trainer = trainers.WordPieceTrainer(vocab_size=max(vocab_size, len(specials) + len(pieces)),
                                        special_tokens=specials + pieces, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # The same vocabulary, with only the real special tokens marked special.
    out = Tokenizer(models.WordPiece(vocab=tok.get_vocab(with_added_tokens=True), unk_token="[UNK]"))
    out.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    out.decoder = decoders.WordPiece()
    out.add_special_tokens(specials)
    return cls(out, specials)

  @property
  def vocab_size(self) -> int:
    """Returns the number of ids."""
    return self.tok.get_vocab_size(with_added_tokens=True)

  @property
  def sentinel_ids(self) -> np.ndarray:
    """Returns the ids of the span-corruption sentinels <extra_id_i>, in order."""
    return self._sentinels

  def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
    """Returns the int32 ids of `text` (with the template's special tokens when `add_special_tokens`)."""
    return np.asarray(self.tok.encode(text, add_special_tokens=add_special_tokens).ids, np.int32)

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[np.ndarray]:
    """Returns the int32 ids of each text (parallel in Rust)."""
    encs = self.tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    return [np.asarray(e.ids, np.int32) for e in encs]

  def encode_pairs(self, texts: Sequence[str], texts_b: Optional[Sequence[str]] = None):
    """Returns (ids, token types) of each example: the tokenizer's own template if it has one, else tfm's."""
    if not self.has_template:
      return super().encode_pairs(texts, texts_b)
    encs = self.tok.encode_batch(list(zip(texts, texts_b)) if texts_b else list(texts))
    return [np.asarray(e.ids, np.int32) for e in encs], [np.asarray(e.type_ids, np.int32) for e in encs]

  def decode(self, ids: Sequence[int]) -> str:
    """Returns the text of `ids` (special ids are dropped)."""
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def to_json(self) -> dict:
    """Returns the Hugging Face JSON form of this tokenizer."""
    return json.loads(self.tok.to_str())


def build_tokenizer(kind_or_path: str, texts: Sequence[str], *, vocab_size: int = 1024, num_sentinels: int = 0):
  """Returns a tokenizer: `byte`, `char` / `bpe` / `wordpiece` / `unigram` trained on texts, or a tokenizer.json path."""
  if kind_or_path == "byte":
    return ByteTokenizer(num_sentinels)
  if kind_or_path == "char":
    return CharTokenizer.train(texts, num_sentinels)
  if kind_or_path in ("bpe", "wordpiece", "unigram"):
    return HFTokenizer.train(texts, kind_or_path, vocab_size, num_sentinels)
  if kind_or_path.endswith(".json"):
    if not os.path.exists(kind_or_path):
      raise FileNotFoundError(f"data.tokenizer: file {kind_or_path!r} does not exist")
    return check_for_training(load_tokenizer(kind_or_path), f"data.tokenizer {kind_or_path!r}")
  raise ValueError(f"data.tokenizer must be one of {list(KINDS)} or a path to a tokenizer.json; got {kind_or_path!r}")


def check_for_training(tokenizer, what: str):
  """Returns `tokenizer` if it has the end-of-sequence and padding ids training needs; else ValueError naming `what`."""
  if tokenizer.eos_id is None or tokenizer.pad_id is None:
    raise ValueError(f"{what}: the tokenizer has no end-of-sequence token (looked for {list(_ALIASES['eos'])}), "
                     f"which training needs to separate documents and to pad")
  return tokenizer


def load_tokenizer(path: str):
  """Returns the tokenizer at `path`: a tokenizer.json (tfm byte / char or Hugging Face), a run or params
  directory (its tokenizer.json), or a Hugging Face model directory or hub id (tokenizer.json, vocab.txt or
  vocab.json + merges.txt; the eos / pad ids of its config.json win over the tokens' names)."""
  path = os.path.expanduser(str(path))
  if os.path.isfile(path):
    return _from_file(path)
  directory = resolve_directory(path)
  ids = _model_token_ids(directory)
  if os.path.isfile(os.path.join(directory, "tokenizer.json")):
    return _from_file(os.path.join(directory, "tokenizer.json"), **ids)
  return _wrap(read_tokenizer(directory), **ids)


def _from_file(path: str, **ids):
  """Returns the tokenizer of one tokenizer.json file (ours or a Hugging Face one)."""
  with open(path) as f:
    blob = json.load(f)
  kind = blob.get("tfm_tokenizer")
  nsent = sum(s.startswith("<extra_id_") for s in blob.get("specials", []))
  if kind == "byte":
    return ByteTokenizer(nsent)
  if kind == "char":
    return CharTokenizer(blob["chars"], nsent)
  return _wrap(Tokenizer.from_file(path), **ids)


def _wrap(tok, **ids) -> HFTokenizer:
  """Returns a `tokenizers.Tokenizer` as an HFTokenizer, its added tokens (in id order) as the specials."""
  added = sorted((i, t.content) for i, t in tok.get_added_tokens_decoder().items())
  return HFTokenizer(tok, [c for _, c in added], **ids)


def _model_token_ids(directory: str) -> dict:
  """Returns {"eos_id", "pad_id"} named by a Hugging Face model's config.json (empty for tfm directories)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    blob = json.load(f)
  if not isinstance(blob, dict) or not ("architectures" in blob or "model_type" in blob) or "model_config" in blob:
    return {}
  eos, pad = blob.get("eos_token_id"), blob.get("pad_token_id")
  eos = eos[0] if isinstance(eos, list) and eos else eos  # several end tokens (Llama 3): the first one
  return {k: v for k, v in (("eos_id", eos), ("pad_id", pad)) if isinstance(v, int)}


def save_tokenizer(tokenizer, path: str) -> str:
  """Writes `tokenizer` as JSON to `path` (atomically; several processes may write the same file); returns the path."""
  tmp = f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"  # one temporary per process of a multi-host run
  with open(tmp, "w") as f:
    json.dump(tokenizer.to_json(), f, ensure_ascii=False)
  os.replace(tmp, path)
  return path
