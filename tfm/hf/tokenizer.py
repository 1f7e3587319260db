"""The tokenizer files of a Hugging Face model directory read as a `tokenizers.Tokenizer`.

`tfm.load_tokenizer` (tfm/data/tokenizers.py) is the one loader; it reads tokenizer.json itself
and asks `read_tokenizer` for the older layouts. Read in this order: tokenizer.json (the full
pipeline, as saved by any fast tokenizer); vocab.txt (BERT WordPiece: BERT normaliser and pre-tokeniser, [CLS] A [SEP] template);
vocab.json + merges.txt (byte-level BPE: GPT-2 adds no special tokens; RoBERTa / BART add
<s> A </s>). tokenizer_config.json supplies do_lower_case, special tokens and the class name.
"""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _token(cfg: dict, name: str, default: str) -> str:
  value = cfg.get(name, default)
  return value.get("content", default) if isinstance(value, dict) else (value or default)


def _special_id(tok: Tokenizer, token: str, path: str) -> int:
  token_id = tok.token_to_id(token)
  if token_id is None:
    raise ValueError(f"{path}: special token {token!r} is not in the vocabulary")
  return token_id


def _wordpiece(directory: str, cfg: dict) -> Tokenizer:
  vocab = os.path.join(directory, "vocab.txt")
  unk, cls, sep = _token(cfg, "unk_token", "[UNK]"), _token(cfg, "cls_token", "[CLS]"), _token(cfg, "sep_token", "[SEP]")
  tok = Tokenizer(models.WordPiece.from_file(vocab, unk_token=unk))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
      strip_accents=cfg.get("strip_accents"), lowercase=cfg.get("do_lower_case", True))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  ids = {t: _special_id(tok, t, vocab) for t in (cls, sep)}
  tok.post_processor = processors.TemplateProcessing(
      single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1", special_tokens=list(ids.items()))
  for t in (unk, cls, sep, _token(cfg, "pad_token", "[PAD]"), _token(cfg, "mask_token", "[MASK]")):
    if tok.token_to_id(t) is not None:
      tok.add_special_tokens([t])
  return tok


def _byte_bpe(directory: str, cfg: dict) -> Tokenizer:
  vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
  tok = Tokenizer(models.BPE.from_file(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="",
                                       fuse_unk=False))
  prefix_space = bool(cfg.get("add_prefix_space", False))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
  tok.decoder = decoders.ByteLevel()
  cls_name = cfg.get("tokenizer_class", "")
  if any(name in cls_name for name in ("Roberta", "Bart")):
    bos, eos = _token(cfg, "bos_token", "<s>"), _token(cfg, "eos_token", "</s>")
    tok.post_processor = processors.RobertaProcessing((eos, _special_id(tok, eos, vocab)),
                                                      (bos, _special_id(tok, bos, vocab)),
                                                      add_prefix_space=prefix_space)
    specials = [bos, eos, _token(cfg, "unk_token", "<unk>"), _token(cfg, "pad_token", "<pad>"),
                _token(cfg, "mask_token", "<mask>")]
  else:
    specials = [_token(cfg, "eos_token", "<|endoftext|>")]
  tok.add_special_tokens([t for t in specials if tok.token_to_id(t) is not None])
  return tok


def read_tokenizer(directory: str) -> Tokenizer:
  """Returns the tokenizer of a local model directory as a tokenizers.Tokenizer; FileNotFoundError if it has none."""
  cfg = _read_json(os.path.join(directory, "tokenizer_config.json"))
  if os.path.isfile(os.path.join(directory, "tokenizer.json")):
    return Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  if os.path.isfile(os.path.join(directory, "vocab.txt")):
    return _wordpiece(directory, cfg)
  if all(os.path.isfile(os.path.join(directory, n)) for n in ("vocab.json", "merges.txt")):
    return _byte_bpe(directory, cfg)
  found = sorted(os.listdir(directory))
  extra = (" SentencePiece models (spiece.model / tokenizer.model) are read only through a tokenizer.json "
           "(save one with transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))."
           if any(n.endswith(".model") for n in found) else "")
  raise FileNotFoundError(f"no tokenizer in {directory}: expected tokenizer.json, vocab.txt, or vocab.json + "
                          f"merges.txt (found: {found}).{extra}")
