"""`python -m tfm.bench quality`: train variants of one config on the same data and seed, compare eval loss.

    python -m tfm.bench quality --config configs/gpt_shakespeare_char.py \
        --set data.manual_dir=../shared/data/tiny_shakespeare \
        --vary model.position=learned,rope,alibi --vary model.mlp=gelu,swiglu --steps 600

Each variant is one `tfm.train.train_and_evaluate` run in OUT/<variant>/ (its own metrics.jsonl,
summary.json, loss.png). `model.FIELD` paths go to the training config's `model_overrides` (any
ModelConfig field); other paths (`train.steps`, `optimizer.learning_rate`, ...) to the config itself.
With `--flops-budget F` every variant trains for F / (its training FLOPs per step) steps (tfm.flops),
so variants of different cost get the same compute. Writes OUT/quality.{json,csv}, OUT/quality.png
(eval loss against steps and against training FLOPs) and prints a markdown table.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import statistics
from types import SimpleNamespace
from typing import Any, Optional

from tfm.bench import report
from tfm.flops import model_flops

QUALITY_COLUMNS = [
    ("variant", "variant", "{}"), ("params", "num_params", "{:,.0f}"), ("steps", "steps", "{}"),
    ("final eval loss", "eval_loss", "{:.4f}"), ("best eval loss", "best_eval_loss", "{:.4f}"),
    ("train loss", "train_loss", "{:.4f}"), ("train tok/s", "train_tokens_per_sec", "{:,.0f}"),
    ("train PFLOP", "train_flops_total", "{:.3g}", 1e-15), ("wall s", "wall_time_s", "{:.0f}"),
]


def load_config(path: str):
  """Returns get_config() of the Python config file at `path`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--config {path!r}: no such file")
  spec = importlib.util.spec_from_file_location("tfm_bench_quality_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path!r} defines no get_config()")
  return module.get_config()


def _value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _resolve(path: str) -> str:
  """Returns the config path a user path maps to (`model.X` -> `model_overrides.X`)."""
  head, _, rest = path.partition(".")
  if head == "model" and rest:
    return "model_overrides." + rest
  return path


def set_field(config, path: str, value: Any) -> None:
  """Sets the (dotted) `path` of a locked ConfigDict; raises ValueError naming an unknown field."""
  target = _resolve(path)
  node = config
  parts = target.split(".")
  for p in parts[:-1]:
    if p not in node:
      raise ValueError(f"unknown config field {path!r} (no {p!r} in {sorted(node.keys())})")
    node = node[p]
  if parts[-1] not in node:
    raise ValueError(f"unknown config field {path!r}; fields here: {sorted(node.keys())}")
  node[parts[-1]] = value


def parse_vary(items: list[str]) -> list[tuple[str, list[Any]]]:
  """Returns [(path, [values])] of `--vary path=v1,v2` items."""
  out = []
  for item in items:
    path, eq, values = item.partition("=")
    if not eq or not values:
      raise ValueError(f"--vary {item!r} must look like field=value1,value2")
    out.append((path.strip(), [_value(v.strip()) for v in values.split(",")]))
  return out


def _lengths(config, task_name: str) -> tuple[int, Optional[int]]:
  seq = config.data.seq_len
  if task_name == "span":
    from tfm.data.batches import span_shapes  # noqa: PLC0415
    return span_shapes(seq)
  if task_name == "seq2seq":
    return seq, config.data.target_len
  return seq, None


def flops_per_step(config, model_config=None) -> int:
  """Returns the training FLOPs of one step of `config` (model config from the run, else preset + overrides)."""
  import tfm  # noqa: PLC0415
  from tfm.train.defaults import model_overrides  # noqa: PLC0415
  mc = model_config or tfm.get_config(config.model, **model_overrides(config))
  seq, tgt = _lengths(config, config.task)
  return model_flops(mc, config.train.batch_size, seq, tgt).train


def variant_name(assignment: list[tuple[str, Any]]) -> str:
  """Returns a short name like `position=rope,mlp=swiglu`."""
  return ",".join(f"{p.split('.')[-1]}={v}" for p, v in assignment) or "base"


