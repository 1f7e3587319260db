"""`python -m tfm.bench speed`: training and forward tokens/s, MFU, compile time and peak memory of variants.

Every variant is timed in one process, one after the other: median of `iters` timed steps after
`warmup` steps; MFU = analytic training FLOPs per step (tfm.flops) / median step time / the matmul
peak measured in this same run (samples taken right before and after every variant).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from typing import Optional, Sequence

import jax

from tfm import hostmem
from tfm.bench import device as dev
from tfm.bench.specs import ModelSpec, parse_spec, split_specs
from tfm.bench.step import make_steps, random_batch
from tfm.flops import model_flops


@dataclasses.dataclass(frozen=True)
class Variant:
  """One measured point: a model spec at one shape."""

  spec: ModelSpec
  seq: int
  batch: int
  tgt_seq: Optional[int]
  varied: tuple = ()  # (flag, value) pairs that the command line varies, for the label

  @property
  def label(self) -> str:
    """Returns the variant's name in tables and plots (without the shape)."""
    extra = ",".join(f"{k}={v}" for k, v in self.varied)
    return self.spec.label + (f" [{extra}]" if extra else "")


def expand_variants(models: str, seqs: Sequence[int] = (), batches: Sequence[int] = (),
                    tgt_seq: Optional[int] = None, dtypes: Sequence[str] = (), attentions: Sequence[str] = (),
                    remats: Sequence[str] = (), scan_layers: Optional[bool] = None) -> list[Variant]:
  """Returns the variant grid: every model spec x dtype x attention x remat x (seq, batch)."""
  flag_lists = {"dtype": list(dtypes) or [None], "attention_impl": list(attentions) or [None],
                "remat": list(remats) or [None]}
  varied_keys = [k for k, v in flag_lists.items() if len(v) > 1]
  out = []
  for text in split_specs(models):
    for combo in itertools.product(*flag_lists.values()):
      flags = {k: v for k, v in zip(flag_lists, combo) if v is not None}
      if scan_layers is not None:
        flags["scan_layers"] = scan_layers
      spec = parse_spec(text, **flags)
      varied = tuple((k, flags[k]) for k in varied_keys)
      for s, b, t in spec.shapes(seqs, batches, tgt_seq):
        out.append(Variant(_fit_max_len(spec, max(s, t or 0)), s, b, t, varied))
  return out


def _fit_max_len(spec: ModelSpec, length: int) -> ModelSpec:
  """Returns spec with max_len raised to `length` where learned / sinusoidal positions need it (said aloud)."""
  c = spec.config
  if c.position in ("learned", "sinusoidal") and length > c.max_len:
    print(f"note: {spec.label}: max_len raised from {c.max_len} to {length} to fit the benchmark sequence")
    return dataclasses.replace(spec, config=c.replace(max_len=length))
  return spec


def _xla_step_bytes(m) -> Optional[int]:
  """Returns arguments + outputs + temporaries - aliased (donated) bytes of a compiled step, if known."""
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _median(xs):
  return float(statistics.median(xs))


