"""Tokenizers: byte-level, character-level and subword (BPE / WordPiece / Unigram via HF `tokenizers`).

Every tokenizer has the same small surface: `encode(text) -> int32 ids`, `decode(ids) -> str`,
`vocab_size`, the special ids `pad_id`, `eos_id`, `mask_id` and `sentinel_ids` (T5 span
corruption), and `save(path)`. Special tokens come first: [PAD]=0, [EOS]=1, [MASK]=2, then the
sentinels <extra_id_0>... A run saves its tokenizer as `WORKDIR/tokenizer.json`; `load_tokenizer`
reads that file back (our byte/char format or any Hugging Face `tokenizer.json`).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

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


class ByteTokenizer(_Base):
  """UTF-8 bytes shifted past the special ids: vocab = specials + 256."""

  kind = "byte"

  def __init__(self, num_sentinels: int = 0):
    self.specials = special_tokens(num_sentinels)

  @property
  def vocab_size(self) -> int:
    """Returns the number of ids."""
    return self.num_specials + 256

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`'s UTF-8 bytes."""
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

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`; raises ValueError on a character outside the vocabulary."""
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
  ([PAD] / <pad>, </s> / [SEP], [MASK] / <mask>) and the sentinels are its <extra_id_i> tokens.
  """

  kind = "subword"

  def __init__(self, tokenizer, specials: Sequence[str]):
    self.tok = tokenizer
    self.specials = list(specials)
    ids = {}
    for role, names in _ALIASES.items():
      found = [tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None]
      ids[role] = found[0] if found else None
    if ids["pad"] is None or ids["eos"] is None:
      raise ValueError(f"tokenizer.json has no padding or end-of-sequence token (looked for {_ALIASES['pad']} and "
                       f"{_ALIASES['eos']})")
    self._pad, self._eos = ids["pad"], ids["eos"]
    self._mask = ids["mask"] if ids["mask"] is not None else -1
    self._sentinels = np.array([tokenizer.token_to_id(f"<extra_id_{i}>") for i in range(1000)
                                if tokenizer.token_to_id(f"<extra_id_{i}>") is not None], np.int32)

  @property
  def pad_id(self) -> int:
    """Returns the padding id."""
    return self._pad

  @property
  def eos_id(self) -> int:
    """Returns the end-of-sequence id."""
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

  @classmethod
  def train(cls, texts: Sequence[str], kind: str, vocab_size: int, num_sentinels: int = 0) -> "HFTokenizer":
    """Returns a `kind` (bpe | wordpiece | unigram) tokenizer trained on `texts`."""
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
      specials = specials + ["[UNK]"]
      tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
      tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
      tok.decoder = decoders.WordPiece()
      trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
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

  @property
  def vocab_size(self) -> int:
    """Returns the number of ids."""
    return self.tok.get_vocab_size(with_added_tokens=True)

  @property
  def sentinel_ids(self) -> np.ndarray:
    """Returns the ids of the span-corruption sentinels <extra_id_i>, in order."""
    return self._sentinels

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`."""
    return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Returns the ids of each text (parallel in Rust)."""
    return [np.asarray(e.ids, np.int32) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

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
    return load_tokenizer(kind_or_path)
  raise ValueError(f"data.tokenizer must be one of {list(KINDS)} or a path to a tokenizer.json; got {kind_or_path!r}")


def load_tokenizer(path: str):
  """Returns the tokenizer saved at `path` (our byte/char JSON or a Hugging Face tokenizer.json)."""
  with open(path) as f:
    blob = json.load(f)
  kind = blob.get("tfm_tokenizer")
  nsent = sum(s.startswith("<extra_id_") for s in blob.get("specials", []))
  if kind == "byte":
    return ByteTokenizer(nsent)
  if kind == "char":
    return CharTokenizer(blob["chars"], nsent)
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(path)
  added = sorted((i, t.content) for i, t in tok.get_added_tokens_decoder().items())
  return HFTokenizer(tok, [c for _, c in added])


def save_tokenizer(tokenizer, path: str) -> str:
  """Writes `tokenizer` as JSON to `path`; returns the path."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(tokenizer.to_json(), f, ensure_ascii=False)
  os.replace(tmp, path)
  return path
