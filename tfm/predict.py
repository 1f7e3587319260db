"""Predict labels of new texts with a trained classifier.

    python -m tfm.predict --workdir runs/sst2 --input texts.txt            # one text per line
    python -m tfm.predict --workdir runs/sst2 --input reviews.csv --output preds.csv

Reads the run with tfm.checkpoint.resolve_model (WORKDIR/config.json, tokenizer.json and the best
checkpoint, WORKDIR/best; the newest of WORKDIR/checkpoints with --checkpoint latest) and its
labels.json. Input: a .txt file (one text per line) or
a CSV / TSV / JSONL file with the run's text column (and second text column for pair tasks).
Output (JSONL, or CSV when --output ends in .csv): the text, the predicted label and the
probability of every label.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import jax
import numpy as np

import tfm
from tfm.checkpoint import resolve_model
from tfm.data import sources
from tfm.data.pipeline import encode_examples
from tfm.errors import ArgumentParser, UserError, UserFileNotFoundError, run_cli
from tfm.train.objectives import classify_logits


def _read_inputs(path: str, text_column: str, text_b_column: str):
  """Returns (texts, second texts or None) of a .txt / .csv / .tsv / .jsonl file."""
  if not os.path.exists(path):
    raise UserFileNotFoundError(f"--input {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".csv", ".tsv", ".jsonl", ".json"):
    fmt = {".json": "jsonl"}.get(ext, ext[1:])
    fields = [text_column] + ([text_b_column] if text_b_column else [])
    rows = list(sources.read_records(path, fmt, fields))
    texts, texts_b = [r[text_column] for r in rows], ([r[text_b_column] for r in rows] if text_b_column else None)
  else:
    texts, texts_b = [line for line in sources.read_text(path).splitlines() if line.strip()], None
  if not texts:
    raise UserError(f"--input {path!r} has no texts")
  return texts, texts_b


def _labels(workdir: str) -> dict:
  """Returns the run's labels.json (label names, text columns, seq_len)."""
  path = os.path.join(workdir, "labels.json")
  if not os.path.isfile(path):
    raise UserFileNotFoundError(f"{path} not found: --workdir must be a classification run (what train.py writes)")
  with open(path) as f:
    return json.load(f)


def predict(workdir: str, texts, texts_b=None, *, checkpoint: str = "best", batch_size: int = 64):
  """Returns (label names, [n, num_labels] probabilities) of the texts under the run in `workdir`."""
  meta = _labels(workdir)
  run = resolve_model(workdir, checkpoint)
  if not run.config.num_labels:
    raise UserError(f"{workdir} is not a classification run (its model has no num_labels)")
  if run.tokenizer is None:
    raise UserFileNotFoundError(f"{workdir} has no tokenizer.json")
  model, params = tfm.build(run.config), run.params
  inputs, _, _ = encode_examples(run.tokenizer, texts, texts_b, int(meta["seq_len"]))
  fwd = jax.jit(lambda p, b: jax.nn.softmax(classify_logits(model, p, b).astype(np.float32), -1))
  n = len(texts)
  probs = []
  for i in range(0, n, batch_size):
    idx = np.arange(i, i + batch_size) % n  # fixed batch shape: one compilation
    probs.append(np.asarray(fwd(params, {k: v[idx] for k, v in inputs.items()}))[: min(batch_size, n - i)])
  return meta["labels"], np.concatenate(probs)


def main(argv=None) -> int:
  """Runs the command line; returns the exit code (2 with one line `error: ...` for bad input)."""
  return run_cli(_main, argv)


def _main(argv=None) -> int:
  """Runs the command line; returns the exit code."""
  ap = ArgumentParser(prog="python -m tfm.predict", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", required=True, help="the classification run's workdir")
  ap.add_argument("--input", required=True, help=".txt (one text per line) or .csv / .tsv / .jsonl")
  ap.add_argument("--output", default="", help="output path (.jsonl or .csv); default INPUT.predictions.jsonl")
  ap.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  ap.add_argument("--batch-size", type=int, default=64)
  args = ap.parse_args(argv)
  meta = _labels(args.workdir)
  texts, texts_b = _read_inputs(args.input, meta.get("text_key", "text"), meta.get("text_pair_key", ""))
  names, probs = predict(args.workdir, texts, texts_b, checkpoint=args.checkpoint, batch_size=args.batch_size)
  out = args.output or os.path.splitext(args.input)[0] + ".predictions.jsonl"
  rows = [{"text": t, "label": names[int(np.argmax(p))], **{f"p_{n}": float(x) for n, x in zip(names, p)}}
          for t, p in zip(texts, probs)]
  tmp = out + ".tmp"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    if out.endswith(".csv"):
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
    else:
      for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, out)
  print(f"wrote {len(rows)} predictions to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
