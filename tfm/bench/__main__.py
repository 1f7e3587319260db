"""python -m tfm.bench speed|quality|torch|device-check ... (see --help of each subcommand)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from tfm.errors import ArgumentParser, UserError, run_cli
from tfm.hostmem import huge_pages_state, use_huge_pages

# XLA:CPU flags measured to help the training step on CPU (../shared/PERF_NOTES.md): dots go to Eigen
# instead of the YNNPACK fusions. Set before the first JAX computation; --no-cpu-flags keeps XLA's defaults.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _ints(text: str) -> list[int]:
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from None


def _words(text: str) -> list[str]:
  return [s.strip() for s in text.split(",") if s.strip()]


def set_xla_flags(enable: bool) -> str:
  """Adds CPU_XLA_FLAGS to XLA_FLAGS (unless already set there); returns the resulting XLA_FLAGS."""
  flags = os.environ.get("XLA_FLAGS", "")
  if enable:
    for f in CPU_XLA_FLAGS:
      if f.split("=")[0] not in flags:
        flags = (flags + " " + f).strip()
    os.environ["XLA_FLAGS"] = flags
  return flags


def _add_variant_args(p: argparse.ArgumentParser, models_default: str):
  p.add_argument("--models", default=models_default,
                 help="comma-separated specs preset[:field=value,...]; presets, gpt-nano, and the baseline shapes "
                      "bert-cls-4l-256, t5-4l-256; bench keys seq=, batch=, tgt_seq= per model")
  p.add_argument("--seq", type=_ints, default=[], help="sequence lengths (default: each model's baseline shape)")
  p.add_argument("--batch", type=_ints, default=[], help="batch sizes")
  p.add_argument("--tgt-seq", type=int, default=None, help="decoder length of encoder-decoder models (default seq//4)")
  p.add_argument("--dtype", type=_words, default=[], help="float32|bfloat16|float16 (comma list: a grid)")
  p.add_argument("--attention", type=_words, default=[],
                 help="auto|xla|blockwise|cudnn|pallas|reference (ModelConfig.attention_impl; comma list: a grid)")
  p.add_argument("--remat", type=_words, default=[], help="none|full|dots")
  p.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=None,
                 help="lax.scan over layers (default: as the config says)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
  p.add_argument("--iters", type=int, default=5, help="timed steps (the median is reported)")
  p.add_argument("--out", default="bench_out", help="output folder for results.{csv,json} and plots")
  p.add_argument("--no-cpu-flags", action="store_true", help="do not add the CPU XLA flags (see CPU_XLA_FLAGS)")
  p.add_argument("--huge-pages", action="store_true",
                 help="restart once with transparent huge pages for malloc (tfm/hostmem.py; or TFM_HUGE_PAGES=1)")


def main(argv=None) -> int:
  """Parses the command line, runs the subcommand; returns the exit status (2 with one line for bad input)."""
  return run_cli(_main, argv)


def _main(argv=None) -> int:
  """Parses the command line, runs the subcommand; returns the exit status."""
  parser = ArgumentParser(prog="python -m tfm.bench", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  sp = sub.add_parser("speed", help="tokens/s, MFU, compile time and memory of model variants")
  _add_variant_args(sp, "gpt-nano")
  sp.add_argument("--compile-only", action="store_true", help="measure compile time and memory of the step only")
  sp.add_argument("--no-forward", action="store_true", help="skip the forward-only timing")
  tp = sub.add_parser("torch", help="tfm vs the same architecture in PyTorch, same inputs: tokens/s and peak RSS "
                      "per (framework, model, seq) point, each in its own process (tfm/bench/scaling.py)")
  _add_variant_args(tp, "gpt-nano,gpt2-small,bert-cls-4l-256,t5-4l-256")
  tp.add_argument("--rounds", type=int, default=1,
                  help="alternate tfm and PyTorch this many times per model (per point: that many processes each)")
  tp.add_argument("--no-nanogpt", action="store_true",
                  help="GPT-2-shaped models: transformers' GPT2LMHeadModel instead of the hand-written PyTorch GPT "
                       "(with --same-process: skip the hand-written GPT)")
  tp.add_argument("--point-timeout", type=float, default=3600.0,
                  help="seconds one point process may run before it is recorded as failed (0: no limit)")
  tp.add_argument("--same-process", action="store_true",
                  help="the in-process comparison instead (tfm/bench/torch_ref.py): tfm, transformers and the "
                       "hand-written GPT alternating in one process, with MFU; memory is not per point")
  tp.add_argument("--pause-torch-huge-pages", action="store_true",
                  help="with huge pages on, none for PyTorch (measured slower with them): its point processes start "
                       "without the tunable (with --same-process: paused during its steps)")
  dp = sub.add_parser("device-check", help="every attention implementation of the backend against the float32 "
                      "reference (outputs and gradients), then bfloat16 training MFU with each; exit 1 on a failure")
  dp.add_argument("--impls", type=_words, default=[],
                  help="implementations to check (default: the backend's: CPU reference,xla,blockwise; GPU + "
                       "cudnn,pallas; TPU + pallas)")
  dp.add_argument("--dtypes", type=_words, default=[], help="float32|bfloat16|float16 (default float32,bfloat16)")
  dp.add_argument("--cases", type=_words, default=[], help="causal,padding,segments,window,bias (default: all)")
  dp.add_argument("--length", type=int, default=None, help="sequence length of the cases (default CPU 640, else 1152)")
  dp.add_argument("--batch", type=int, default=2, help="batch size of the cases")
  dp.add_argument("--heads", type=int, default=4, help="query heads (MHA cases: as many kv heads)")
  dp.add_argument("--kv-heads", type=int, default=2, help="kv heads of the GQA cases")
  dp.add_argument("--head-dim", type=int, default=64, help="head dimension of the cases")
  dp.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                  help="the training MFU part (default: on GPU / TPU, off on CPU); --no-train skips it")
  dp.add_argument("--train-model", default="gpt2-small", help="model spec of the training part")
  dp.add_argument("--train-seq", type=int, default=1024, help="sequence length of the training part")
  dp.add_argument("--train-batch", type=int, default=8, help="batch size of the training part")
  dp.add_argument("--warmup", type=int, default=2, help="untimed training steps")
  dp.add_argument("--iters", type=int, default=5, help="timed training steps (the median is reported)")
  dp.add_argument("--out", default=None, help="folder for device_check.json (default: none written)")
  dp.add_argument("--no-cpu-flags", action="store_true", help="as for speed")
  qp = sub.add_parser("quality", help="train variants on the same data and seed, compare eval loss")
  qp.add_argument("--config", default="configs/gpt_shakespeare_char.py", help="training config file (tfm.train)")
  qp.add_argument("--vary", action="append", default=[],
                  help="field=v1,v2,... (e.g. model.position=learned,rope,alibi); repeat for a grid")
  qp.add_argument("--set", action="append", default=[], help="field=value applied to every variant")
  qp.add_argument("--steps", type=int, default=None, help="training steps of every variant")
  qp.add_argument("--flops-budget", type=float, default=None,
                  help="equal-FLOPs budget: each variant trains for budget / (train FLOPs per step) steps")
  qp.add_argument("--out", default="bench_quality", help="output folder")
  qp.add_argument("--no-cpu-flags", action="store_true")
  qp.add_argument("--huge-pages", action="store_true", help="as for speed")
  args = parser.parse_args(argv)
  # From the command line (argv None), if asked for, this restarts the process once: see tfm/hostmem.py.
  huge_pages = use_huge_pages(getattr(args, "huge_pages", False)) if argv is None else huge_pages_state()
  xla_flags = set_xla_flags(not args.no_cpu_flags)

  if args.command == "device-check":
    from tfm.bench.device import CHECK_CASES, run_device_check  # noqa: PLC0415
    unknown = [c for c in args.cases if c not in CHECK_CASES]
    if unknown:
      raise UserError(f"--cases {','.join(unknown)}: not a case; the cases are {','.join(CHECK_CASES)}")
    return run_device_check(args)
  if args.command == "quality":
    from tfm.bench.quality import run_quality_cli  # noqa: PLC0415
    return run_quality_cli(args)
  from tfm.bench import report  # noqa: PLC0415
  from tfm.bench.speed import expand_variants, run_speed  # noqa: PLC0415
  try:
    variants = expand_variants(args.models, args.seq, args.batch, args.tgt_seq, args.dtype, args.attention,
                               args.remat, args.scan_layers)
  except UserError:
    raise
  except ValueError as e:  # a model spec, preset name or field value of --models and the grid flags
    raise UserError(f"--models / --seq / --batch / --dtype / --attention / --remat: {e}") from e
  if args.command == "torch" and not args.same_process:
    from tfm.bench.scaling import run_scaling_cli  # noqa: PLC0415
    command = "python -m tfm.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    return run_scaling_cli(args, command, variants)
  if args.command == "speed":
    records = run_speed(variants, warmup=args.warmup, iters=args.iters, compile_only=args.compile_only,
                        forward=not args.no_forward)
    columns = None
    stem = "results"
  else:
    from tfm.bench.torch_ref import TORCH_COLUMNS, run_torch  # noqa: PLC0415
    records = run_torch(variants, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
                        nanogpt=not args.no_nanogpt, pause_torch_huge_pages=args.pause_torch_huge_pages)
    columns = TORCH_COLUMNS
    stem = "torch_results"
  for r in records:
    r.setdefault("huge_pages", huge_pages)
    r["xla_flags"] = xla_flags
  print()
  print(report.markdown_table(records, columns))
  json_path, csv_path = report.write_records(records, args.out, stem)
  plot = report.plot_speed([r for r in records if r.get("framework", "tfm") == "tfm"],
                           os.path.join(args.out, f"{'speed' if stem == 'results' else 'torch'}.png"))
  print(f"\nwrote {json_path}, {csv_path}" + (f", {plot}" if plot else "") +
        f"  (XLA_FLAGS={xla_flags!r}, malloc huge pages: {huge_pages})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
