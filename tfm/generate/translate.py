"""Translating text with an encoder-decoder: batched beam search (or greedy) over source strings.

- `translate(model, params, tokenizer, sources, settings)`: the translations of source texts, decoded
  in batches of similar length with `tfm.generate`; also `tfm.translate`.
- `DecodeSettings` / `decode_settings(config)`: beams, length penalty and lengths, from a training
  config's train.decode_* fields; `run_decode_settings(dir)`: those of a run's eval.
- `translate_file(...)`: `python -m tfm.generate --workdir RUN --input FILE --output FILE`, one source
  per line, with the decoding settings of the run's eval.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from tfm.generate.loop import generate

LENGTH_STEP = 16  # sources are padded to a multiple of this: few distinct shapes, one compiled decoder each


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How sources are translated: the train.decode_* fields of a config plus the encoder length."""

  num_beams: int = 1            # 1: greedy
  length_penalty: float = 1.0   # beam score = sum of log-probabilities / length ** length_penalty
  max_new_tokens: int = 128     # longest translation (tokens, [EOS] included)
  batch_size: int = 64          # sources decoded together
  seq_len: int = 128            # longest source in tokens ([EOS] included); longer ones are cut (counted)
  input_prefix: str = ""        # put before every source (data.input_prefix, e.g. "translate English to German: ")


def decode_settings(config) -> DecodeSettings:
  """Returns the DecodeSettings of training config `config` (train.decode_*, data.seq_len / target_len)."""
  t = config.train
  return DecodeSettings(num_beams=int(t.decode_num_beams), length_penalty=float(t.decode_length_penalty),
                        max_new_tokens=int(t.decode_max_new_tokens or config.data.target_len),
                        batch_size=int(t.decode_batch_size), seq_len=int(config.data.seq_len),
                        input_prefix=str(config.data.get("input_prefix", "")))


def encode_sources(tokenizer, sources: Sequence[str], seq_len: int) -> tuple[list, int]:
  """Returns (the ids of every source followed by [EOS], as in training pairs, cut to seq_len; how many were cut)."""
  from tfm.data.pipeline import encode_all
  eos = np.array([tokenizer.eos_id], np.int32)
  rows = [np.concatenate([ids.astype(np.int32), eos]) for ids in encode_all(tokenizer, list(sources))]
  cut = sum(len(r) > seq_len for r in rows)
  return [r[:seq_len] for r in rows], cut


def translate(model, params, tokenizer, sources: Sequence[str], settings: DecodeSettings = DecodeSettings(), *,
              strategy: Optional[str] = None, log=None) -> list[str]:
  """Returns the translation of every source text (in order), decoded with `settings`.

  Sources are sorted by length and decoded `settings.batch_size` at a time, right-padded to a
  multiple of LENGTH_STEP (the last batch filled up with copies), so each evaluation reuses the
  few compiled decoders of earlier ones. `strategy` None: beam search when num_beams > 1, else
  greedy; "beam" with num_beams=1 gives the greedy translations too (early stopping at the first
  finished hypothesis). Decoding stops at the tokenizer's [EOS]. `settings.input_prefix` is put
  before every source, as in training.
  """
  import tfm
  rows, cut = encode_sources(tokenizer, [settings.input_prefix + s for s in sources], settings.seq_len)
  if cut and log is not None:
    log(f"NOTE: {cut} of {len(rows)} sources are longer than {settings.seq_len} tokens and were cut to decode them")
  strategy = strategy or ("beam" if settings.num_beams > 1 else "greedy")
  kw = dict(max_new_tokens=settings.max_new_tokens, strategy=strategy, eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id)
  if strategy == "beam":
    kw.update(num_beams=settings.num_beams, length_penalty=settings.length_penalty, early_stopping=True)
  order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
  out: list = [None] * len(rows)
  b = settings.batch_size
  for start in range(0, len(order), b):
    chunk = order[start:start + b]
    fill = chunk + [chunk[0]] * (b - len(chunk)) if len(order) > b else chunk  # one batch shape for every chunk
    width = min(settings.seq_len, -(-max(len(rows[i]) for i in fill) // LENGTH_STEP) * LENGTH_STEP)
    ids = np.full((len(fill), width), tokenizer.pad_id, np.int32)  # [batch, src_len]
    mask = np.zeros((len(fill), width), np.int32)
    for j, i in enumerate(fill):
      ids[j, :len(rows[i])], mask[j, :len(rows[i])] = rows[i], 1
    gen = np.asarray(generate(model, params, ids, attention_mask=mask, **kw))  # [batch, max_new_tokens]
    for j, i in enumerate(chunk):
      row = gen[j].tolist()
      if tokenizer.eos_id in row:
        row = row[:row.index(tokenizer.eos_id)]
      out[i] = tokenizer.decode(row)
  return out


def run_decode_settings(model_dir: str, config=None) -> DecodeSettings:
  """Returns the eval decoding settings of the run in `model_dir` (its config.json), or the defaults for any other model."""
  import json
  path = os.path.join(os.path.abspath(os.path.expanduser(model_dir)), "config.json")
  train = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      train = json.load(f).get("config")
  if not (isinstance(train, dict) and "decode_num_beams" in train.get("train", {}) and "data" in train):
    return DecodeSettings() if config is None else decode_settings(config)
  t, d = train["train"], train["data"]
  return DecodeSettings(num_beams=int(t["decode_num_beams"]), length_penalty=float(t["decode_length_penalty"]),
                        max_new_tokens=int(t["decode_max_new_tokens"] or d["target_len"]),
                        batch_size=int(t["decode_batch_size"]), seq_len=int(d["seq_len"]),
                        input_prefix=str(d.get("input_prefix", "")))


def read_sources(path: str) -> list[str]:
  """Returns the lines of UTF-8 file `path` without their line ends; a line that is not UTF-8 is a UserError naming it."""
  from tfm.errors import UserError, UserFileNotFoundError
  if not os.path.isfile(path):
    raise UserFileNotFoundError(f"--input {path}: no such file")
  out = []
  with open(path, "rb") as f:
    for no, raw in enumerate(f, start=1):
      try:
        out.append(raw.decode("utf-8").rstrip("\r\n"))
      except UnicodeDecodeError as e:
        raise UserError(f"--input {path}, line {no}: not UTF-8 (byte {e.start} of the line: {raw[e.start:e.start + 1]!r})")
  return out


def translate_file(model, params, tokenizer, model_dir: str, input_path: str, output_path: Optional[str],
                   overrides: Optional[dict] = None) -> int:
  """Translates every line of `input_path` into a line of `output_path` (stdout when None); returns exit code 0.

  The decoding settings are those of the run's eval (`run_decode_settings`), with `overrides`
  (num_beams, length_penalty, max_new_tokens, input_prefix) replacing them. Empty lines stay empty.
  """
  import sys
  settings = dataclasses.replace(run_decode_settings(model_dir), **(overrides or {}))
  lines = read_sources(input_path)
  real = [i for i, s in enumerate(lines) if s.strip()]
  out = [""] * len(lines)
  for i, hyp in zip(real, translate(model, params, tokenizer, [lines[i] for i in real], settings,
                                    log=lambda m: print(m, file=sys.stderr))):
    out[i] = hyp.replace("\n", " ")
  text = "".join(line + "\n" for line in out)
  if output_path:
    with open(output_path, "w", encoding="utf-8") as f:
      f.write(text)
  else:
    sys.stdout.write(text)
  return 0