class TfmRunner:
  """A variant's model, state and compiled steps (compile time and memory measured while building)."""

  def __init__(self, variant: Variant, forward: bool = True):
    self.variant = variant
    c = variant.spec.config
    self.flops = model_flops(c, variant.batch, variant.seq, variant.tgt_seq)
    self.train_ts: list[float] = []
    self.fwd_ts: list[float] = []
    self.loss = None
    self.monitor = dev.MemoryMonitor()
    with self.monitor:
      steps = make_steps(c, random_batch(c, variant.batch, variant.seq, variant.tgt_seq))
      self.rng = jax.random.PRNGKey(1)
      self.batch = steps.batch
      self.num_params = steps.num_params
      t0 = time.perf_counter()
      lowered = steps.train_step.lower(steps.state, steps.batch, self.rng)
      self.lower_s = time.perf_counter() - t0  # tracing + lowering to StableHLO (Python side)
      self.train = lowered.compile()
      self.compile_s = time.perf_counter() - t0  # lower + XLA compile
      self.forward_compile_s = None
      self.fwd = None
      if forward:
        t0 = time.perf_counter()
        self.fwd = steps.forward.lower(steps.state.params, steps.batch).compile()
        self.forward_compile_s = time.perf_counter() - t0
      self.state = steps.state  # the compiled step donates it: only this reference stays live
      del steps, lowered
      hostmem.release_free_heap()  # as train.py does after its first step: the compiler's freed heap

  def _step(self):
    self.state, value = self.train(self.state, self.batch, self.rng)
    return value

  def time(self, warmup: int, iters: int) -> None:
    """Times `iters` training steps (and forward passes) after `warmup` untimed ones; appends the seconds."""
    with self.monitor.resume():
      self.train_ts += dev.time_calls(self._step, warmup, iters)
      self.loss = float(self._step())
      if self.fwd is not None:
        self.fwd_ts += dev.time_calls(lambda: self.fwd(self.state.params, self.batch), max(1, warmup // 2), iters)

  def record(self, local_peak: float, load_start) -> dict:
    """Returns the variant's record from the timings so far."""
    v, c, flops = self.variant, self.variant.spec.config, self.flops
    mem_xla = self.train.memory_analysis()
    rec = dict(
        framework="tfm", model=v.label, preset=v.spec.name, family=c.family, seq_len=v.seq, tgt_len=v.tgt_seq,
        batch_size=v.batch, tokens_per_step=flops.tokens, dtype=c.dtype, attention=c.attention_impl,
        remat=c.remat, scan_layers=c.scan_layers, num_layers=c.num_layers, num_params=self.num_params,
        flops_per_token=flops.train_per_token, train_flops_per_step=flops.train, compile_s=self.compile_s,
        lower_s=self.lower_s,
        forward_compile_s=self.forward_compile_s, peak_memory_bytes=self.monitor.peak_bytes,
        memory_source=self.monitor.source,
        xla_temp_bytes=getattr(mem_xla, "temp_size_in_bytes", None) if mem_xla else None,
        xla_step_bytes=_xla_step_bytes(mem_xla), peak_flops_local=local_peak, load_avg_start=load_start,
        load_avg_end=dev.load_average(), iters=len(self.train_ts), final_loss=self.loss, **dev.device_info())
    if self.train_ts:
      step_s = _median(self.train_ts)
      rec.update(train_step_s=step_s, train_step_min_s=min(self.train_ts), train_step_max_s=max(self.train_ts),
                 train_tokens_per_sec=flops.tokens / step_s, train_flops_per_sec=flops.train / step_s,
                 mfu_local=flops.train / step_s / local_peak)
    if self.fwd_ts:
      rec.update(forward_step_s=_median(self.fwd_ts), forward_tokens_per_sec=flops.tokens / _median(self.fwd_ts))
    return rec


def measure(variant: Variant, peak: dev.MatmulPeak, warmup: int = 2, iters: int = 5,
            compile_only: bool = False, forward: bool = True) -> dict:
  """Returns the record of one variant: timings, FLOPs, MFU vs the run's peak, compile time, memory."""
  load_start = dev.load_average()
  peak_before = peak.sample()
  runner = TfmRunner(variant, forward=forward and not compile_only)
  if not compile_only:
    runner.time(warmup, iters)
  peak_after = peak.sample()
  rec = runner.record(peak.flops(peak_before + peak_after), load_start)
  del runner
  return rec


def finish_records(records: list[dict], peak: dev.MatmulPeak) -> list[dict]:
  """Returns records with the run's peak (median of all samples), MFU and vendor-peak MFU filled in."""
  run_peak = peak.flops()
  for r in records:
    vendor = dev.vendor_peak(r["device_kind"], r["dtype"])
    r.update(peak_flops=run_peak, peak_source=f"jnp.dot {peak.n}x{peak.n} {peak.dtype}, median of "
             f"{len(peak.samples)} in-run samples", vendor_peak_flops=vendor)
    achieved = r.get("train_flops_per_sec")
    r["mfu"] = achieved / run_peak if achieved else None
    r["mfu_vendor"] = achieved / vendor if achieved and vendor else None
    r.setdefault("train_tokens_per_sec", None)
    r.setdefault("forward_tokens_per_sec", None)
  return records


def run_speed(variants: list[Variant], warmup: int = 2, iters: int = 5, compile_only: bool = False,
              forward: bool = True, peak_dtype: str = "float32", verbose: bool = True) -> list[dict]:
  """Returns one record per variant (see `measure`), measured one after the other in this process."""
  peaks = {}
  records = []
  for v in variants:
    dtype = peak_dtype if v.spec.config.dtype == "float32" else v.spec.config.dtype
    peak = peaks.setdefault(dtype, dev.MatmulPeak(dtype=dtype))
    rec = measure(v, peak, warmup=warmup, iters=iters, compile_only=compile_only, forward=forward)
    rec["_peak"] = dtype
    records.append(rec)
    if verbose:
      tps = rec.get("train_tokens_per_sec")
      print(f"{v.label} seq={v.seq} batch={v.batch}: "
            + (f"train {tps:,.0f} tok/s, MFU(local) {rec['mfu_local']:.1%}, " if tps else "")
            + f"compile {rec['compile_s']:.1f}s, load {rec['load_avg_start']}", flush=True)
  for dtype, peak in peaks.items():
    finish_records([r for r in records if r["_peak"] == dtype], peak)
  for r in records:
    del r["_peak"]
  return records
