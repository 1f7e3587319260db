"""What a run leaves in its workdir: metrics.jsonl, TensorBoard events, loss.png, summary.json, config.json."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional



def _primary() -> bool:
  """Returns whether this process writes the run's files (process 0 of a multi-host run; always on one host)."""
  import jax
  return jax.process_index() == 0


def write_json(path: str, obj) -> str:
  """Writes `obj` as indented JSON to `path` atomically (process 0 only); returns the path."""
  if not _primary():
    return path
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path


def read_metrics(workdir: str) -> list[dict]:
  """Returns the records of WORKDIR/metrics.jsonl (empty if none); a last line cut short by a kill is left out."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  if lines and lines[-1].strip():  # no newline after it: the process died while writing it
    try:
      json.loads(lines[-1])
    except ValueError:
      lines.pop()
  return [json.loads(line) for line in lines if line.strip()]


class MetricsWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, resume_step: int = 0, start_time: Optional[float] = None):
    self.start_time = time.time() if start_time is None else start_time
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._f = self.tb = None
    if not _primary():  # multi-host: the other processes compute the same records and write nothing
      return
    # A resumed run drops what the interrupted run logged after its checkpoint: it is logged again.
    kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step] if resume_step else []
    with open(self.path + ".tmp", "w") as f:
      for r in kept:
        f.write(json.dumps(r) + "\n")
    os.replace(self.path + ".tmp", self.path)
    self._f = open(self.path, "a")
    from tensorboardX import SummaryWriter  # writes TensorBoard event files without TensorFlow
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> dict:
    """Logs {name: value} of `split` at `step`; returns the record."""
    record = {"step": int(step), "split": split}
    record.update({k: (float(v) if v is not None else None) for k, v in metrics.items()})
    record["elapsed_s"] = round(time.time() - self.start_time, 2)  # since this invocation started
    if "loss" in record and "perplexity" not in record and record["loss"] is not None:
      record["perplexity"] = math.exp(min(record["loss"], 80.0))
    if self._f is None:
      return record
    self._f.write(json.dumps(record) + "\n")
    self._f.flush()
    for tag, value in ((f"{split}/{k}", v) for k, v in record.items()
                       if k not in ("step", "split") and isinstance(v, float) and math.isfinite(v)):
      self.tb.add_scalar(tag, value, step)
    self.tb.flush()
    return record

  def close(self) -> None:
    """Closes the files."""
    if self._f is not None:
      self._f.close()
      self.tb.close()


def plot_losses(workdir: str, path: Optional[str] = None) -> str:
  """Draws train and eval loss against step from metrics.jsonl into WORKDIR/loss.png; returns the path."""
  path = path or os.path.join(workdir, "loss.png")
  if not _primary():
    return path
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = read_metrics(workdir)
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
  for split, style in (("train", "-"), ("eval", "o-")):
    pts = [(r["step"], r["loss"]) for r in records if r["split"] == split and r.get("loss") is not None]
    if pts:
      ax.plot(*zip(*pts), style, label=f"{split} loss", markersize=3)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats / token)")
  ax.set_title(os.path.basename(os.path.abspath(workdir)))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
