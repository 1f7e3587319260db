"""Benchmark output: a markdown table, results.csv, results.json and PNG plots in an output folder."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Optional, Sequence

# (column title, record key, format) of the speed table
SPEED_COLUMNS = [
    ("model", "model", "{}"), ("seq", "seq_len", "{}"), ("tgt", "tgt_len", "{}"), ("batch", "batch_size", "{}"),
    ("dtype", "dtype", "{}"), ("params", "num_params", "{:,.0f}"),
    ("train tok/s", "train_tokens_per_sec", "{:,.0f}"), ("fwd tok/s", "forward_tokens_per_sec", "{:,.0f}"),
    ("GFLOP/tok", "flops_per_token", "{:.4g}", 1e-9), ("MFU", "mfu", "{:.1%}"),
    ("peak GFLOP/s", "peak_flops", "{:,.0f}", 1e-9), ("compile s", "compile_s", "{:.1f}"),
    ("peak mem MiB", "peak_memory_bytes", "{:,.0f}", 2 ** -20), ("load", "load_avg_start", "{}"),
]


def _cell(rec: dict, key: str, fmt: str, scale: float = 1.0) -> str:
  v = rec.get(key)
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return fmt.format(v * scale if scale != 1.0 else v)


def markdown_table(records: Sequence[dict], columns=None) -> str:
  """Returns a markdown table of `records` with the given (title, key, format[, scale]) columns."""
  columns = columns or SPEED_COLUMNS
  columns = [c for c in columns if any(r.get(c[1]) is not None for r in records)]
  lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  for r in records:
    lines.append("| " + " | ".join(_cell(r, *c[1:]) for c in columns) + " |")
  return "\n".join(lines)


def write_records(records: Sequence[dict], out_dir: str, stem: str = "results") -> tuple[str, str]:
  """Writes `stem`.json (a list of records) and `stem`.csv to out_dir; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, f"{stem}.json")
  with open(json_path, "w") as f:
    json.dump(list(records), f, indent=1, default=str)
  keys: list[str] = []
  for r in records:
    keys += [k for k in r if k not in keys and not isinstance(r[k], (list, dict))]
  csv_path = os.path.join(out_dir, f"{stem}.csv")
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(records)
  return json_path, csv_path


def _pyplot():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def plot_speed(records: Sequence[dict], path: str, title: Optional[str] = None) -> Optional[str]:
  """Plots training tokens/s, forward tokens/s and peak memory against sequence length per variant; returns path."""
  plt = _pyplot()
  panels = [("train_tokens_per_sec", "training tokens/s"), ("forward_tokens_per_sec", "forward tokens/s"),
            ("peak_memory_bytes", "peak memory (MiB)"), ("xla_step_bytes", "XLA step buffers (MiB)")]
  panels = [p for p in panels if any(r.get(p[0]) for r in records)]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
  groups: dict[str, list[dict]] = {}
  for r in records:
    groups.setdefault(f"{r['model']} b={r['batch_size']}", []).append(r)
  for ax, (key, name) in zip(axes[0], panels):
    for label, rs in groups.items():
      pts = sorted((r["seq_len"], r[key]) for r in rs if r.get(key))
      if pts:
        scale = 2 ** -20 if key.endswith("_bytes") else 1.0
        ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(name)
    ax.grid(True, alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(title or _default_title(records), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _default_title(records: Sequence[dict]) -> str:
  r = records[0]
  return f"tfm.bench speed on {r.get('device_kind')} ({r.get('backend')}), load {r.get('load_avg_start')}"
