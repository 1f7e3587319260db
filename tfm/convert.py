"""Convert between Hugging Face model directories and tfm params checkpoints.

  python -m tfm.convert --from-hf HF_DIR_OR_HUB_ID --out CKPT_DIR   # HF -> orbax {"params"} + config.json
  python -m tfm.convert --to-hf CKPT_DIR --out HF_DIR [--architecture LlamaForCausalLM]

Nothing is written to --out unless the conversion succeeds. Tokenizer files (tokenizer.json,
vocab.txt, vocab.json + merges.txt, tokenizer_config.json) are copied along in both directions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tfm.hf.api import from_pretrained, resolve_directory, save_pretrained, tokenizer_files
from tfm.hf.checkpoint import load_params, save_params
from tfm.models import count_params


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the conversion the flags ask for; returns the process exit code."""
  parser = argparse.ArgumentParser(prog="python -m tfm.convert", description=__doc__.split("\n\n")[0])
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--from-hf", metavar="DIR", help="Hugging Face model directory (or hub id) to import")
  src.add_argument("--to-hf", metavar="CKPT_DIR", help="tfm params checkpoint to export")
  parser.add_argument("--out", required=True, help="output directory (must not exist or be empty for --from-hf)")
  parser.add_argument("--architecture", default=None,
                      help="HF class name, e.g. BertModel (import: overrides config.json; export: default inferred)")
  parser.add_argument("--scan-layers", action="store_true",
                      help="import: stack the layers for a scan_layers=True model config")
  args = parser.parse_args(argv)
  try:
    if args.from_hf:
      src = resolve_directory(args.from_hf)
      overrides = {"scan_layers": True} if args.scan_layers else {}
      config, params = from_pretrained(src, architecture=args.architecture, **overrides)
      out = save_params(params, config, args.out, extra_files=tokenizer_files(src))
    else:
      config, params = load_params(args.to_hf)
      out = save_pretrained(config, params, args.out, architecture=args.architecture,
                            extra_files=tokenizer_files(args.to_hf))
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out} ({config.family}, {count_params(params):,} parameters)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
