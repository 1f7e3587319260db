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


# ----------------------------------------------------------------------------------------------
# The scaling study of `python -m tfm.bench torch` (tfm.bench.scaling)
# ----------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> Optional[float]:
  xs = sorted(xs)
  if not xs:
    return None
  n = len(xs)
  return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def scaling_rows(records: Sequence[dict]) -> list[dict]:
  """Returns one row per (model, seq, batch, tgt) of per-point records (framework "tfm" | "torch"): the median
  tokens/s and the largest peak RSS of each framework's successful processes, tfm / torch ratios, failures."""
  groups: dict[tuple, list[dict]] = {}
  for r in records:
    groups.setdefault((r["model"], r["seq_len"], r["batch_size"], r.get("tgt_len")), []).append(r)
  rows = []
  for (model, seq, batch, tgt), rs in groups.items():
    row = dict(model=model, seq_len=seq, batch_size=batch, tgt_len=tgt, attention=rs[0].get("attention"), notes=[])
    for fw in ("tfm", "torch"):
      ok = [r for r in rs if r["framework"] == fw and r.get("status") == "ok"]
      bad = [r for r in rs if r["framework"] == fw and r.get("status") != "ok"]
      row[f"{fw}_tokens_per_sec"] = _median([r["train_tokens_per_sec"] for r in ok])
      row[f"{fw}_peak_rss_bytes"] = max((r["peak_rss_bytes"] for r in ok), default=None)
      row[f"{fw}_failed"] = bool(bad) and not ok
      row[f"{fw}_pids"] = [r.get("pid") for r in ok]
      row["notes"] += [f"{fw}: {r.get('error')}" for r in bad]
    tfm_ok = [r for r in rs if r["framework"] == "tfm" and r.get("status") == "ok"]
    torch_ok = [r for r in rs if r["framework"] == "torch" and r.get("status") == "ok"]
    row["attention_path"] = tfm_ok[0].get("attention_path") if tfm_ok else None
    row["torch_model"] = torch_ok[0].get("torch_model") if torch_ok else None
    row["tfm_device_peak_bytes"] = max((r["device_peak_bytes"] for r in tfm_ok if r.get("device_peak_bytes")),
                                       default=None)
    a, b = row["tfm_tokens_per_sec"], row["torch_tokens_per_sec"]
    row["tokens_ratio"] = a / b if a and b else None
    a, b = row["tfm_peak_rss_bytes"], row["torch_peak_rss_bytes"]
    row["memory_ratio"] = a / b if a and b else None
    rows.append(row)
  return rows


def scaling_table(rows: Sequence[dict]) -> str:
  """Returns the markdown table of `scaling_rows`: tokens/s and peak RSS of both frameworks and their ratios."""
  def num(v, fmt, failed=False):
    return "failed" if failed else ("-" if v is None else fmt.format(v))

  device = any(r.get("tfm_device_peak_bytes") for r in rows)
  notes = any(r["notes"] for r in rows)
  title = (["model", "seq", "batch", "tfm attention", "tfm tok/s", "torch tok/s", "ratio (tfm/torch)",
            "tfm peak RSS MiB", "torch peak RSS MiB", "memory ratio (tfm/torch)"]
           + (["tfm device peak MiB"] if device else []) + (["notes"] if notes else []))
  lines = ["| " + " | ".join(title) + " |", "|" + "|".join("---" for _ in title) + "|"]
  mib = 2 ** -20
  for r in rows:
    attention = r.get("attention") or "-"
    if r.get("attention_path") and r["attention_path"] != attention:
      attention += f" → {r['attention_path']}"
    cells = [r["model"], str(r["seq_len"]) + (f" / {r['tgt_len']}" if r.get("tgt_len") else ""), str(r["batch_size"]),
             attention, num(r["tfm_tokens_per_sec"], "{:,.0f}", r["tfm_failed"]),
             num(r["torch_tokens_per_sec"], "{:,.0f}", r["torch_failed"]), num(r["tokens_ratio"], "{:.2f}"),
             num(r["tfm_peak_rss_bytes"] and r["tfm_peak_rss_bytes"] * mib, "{:,.0f}", r["tfm_failed"]),
             num(r["torch_peak_rss_bytes"] and r["torch_peak_rss_bytes"] * mib, "{:,.0f}", r["torch_failed"]),
             num(r["memory_ratio"], "{:.2f}")]
    if device:
      cells.append(num(r.get("tfm_device_peak_bytes") and r["tfm_device_peak_bytes"] * mib, "{:,.0f}"))
    if notes:
      cells.append("; ".join(n.replace("|", "/") for n in r["notes"]) or "")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_scaling(rows: Sequence[dict], path: str, title: Optional[str] = None) -> Optional[str]:
  """Plots tokens/s and peak memory against sequence length (log x), tfm solid and PyTorch dashed, one colour
  per model; returns path (None if no point succeeded)."""
  plt = _pyplot()
  panels = [("tokens_per_sec", "training tokens/s", 1.0), ("peak_rss_bytes", "peak RSS (MiB)", 2 ** -20)]
  if any(r.get("tfm_device_peak_bytes") for r in rows):
    panels.append(("device_peak_bytes", "tfm device peak (MiB)", 2 ** -20))
  if not any(r.get(f"{fw}_tokens_per_sec") for r in rows for fw in ("tfm", "torch")):
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0), squeeze=False)
  groups: dict[str, list[dict]] = {}
  for r in rows:
    groups.setdefault(f"{r['model']} b={r['batch_size']}", []).append(r)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (key, name, scale) in zip(axes[0], panels):
    for i, (label, rs) in enumerate(groups.items()):
      for fw, style in (("tfm", "o-"), ("torch", "s--")):
        pts = sorted((r["seq_len"], r[f"{fw}_{key}"]) for r in rs if r.get(f"{fw}_{key}"))
        if pts:
          ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], style, color=colors[i % len(colors)],
                  label=f"{fw} {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(name)
    ax.grid(True, alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="best")
  fig.suptitle(title or "tfm vs PyTorch: scaling with sequence length", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
