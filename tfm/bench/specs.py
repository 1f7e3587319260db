"""Model specs of the benchmark command line: `preset[:field=value,...]`, plus the baseline shapes.

A spec names a preset (`tfm.list_configs()`) or one of the benchmark shapes below, with optional
ModelConfig overrides and three benchmark keys: `seq`, `batch`, `tgt_seq` (per-model sequence
length, batch size and decoder length, overriding the command-line grid).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Optional

import tfm

# The shapes of the PyTorch reference benchmarks in ../shared/bench (dropout 0, float32).
BENCH_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # BertForSequenceClassification 4L 4H d256 ff1024, 2 labels (bench_train_torch.py hf_bert)
    "bert-cls-4l-256": ("bert-base", dict(num_layers=4, d_model=256, num_heads=4, d_ff=1024, num_labels=2,
                                          dropout_rate=0.0, attention_dropout_rate=0.0)),
    # T5ForConditionalGeneration d256 4H d_kv64 ff1024 relu, 4 + 4 layers (hf_t5)
    "t5-4l-256": ("t5-small", dict(num_layers=4, d_model=256, num_heads=4, head_dim=64, d_ff=1024,
                                   dropout_rate=0.0)),
    # Long-sequence scaling study (python -m tfm.bench torch --seq 512,2048,4096,8192 --batch 1): one size,
    # 6 layers, d384, 6 heads, ff1536, gpt-nano's vocabulary of 65, positions for 8,192 tokens, no dropout,
    # three attention structures: causal (GPT-2), bidirectional with a padding mask (BERT classifier: the
    # classify task passes an attention mask), relative-position bias (T5, 6 + 6 layers).
    "gpt-6l-384": ("gpt-nano", dict(max_len=8192, dropout_rate=0.0, attention_dropout_rate=0.0)),
    "bert-cls-6l-384": ("bert-base", dict(vocab_size=65, max_len=8192, num_layers=6, d_model=384, num_heads=6,
                                          d_ff=1536, num_labels=2, dropout_rate=0.0, attention_dropout_rate=0.0)),
    "t5-6l-384": ("t5-small", dict(vocab_size=65, num_layers=6, d_model=384, num_heads=6, head_dim=64, d_ff=1536,
                                   dropout_rate=0.0)),
}
# The baseline sequence / batch of each shape when the command line gives none (bench README).
DEFAULT_SHAPE = {"gpt-nano": dict(seq=256, batch=8), "gpt2-small": dict(seq=256, batch=4),
                 "bert-cls-4l-256": dict(seq=128, batch=16), "t5-4l-256": dict(seq=128, batch=8, tgt_seq=32)}
FALLBACK_SHAPE = dict(seq=128, batch=8)  # any other model; encoder-decoder decoders get seq // 4
BENCH_KEYS = ("seq", "batch", "tgt_seq")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One `--models` entry: a label, the validated config, and optional per-model shape keys."""

  label: str
  name: str
  config: Any  # tfm.ModelConfig
  overrides: tuple = ()
  seq: Optional[int] = None
  batch: Optional[int] = None
  tgt_seq: Optional[int] = None

  def shapes(self, seqs, batches, tgt_seq=None) -> list[tuple[int, int, Optional[int]]]:
    """Returns the (seq, batch, tgt_seq) grid: spec keys, else the command line, else the baseline shape."""
    default = dict(FALLBACK_SHAPE, **DEFAULT_SHAPE.get(self.name, {}))
    seqs = [self.seq] if self.seq else (list(seqs) if seqs else [default["seq"]])
    batches = [self.batch] if self.batch else (list(batches) if batches else [default["batch"]])
    out = []
    for s in seqs:
      tgt = self.tgt_seq or tgt_seq or (default.get("tgt_seq") if s == default["seq"] else None) or max(1, s // 4)
      out += [(s, b, tgt if self.config.family == "encoder_decoder" else None) for b in batches]
    return out


def _value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def split_specs(text: str) -> list[str]:
  """Returns the specs of a comma-separated --models string; `k=v` items continue the previous spec."""
  specs: list[str] = []
  for item in (s.strip() for s in text.split(",")):
    if not item:
      continue
    if "=" in item and ":" not in item:
      if not specs:
        raise ValueError(f"--models: override {item!r} comes before any model name")
      specs[-1] += ("," if not specs[-1].endswith(":") else "") + item
    else:
      specs.append(item)
  return specs


def base_config(name: str, **overrides: Any):
  """Returns the ModelConfig of a preset or a benchmark shape with overrides applied."""
  if name in BENCH_SHAPES:
    preset, fields = BENCH_SHAPES[name]
    return tfm.get_config(preset, **{**fields, **overrides})
  if name not in tfm.list_configs():
    raise ValueError(f"unknown model {name!r}; use a preset ({', '.join(tfm.list_configs())}) or a "
                     f"benchmark shape ({', '.join(BENCH_SHAPES)})")
  return tfm.get_config(name, **overrides)


def parse_spec(spec: str, **global_overrides: Any) -> ModelSpec:
  """Returns the ModelSpec of `preset[:field=value,...]` with `global_overrides` (flags) applied first."""
  name, _, rest = spec.partition(":")
  name = name.strip()
  overrides: dict[str, Any] = {}
  bench: dict[str, Any] = {}
  for item in filter(None, (s.strip() for s in rest.split(","))):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"--models {spec!r}: override {item!r} must look like field=value")
    key = key.strip()
    (bench if key in BENCH_KEYS else overrides)[key] = _value(value.strip())
  config = base_config(name, **{**global_overrides, **overrides})
  explicit = tuple(f"{k}={v}" for k, v in overrides.items())
  label = name + (":" + ",".join(explicit) if explicit else "")
  return ModelSpec(label=label, name=name, config=config, overrides=tuple(sorted(overrides.items())),
                   seq=bench.get("seq"), batch=bench.get("batch"), tgt_seq=bench.get("tgt_seq"))