def run_quality(config_path: str, vary: list[tuple[str, list[Any]]], sets: list[tuple[str, Any]], out: str,
                steps: Optional[int] = None, flops_budget: Optional[float] = None) -> list[dict]:
  """Trains every variant of the grid and returns one record per variant (see QUALITY_COLUMNS)."""
  from tfm.train import train_and_evaluate  # noqa: PLC0415
  from tfm.train.writers import read_metrics  # noqa: PLC0415
  os.makedirs(out, exist_ok=True)
  records = []
  grid = list(itertools.product(*[[(p, v) for v in vs] for p, vs in vary])) or [()]
  for assignment in grid:
    config = load_config(config_path)
    for p, v in sets:
      set_field(config, p, v)
    for p, v in assignment:
      set_field(config, p, v)
    config.train.progress = False
    config.train.sample_tokens = 0
    if steps:
      config.train.steps = steps
    if flops_budget:
      config.train.steps = max(1, int(flops_budget // flops_per_step(config)))
    config.train.eval_every = min(config.train.eval_every, config.train.steps)
    config.train.checkpoint_every = config.train.steps  # the benchmark needs no intermediate checkpoints
    name = variant_name(list(assignment))
    workdir = os.path.join(out, name.replace("=", "-").replace(",", "_"))
    print(f"== {name}: {config.train.steps} steps in {workdir}", flush=True)
    summary = train_and_evaluate(config, workdir, log=lambda m: print("  " + m, flush=True))
    with open(os.path.join(workdir, "config.json")) as f:
      import tfm  # noqa: PLC0415
      mc = tfm.ModelConfig(**json.load(f)["model_config"])
    fps = flops_per_step(config, mc)
    metrics = read_metrics(workdir)
    evals = [(r["step"], r["loss"]) for r in metrics if r["split"] == "eval"]
    tps = [r["tokens_per_sec"] for r in metrics if r["split"] == "train" and r.get("tokens_per_sec")]
    records.append(dict(
        variant=name, **{p: v for p, v in assignment}, workdir=workdir, num_params=summary["num_params"],
        steps=summary["steps"], eval_loss=summary["eval_loss"], best_eval_loss=summary["best_eval_loss"],
        train_loss=summary["train_loss"], wall_time_s=summary["wall_time_s"],
        train_tokens_per_sec=statistics.median(tps[1:] or tps) if tps else None,  # the first window holds compile
        train_flops_per_step=fps, train_flops_total=fps * summary["steps"],
        eval_curve=[{"step": s, "loss": l, "flops": s * fps} for s, l in evals]))
  return records


def plot_quality(records: list[dict], path: str) -> str:
  """Plots eval loss against steps and against training FLOPs, one line per variant; returns path."""
  plt = report._pyplot()  # noqa: SLF001
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for r in records:
    curve = r["eval_curve"]
    axes[0].plot([p["step"] for p in curve], [p["loss"] for p in curve], "o-", ms=3, label=r["variant"])
    axes[1].plot([p["flops"] for p in curve], [p["loss"] for p in curve], "o-", ms=3, label=r["variant"])
  axes[0].set_xlabel("training step")
  axes[1].set_xlabel("training FLOPs (analytic, tfm.flops)")
  for ax in axes:
    ax.set_ylabel("eval loss")
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def run_quality_cli(args) -> int:
  """Runs the quality subcommand from parsed arguments; returns the exit status."""
  sets = []
  for item in args.set:
    p, eq, v = item.partition("=")
    if not eq:
      raise ValueError(f"--set {item!r} must look like field=value")
    sets.append((p.strip(), _value(v.strip())))
  records = run_quality(args.config, parse_vary(args.vary), sets, args.out, steps=args.steps,
                        flops_budget=args.flops_budget)
  print()
  print(report.markdown_table(records, QUALITY_COLUMNS))
  json_path, csv_path = report.write_records(records, args.out, "quality")
  plot = plot_quality(records, os.path.join(args.out, "quality.png"))
  print(f"\nwrote {json_path}, {csv_path}, {plot}")
  return 0
