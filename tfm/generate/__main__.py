"""Generate text from a trained run, a params directory or a Hugging Face model.

    python -m tfm.generate --model runs/shakespeare --prompt "ROMEO:" --max-new-tokens 200
    python -m tfm.generate --model runs/shakespeare --prompt "ROMEO:" --temperature 0.8 --top-k 40
    python -m tfm.generate --model ./gpt2 --prompt "Hello" --prompt "The meaning of" --num-beams 4
    python -m tfm.generate --workdir runs/en_de --input sources.txt --output translations.txt

--model (also spelt --workdir or --from-hf) is anything tfm.checkpoint.resolve_model reads: a run's
workdir (config.json, tokenizer.json and the best checkpoint; `--checkpoint latest`: the newest of
WORKDIR/checkpoints), a params directory, or a Hugging Face directory (config.json, weights, tokenizer).
Strategy: beam search when --num-beams > 1, sampling when --temperature / --top-k / --top-p is
given, greedy otherwise. Prompts are encoded with the tokenizer's template (a pretrained model's
BOS, say). Generation stops at the tokenizer's EOS (--ignore-eos: never). With one prompt on an
interactive terminal (or --stream), tokens are printed as they are generated.
--input FILE translates a file (one source per line, batched; an encoder-decoder run) with the decoding
settings of the run's eval (train.decode_num_beams, ...; --num-beams etc. given here win), one line out per line in.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

import tfm
from tfm.checkpoint import resolve_model
from tfm.errors import ArgumentParser, UserError, run_cli


def _batch(prompts: list, tokenizer):
  """Returns (ids, mask) [n, longest] right-padded (tfm.generate accepts any padding)."""
  encoded = [tokenizer.encode(p, add_special_tokens=True).tolist() for p in prompts]
  empty = [p for p, e in zip(prompts, encoded) if not e]
  if empty:
    raise UserError(f"--prompt {empty[0]!r} encodes to no tokens; give a prompt with text")
  n, longest = len(encoded), max(map(len, encoded))
  ids = np.zeros((n, longest), np.int32)
  mask = np.zeros((n, longest), np.int32)
  for i, e in enumerate(encoded):
    ids[i, :len(e)], mask[i, :len(e)] = e, 1
  return ids, mask


class _Streamer:
  """Prints the decoded text of one sequence as its tokens arrive (host callback of tfm.generate)."""

  def __init__(self, tokenizer, eos):
    self.tokenizer, self.eos, self.ids, self.shown, self.ended = tokenizer, eos, [], "", False

  def __call__(self, step, tokens):
    tok = int(np.asarray(tokens)[0])
    if self.ended or (self.eos is not None and tok == self.eos):
      self.ended = True  # EOS, then padding: nothing more to show
      return
    self.ids.append(tok)
    now = self.tokenizer.decode(self.ids)  # decode the whole run: multi-byte tokens print once complete
    sys.stdout.write(now[len(self.shown):])
    sys.stdout.flush()
    self.shown = now


def _cut(ids, eos):
  """Returns ids up to (not including) the first EOS."""
  ids = [int(i) for i in ids]
  return ids[:ids.index(eos)] if eos is not None and eos in ids else ids


def _check_length(config, prompts: list, lengths, max_new_tokens: int) -> None:
  """Raises UserError naming the prompt when a prompt and its new tokens do not fit the model's positions."""
  if max_new_tokens < 1:
    raise UserError(f"--max-new-tokens must be a positive integer; got {max_new_tokens}")
  if config.position != "learned":
    return  # rope, relative, alibi, sinusoidal, none: no table of positions to run past
  if config.family == "encoder_decoder":
    if max_new_tokens > config.max_len:
      raise UserError(f"--max-new-tokens {max_new_tokens} exceeds the model's context of {config.max_len} "
                      f"(max_len, learned positions); use --max-new-tokens {config.max_len} or fewer")
    return
  room = config.max_len - max_new_tokens + 1
  for prompt, n in zip(prompts, lengths):
    n = int(n)
    if n > room:
      raise UserError(f"--prompt {prompt[:40]!r}{'...' if len(prompt) > 40 else ''} is {n} tokens; with "
                      f"--max-new-tokens {max_new_tokens} it exceeds the model's context of {config.max_len} "
                      f"tokens (max_len, learned positions): use a prompt of at most {room} tokens or fewer new "
                      f"tokens")


def main(argv: Optional[list] = None) -> int:
  """Runs the command line; returns the exit code (2 with one line `error: ...` for bad input)."""
  return run_cli(_main, argv)


def _main(argv: Optional[list] = None) -> int:
  """Runs the command line; returns the exit code."""
  ap = ArgumentParser(prog="python -m tfm.generate", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", "--workdir", "--from-hf", dest="model", required=True,
                  help="a tfm run or params directory, or a Hugging Face model directory or hub id")
  ap.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
  ap.add_argument("--input", help="translate a file: one source per line (the run's eval decoding settings)")
  ap.add_argument("--output", help="with --input: where the translations go, one per line (default: stdout)")
  ap.add_argument("--input-prefix", help="with --input: text put before every source (default: the run's "
                  "data.input_prefix), e.g. 'translate English to German: ' for a T5 checkpoint")
  ap.add_argument("--checkpoint", default="best", choices=("best", "latest"), help="which checkpoint of a run")
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

  try:
    source = resolve_model(args.model, args.checkpoint)
  except UserError:
    raise
  except (ValueError, FileNotFoundError, NotADirectoryError) as e:  # what is wrong with the directory, named
    raise UserError(str(e)) from e
  tokenizer = source.tokenizer
  if tokenizer is None:
    raise UserError(f"--model {args.model} has no tokenizer (tokenizer.json, vocab.txt or vocab.json + merges.txt)")
  model, params = tfm.build(source.config), source.params
  if args.input:  # a file, batched, with the decoding settings of the run's eval (flags given here win)
    from tfm.generate.translate import translate_file
    given = {a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    flags = {"--num-beams": "num_beams", "--length-penalty": "length_penalty", "--max-new-tokens": "max_new_tokens",
             "--input-prefix": "input_prefix"}
    return translate_file(model, params, tokenizer, args.model, args.input, args.output,
                          {field: getattr(args, field) for flag, field in flags.items() if flag in given})
  if not args.prompt:
    raise UserError("give --prompt TEXT (repeat for a batch) or --input FILE")
  eos = None if args.ignore_eos else tokenizer.eos_id
  kw = dict(max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_id, seed=args.seed)
  if args.num_beams > 1:
    kw.update(strategy="beam", num_beams=args.num_beams, length_penalty=args.length_penalty)
  elif any(v is not None for v in (args.temperature, args.top_k, args.top_p)):
    kw.update(strategy="sample", temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  ids, mask = _batch(args.prompt, tokenizer)
  _check_length(source.config, args.prompt, mask.sum(1), args.max_new_tokens)
  decoder_only = model.config.family == "decoder"
  stream = (args.stream or sys.stdout.isatty()) and len(args.prompt) == 1 and args.num_beams == 1
  if stream:
    kw["callback"] = _Streamer(tokenizer, eos)
    if decoder_only:
      sys.stdout.write(args.prompt[0])
  out = np.asarray(tfm.generate(model, params, ids, attention_mask=mask, **kw))
  if stream:
    sys.stdout.write("\n")
    return 0
  for prompt, row in zip(args.prompt, out):
    new = tokenizer.decode(_cut(row, eos))
    print((prompt + new) if decoder_only else new)
    if len(args.prompt) > 1:
      print("-" * 40)
  return 0


if __name__ == "__main__":
  sys.exit(main())
