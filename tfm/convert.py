"""Convert between Hugging Face model directories and tfm params directories.

  python -m tfm.convert --from-hf HF_DIR_OR_HUB_ID --out PARAMS_DIR   # HF -> orbax {"params"} + config.json
  python -m tfm.convert --to-hf MODEL_DIR --out HF_DIR [--architecture LlamaForCausalLM]

--to-hf reads any model tfm.checkpoint.resolve_model accepts: a training run (what train.py writes;
--checkpoint picks its newest or best checkpoint), a params directory, or a Hugging Face directory.
Nothing is written to --out unless the conversion succeeds. Tokenizer files (tokenizer.json,
vocab.txt, vocab.json + merges.txt, tokenizer_config.json) are copied along in both directions.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from tfm.checkpoint import resolve_model, save_params
from tfm.errors import ArgumentParser, UserError, run_cli
from tfm.hf.api import from_pretrained, resolve_directory, save_pretrained, tokenizer_files
from tfm.models import count_params


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the conversion the flags ask for; returns the process exit code (2 with one line for bad input)."""
  return run_cli(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the conversion the flags ask for; returns the process exit code."""
  parser = ArgumentParser(prog="python -m tfm.convert", description=__doc__.split("\n\n")[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--from-hf", metavar="DIR", help="Hugging Face model directory (or hub id) to import")
  src.add_argument("--to-hf", metavar="MODEL_DIR", help="tfm run or params directory to export")
  parser.add_argument("--out", required=True, help="output directory (must not exist or be empty for --from-hf)")
  parser.add_argument("--architecture", default=None,
                      help="HF class name, e.g. BertModel (import: overrides config.json; export: default inferred)")
  parser.add_argument("--scan-layers", action="store_true",
                      help="import: stack the layers for a scan_layers=True model config")
  parser.add_argument("--checkpoint", default="latest", choices=("latest", "best"),
                      help="export of a training run: its newest (default) or its best checkpoint")
  args = parser.parse_args(argv)
  try:
    if args.from_hf:
      directory = resolve_directory(args.from_hf)
      overrides = {"scan_layers": True} if args.scan_layers else {}
      config, params = from_pretrained(directory, architecture=args.architecture, **overrides)
      out = save_params(params, config, args.out, extra_files=tokenizer_files(directory))
    else:
      model = resolve_model(args.to_hf, args.checkpoint)
      config, params = model.config, model.params
      files = tokenizer_files(model.directory)
      out = save_pretrained(config, params, args.out, architecture=args.architecture, extra_files=files)
      if model.tokenizer is not None and not files:
        print(f"note: the {model.tokenizer.kind} tokenizer of {args.to_hf} has no Hugging Face form; not copied",
              file=sys.stderr)
  except UserError:
    raise
  except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as e:
    # what reading or writing the given directories finds wrong (a field, a tensor, a path) names it
    raise UserError(str(e)) from e
  print(f"wrote {out} ({config.family}, {count_params(params):,} parameters)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
