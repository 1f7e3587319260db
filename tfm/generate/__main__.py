"""Generate text from a trained run or an imported Hugging Face checkpoint.

    python -m tfm.generate --workdir runs/shakespeare --prompt "ROMEO:" --max-new-tokens 200
    python -m tfm.generate --workdir runs/shakespeare --prompt "ROMEO:" --temperature 0.8 --top-k 40
    python -m tfm.generate --from-hf ./gpt2 --prompt "Hello" --prompt "The meaning of" --num-beams 4

Strategy: beam search when --num-beams > 1, sampling when --temperature / --top-k / --top-p is
given, greedy otherwise. A run's workdir gives config.json, tokenizer.json and the best checkpoint
(`--checkpoint latest`: the newest of WORKDIR/checkpoints); an HF directory gives config.json, the
weights and its tokenizer. Generation stops at the tokenizer's EOS (--ignore-eos: never). With one
prompt on an interactive terminal (or --stream), tokens are printed as they are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import numpy as np

import tfm


class _Text:
  """encode / decode / eos / pad over a tfm tokenizer or a Hugging Face `tokenizers.Tokenizer`."""

  def __init__(self, tok, eos: Optional[int], pad: Optional[int]):
    self.tok, self.eos, self.pad = tok, eos, pad

  def encode(self, text: str) -> list:
    """Returns the token ids of `text`."""
    ids = self.tok.encode(text)
    return list(getattr(ids, "ids", ids))

  def decode(self, ids) -> str:
    """Returns the text of `ids`."""
    return self.tok.decode([int(i) for i in ids])


def load_run(workdir: str, checkpoint: str = "best"):
  """Returns (model, params, _Text) of a tfm training run's workdir."""
  from tfm.data.tokenizers import load_tokenizer
  from tfm.train.checkpoint import run_model_config, run_params
  config = run_model_config(workdir)
  tok_path = os.path.join(workdir, "tokenizer.json")
  if not os.path.isfile(tok_path):
    raise FileNotFoundError(f"--workdir {workdir!r} has no tokenizer.json")
  tok = load_tokenizer(tok_path)
  params, _ = run_params(workdir, checkpoint)
  return tfm.build(config), params, _Text(tok, tok.eos_id, tok.pad_id)


def load_hf(directory: str):
  """Returns (model, params, _Text) of a Hugging Face model directory."""
  config, params = tfm.from_pretrained(directory)
  with open(os.path.join(directory, "config.json")) as f:
    hf = json.load(f)
  eos = hf.get("eos_token_id")
  eos = eos[0] if isinstance(eos, list) else eos
  pad = hf.get("pad_token_id")
  return tfm.build(config), params, _Text(tfm.load_tokenizer(directory), eos, config.pad_token_id if pad is None else pad)


def _batch(prompts: list, text: _Text):
  """Returns (ids, mask) [n, longest] right-padded (tfm.generate accepts any padding)."""
  encoded = [text.encode(p) for p in prompts]
  empty = [p for p, e in zip(prompts, encoded) if not e]
  if empty:
    raise ValueError(f"--prompt {empty[0]!r} encodes to no tokens")
  n, longest = len(encoded), max(map(len, encoded))
  ids = np.zeros((n, longest), np.int32)
  mask = np.zeros((n, longest), np.int32)
  for i, e in enumerate(encoded):
    ids[i, :len(e)], mask[i, :len(e)] = e, 1
  return ids, mask


class _Streamer:
  """Prints the decoded text of one sequence as its tokens arrive (host callback of tfm.generate)."""

  def __init__(self, text: _Text):
    self.text, self.ids, self.shown, self.ended = text, [], "", False

  def __call__(self, step, tokens):
    tok = int(np.asarray(tokens)[0])
    if self.ended or (self.text.eos is not None and tok == self.text.eos):
      self.ended = True  # EOS, then padding: nothing more to show
      return
    self.ids.append(tok)
    now = self.text.decode(self.ids)  # decode the whole run: multi-byte tokens print once complete
    sys.stdout.write(now[len(self.shown):])
    sys.stdout.flush()
    self.shown = now


def _cut(ids, eos):
  """Returns ids up to (not including) the first EOS."""
  ids = [int(i) for i in ids]
  return ids[:ids.index(eos)] if eos is not None and eos in ids else ids


def main(argv: Optional[list] = None) -> int:
  """Runs the command line; returns the exit code."""
  ap = argparse.ArgumentParser(prog="python -m tfm.generate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a tfm training run (config.json, tokenizer.json, checkpoints)")
  src.add_argument("--from-hf", help="a Hugging Face model directory (config.json, weights, tokenizer)")
  ap.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
  ap.add_argument("--checkpoint", default="best", choices=("best", "latest"), help="which checkpoint of --workdir")
  ap.add_argument("--max-new-tokens", type=int, default=100)
  ap.add_argument("--temperature", type=float, default=None, help="sample with this temperature")
  ap.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
  ap.add_argument("--top-p", type=float, default=None, help="sample from the top-p probability mass")
  ap.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (> 1)")
  ap.add_argument("--length-penalty", type=float, default=1.0, help="beam score = logprob / length ** this")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
  ap.add_argument("--stream", action="store_true", help="print tokens as they come (default: on a terminal)")
  args = ap.parse_args(argv)

  model, params, text = load_run(args.workdir, args.checkpoint) if args.workdir else load_hf(args.from_hf)
  eos = None if args.ignore_eos else text.eos
  kw = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=text.pad, seed=args.seed)
  if args.num_beams > 1:
    kw.update(strategy="beam", num_beams=args.num_beams, length_penalty=args.length_penalty)
  elif any(v is not None for v in (args.temperature, args.top_k, args.top_p)):
    kw.update(strategy="sample", temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  ids, mask = _batch(args.prompt, text)
  decoder_only = model.config.family == "decoder"
  stream = (args.stream or sys.stdout.isatty()) and len(args.prompt) == 1 and args.num_beams == 1
  if stream:
    kw["callback"] = _Streamer(text)
    if decoder_only:
      sys.stdout.write(args.prompt[0])
  out = np.asarray(tfm.generate(model, params, ids, attention_mask=mask, **kw))
  if stream:
    sys.stdout.write("\n")
    return 0
  for prompt, row in zip(args.prompt, out):
    new = text.decode(_cut(row, eos))
    print((prompt + new) if decoder_only else new)
    if len(args.prompt) > 1:
      print("-" * 40)
  return 0


if __name__ == "__main__":
  sys.exit(main())
