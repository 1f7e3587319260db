"""What the device can do and what a run used: in-run matmul peak, vendor peaks, peak memory, load, and the
attention kernels' check (`python -m tfm.bench device-check`: every implementation of the backend against
the float32 reference, then bfloat16 training MFU with each).

MFU in tfm.bench is always reported against a peak measured in the same run (a 2048 x 2048 matmul,
as ../shared/bench/bench_peak.py does), and, where the device kind is known, against the vendor's
dense peak from `VENDOR_PEAKS` as well.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Dense (no sparsity) peak FLOP/s per JAX device, from the vendors' data sheets. The "float32" entry
# of GPUs is the TF32 tensor-core figure (XLA:GPU runs float32 matmuls as TF32 by default); TPUs run
# float32 matmuls as bfloat16 passes by default. TPU v2 / v3 devices are single cores (half a chip).
# Matched by substring of `device.device_kind`, first match wins (the more specific names first).
VENDOR_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),  # SXM
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("A10", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
    ("T4", {"float16": 65e12, "float32": 8.1e12}),
    ("TPU v2", {"bfloat16": 22.5e12, "float32": 22.5e12}),
    ("TPU v3", {"bfloat16": 61.5e12, "float32": 61.5e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p
    ("TPU v6", {"bfloat16": 918e12, "float32": 918e12}),  # Trillium (v6e, "TPU v6 lite")
]


def vendor_peak(device_kind: str, dtype: str) -> Optional[float]:
  """Returns the vendor's dense peak FLOP/s of `device_kind` for `dtype`, or None if unknown."""
  for key, peaks in VENDOR_PEAKS:
    if key.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def time_calls(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
  """Returns the seconds of `iters` timed calls of fn (results blocked on) after `warmup` untimed ones."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


class MatmulPeak:
  """Times an n x n jnp.dot in a dtype; `sample()` adds timings, `flops()` is FLOP/s of their median."""

  def __init__(self, n: int = 2048, dtype: str = "float32"):
    self.n = n
    self.dtype = dtype
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    self._a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
    self._b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
    self._dot = jax.jit(jnp.dot)
    self.samples: list[float] = []

  def sample(self, iters: int = 5) -> list[float]:
    """Returns (and records) `iters` matmul timings in seconds."""
    ts = time_calls(lambda: self._dot(self._a, self._b), 2 if not self.samples else 1, iters)
    self.samples += ts
    return ts

  def flops(self, samples: Optional[list[float]] = None) -> float:
    """Returns 2 n^3 / median seconds of `samples` (default: all recorded)."""
    ts = samples if samples is not None else self.samples
    return 2 * self.n ** 3 / statistics.median(ts)


def device_info() -> dict:
  """Returns the backend, device kind and device count of the default JAX backend."""
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": d.device_kind, "device_count": jax.device_count(),
          "cpu_count": os.cpu_count()}


def load_average() -> Optional[float]:
  """Returns the 1-minute load average of the machine (None where unavailable)."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def _rss_bytes() -> int:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    import psutil  # noqa: PLC0415
    return psutil.Process().memory_info().rss


class MemoryMonitor:
  """Peak memory while it runs: device `memory_stats()` where available, else process RSS sampled every 5 ms.

  Use as a context manager; afterwards `.peak_bytes` and `.source` ("device" or "rss") are set.
  Device peaks are the process's high-water mark (JAX cannot reset it), so a variant run after a
  bigger one reports the bigger peak; RSS is sampled only while the monitor runs.
  """

  def __init__(self, interval_s: float = 0.005):
    self.interval_s = interval_s
    self.peak_bytes: Optional[int] = None
    self.source = "rss"
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  @staticmethod
  def _device_peak() -> Optional[int]:
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
      return int(stats["peak_bytes_in_use"])
    return None

  def _poll(self):
    while not self._stop.is_set():
      self.peak_bytes = max(self.peak_bytes or 0, _rss_bytes())
      self._stop.wait(self.interval_s)

  def __enter__(self):
    if self._device_peak() is not None:
      self.source = "device"
    else:
      self.peak_bytes = max(self.peak_bytes or 0, _rss_bytes())
      self._thread = threading.Thread(target=self._poll, daemon=True)
      self._thread.start()
    return self

  def resume(self) -> "MemoryMonitor":
    """Returns self, to be entered again: the peak keeps growing from where it was."""
    self._stop = threading.Event()
    return self

  def __exit__(self, *exc):
    if self.source == "device":
      self.peak_bytes = self._device_peak()
    else:
      self._stop.set()
      self._thread.join()
      self.peak_bytes = max(self.peak_bytes or 0, _rss_bytes())
    return False


# ----------------------------------------------------------------------------------------------
# The machine and a process's memory (tfm.bench.scaling)
# ----------------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
  """Returns the first processor's entries of /proc/cpuinfo ({} where there is none)."""
  out: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
  except OSError:
    pass
  return out


def machine_info() -> dict:
  """Returns the CPU model, whether it has AVX-512 (None: unknown), the CPU count, the load averages and the
  JAX / PyTorch versions, without starting a JAX backend or importing PyTorch."""
  import platform  # noqa: PLC0415
  from importlib import metadata  # noqa: PLC0415
  info = _cpuinfo()
  flags = info.get("flags")
  try:
    torch_version = metadata.version("torch")
  except metadata.PackageNotFoundError:
    torch_version = None
  try:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    load = None
  return {"cpu_model": info.get("model name") or platform.processor() or platform.machine(),
          "avx512": ("avx512f" in flags.split()) if flags else None, "cpu_count": os.cpu_count(),
          "load_avg": load, "jax": jax.__version__, "torch": torch_version}


def device_peak_bytes() -> Optional[int]:
  """Returns the default device's `memory_stats()["peak_bytes_in_use"]` (GPU, TPU), None where there is none (CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - a backend without memory statistics
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def attention_paths(paths: Sequence[str]) -> str:
  """Returns the kernels a traced step took (tfm.attention.recorded_paths), distinct, in call order, joined."""
  return ", ".join(dict.fromkeys(paths)) or "?"


# ----------------------------------------------------------------------------------------------
# `python -m tfm.bench device-check`: every attention kernel of the backend against the reference
# ----------------------------------------------------------------------------------------------

CHECK_CASES = ("causal", "padding", "segments", "window", "bias")
CHECK_DTYPES = ("float32", "bfloat16")
# max |Δ| / max |reference| allowed, for the output and for each of dq, dk, dv. The reference runs in float32
# at "highest" matmul precision on the same (rounded) inputs, so the bound is the kernel's own arithmetic:
# bfloat16 / float16 rounding of the inputs of both matmuls (8 / 11 bits of mantissa) in the half types.
CHECK_TOLERANCES = {"float32": 2e-5, "bfloat16": 2e-2, "float16": 5e-3}
# float32 on accelerators: XLA:GPU and Triton multiply float32 as TF32 (10 bits of mantissa) and TPUs in
# bfloat16 passes by default, as tfm's models do, so their float32 bound is that of the reduced precision.
ACCELERATOR_FLOAT32_TOLERANCE = {"gpu": 5e-3, "tpu": 2e-2}


def _platform() -> str:
  p = jax.default_backend()
  return "gpu" if p in ("gpu", "cuda", "rocm") else p


def backend_implementations(platform: Optional[str] = None) -> list[str]:
  """Returns the attention implementations worth checking on a platform (default: JAX's default backend)."""
  platform = platform or _platform()
  if platform == "gpu":
    return ["reference", "xla", "blockwise", "cudnn", "pallas"]
  if platform == "tpu":
    return ["reference", "xla", "blockwise", "pallas"]
  return ["reference", "xla", "blockwise"]


def check_tolerance(dtype: str, platform: Optional[str] = None) -> float:
  """Returns the bound on max |Δ| / max |reference| of a kernel in `dtype` (see CHECK_TOLERANCES)."""
  platform = platform or _platform()
  if dtype == "float32":
    return ACCELERATOR_FLOAT32_TOLERANCE.get(platform, CHECK_TOLERANCES["float32"])
  return CHECK_TOLERANCES[dtype]


@dataclasses.dataclass
class AttentionCase:
  """Inputs of one checked attention: float32 q, k, v, the Mask / Bias, and which query rows count."""

  name: str
  q: jax.Array         # [batch, len, heads, head_dim]
  k: jax.Array         # [batch, len, kv_heads, head_dim]
  v: jax.Array
  mask: Any            # tfm.attention.structure.Mask
  bias: Any            # tfm.attention.structure.Bias or None
  q_valid: np.ndarray  # [batch, len] bool: real queries (outputs of padding queries are never used)
  cotangent: jax.Array  # [batch, len, heads, head_dim]: d loss / d output, zero on padding queries


def attention_case(kind: str, heads: int = 4, kv_heads: int = 4, batch: int = 2, length: int = 256,
                   head_dim: int = 64, seed: int = 0) -> AttentionCase:
  """Returns the AttentionCase `kind` (one of CHECK_CASES) with random inputs:

  causal:   causal self-attention;
  padding:  bidirectional, row 1 right-padded to 5/8 of the length;
  segments: causal over packed sequences (3 segments in row 0, 2 in row 1, uneven lengths);
  window:   causal with a sliding window of 3/16 of the length (not a multiple of a kernel's block);
  bias:     bidirectional with T5's relative-position bias (32 buckets, random table) and padding.
  """
  from tfm.attention.structure import Bias, self_mask  # noqa: PLC0415
  if kind not in CHECK_CASES:
    raise ValueError(f"unknown device-check case {kind!r}; one of {', '.join(CHECK_CASES)}")
  kq, kk, kv, kb, kd = jax.random.split(jax.random.PRNGKey(seed), 5)
  q = jax.random.normal(kq, (batch, length, heads, head_dim), jnp.float32)
  k = jax.random.normal(kk, (batch, length, kv_heads, head_dim), jnp.float32)
  v = jax.random.normal(kv, (batch, length, kv_heads, head_dim), jnp.float32)
  idx = np.arange(length)
  positions = np.broadcast_to(idx, (batch, length)).astype(np.int32)
  valid = np.ones((batch, length), bool)
  if kind in ("padding", "bias") and batch > 1:
    valid[1:, length * 5 // 8:] = False
  bias = None
  if kind == "causal":
    mask = self_mask(length, causal=True)
  elif kind == "padding":
    mask = self_mask(length, causal=False, attention_mask=jnp.asarray(valid, jnp.int32))
  elif kind == "segments":
    cuts = [(length // 2, length * 3 // 4), (length * 3 // 8,)]  # segment boundaries of rows 0 and 1
    seg = np.ones((batch, length), np.int32)
    for b in range(batch):
      for cut in cuts[b % 2]:
        seg[b, cut:] += 1
    starts = np.maximum.accumulate(np.where(np.diff(seg, prepend=0, axis=1) != 0, idx, 0), axis=1)
    positions = (idx - starts).astype(np.int32)  # restarting in every segment
    mask = self_mask(length, causal=True, positions=jnp.asarray(positions), segment_ids=jnp.asarray(seg))
  elif kind == "window":
    mask = self_mask(length, causal=True, positions=jnp.asarray(positions), window=max(1, length * 3 // 16))
  else:  # bias
    mask = self_mask(length, causal=False, attention_mask=jnp.asarray(valid, jnp.int32))
    table = jax.random.normal(kb, (32, heads), jnp.float32)  # [num_buckets, heads]
    bias = Bias(table, jnp.asarray(positions), jnp.asarray(positions), kind="relative", bidirectional=True,
                max_distance=128)
  do = jax.random.normal(kd, q.shape, jnp.float32) * jnp.asarray(valid, jnp.float32)[:, :, None, None]
  name = f"{kind} {'mha' if kv_heads == heads else 'gqa'}"
  return AttentionCase(name, q, k, v, mask, bias, valid, do)


@functools.lru_cache(maxsize=None)  # one jitted function per implementation: cases of one shape share compilations
def _attention_with_grads(implementation: str):
  """Returns jit((q, k, v, mask, bias, do) -> (output, (dq, dk, dv))) of tfm.attention.dot_product_attention."""
  from tfm.attention import dot_product_attention  # noqa: PLC0415

  def run(q, k, v, mask, bias, do):
    out, vjp = jax.vjp(lambda q, k, v: dot_product_attention(q, k, v, mask=mask, bias=bias,
                                                             implementation=implementation), q, k, v)
    return out, vjp(do.astype(out.dtype))
  return jax.jit(run)


def _relative_error(x, ref, rows: Optional[np.ndarray] = None) -> float:
  """Returns max |x - ref| / max |ref| (over the rows that count: [batch, len] bool); NaN anywhere gives inf."""
  x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
  if rows is not None:
    x, ref = x[rows], ref[rows]
  if not np.all(np.isfinite(x)):
    return float("inf")
  return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def check_attention(case: AttentionCase, implementations: Sequence[str], dtype: str) -> list[dict]:
  """Returns one row per implementation: the path taken, the output's and gradients' errors against the float32
  reference on the same `dtype`-rounded inputs, the tolerance, ok (an exception: ok False, its text in `note`)."""
  from tfm.attention import IMPLEMENTATIONS, choose_implementation  # noqa: PLC0415
  dt = jnp.dtype(dtype)
  q, k, v, do = (x.astype(dt) for x in (case.q, case.k, case.v, case.cotangent))
  with jax.default_matmul_precision("highest"):
    ref, ref_grads = _attention_with_grads("reference")(*(x.astype(jnp.float32) for x in (q, k, v)), case.mask,
                                                        case.bias, do.astype(jnp.float32))
  tol = check_tolerance(dtype)
  rows = []
  for impl in implementations:
    row = dict(case=case.name, impl=impl, dtype=dtype, tol=tol, value_err=None, grad_err=None, ok=False, note="")
    t0 = time.perf_counter()
    try:
      if impl in IMPLEMENTATIONS:  # (an unknown name raises in the call below)
        row["path"] = choose_implementation(impl, q, k, case.mask, case.bias, 0.0)
      if impl in ("cudnn", "pallas") and row["path"] == "blockwise":
        row["note"] = f"no {impl} kernel for this case here: the core ran blockwise"
      out, grads = _attention_with_grads(impl)(q, k, v, case.mask, case.bias, do)
      row["value_err"] = _relative_error(out, ref, case.q_valid)
      row["grad_err"] = max(_relative_error(g, r) for g, r in zip(grads, ref_grads))
      row["ok"] = row["value_err"] <= tol and row["grad_err"] <= tol
    except Exception as e:  # noqa: BLE001 - reported as a failed row; the check goes on
      row.setdefault("path", "-")
      row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    row["seconds"] = time.perf_counter() - t0
    rows.append(row)
  return rows


CHECK_COLUMNS = [("case", "case", "{}"), ("impl", "impl", "{}"), ("path", "path", "{}"), ("dtype", "dtype", "{}"),
                 ("max |Δ| value", "value_err", "{:.1e}"), ("max |Δ| grad", "grad_err", "{:.1e}"),
                 ("tol", "tol", "{:.0e}"), ("ok", "ok_text", "{}"), ("note", "note", "{}")]
TRAIN_COLUMNS = [("model", "model", "{}"), ("attention", "attention", "{}"), ("path", "attention_path", "{}"),
                 ("seq", "seq_len", "{}"), ("batch", "batch_size", "{}"), ("dtype", "dtype", "{}"),
                 ("train tok/s", "train_tokens_per_sec", "{:,.0f}"), ("step ms", "train_step_s", "{:,.1f}", 1e3),
                 ("MFU (vendor peak)", "mfu_vendor", "{:.1%}"), ("MFU (in-run matmul)", "mfu", "{:.1%}"),
                 ("peak mem MiB", "peak_memory_bytes", "{:,.0f}", 2 ** -20), ("compile s", "compile_s", "{:.1f}"),
                 ("status", "status", "{}")]


def run_train_check(model: str, seq: int, batch: int, implementations: Sequence[str], warmup: int = 2,
                    iters: int = 5) -> list[dict]:
  """Returns the bfloat16 training record (tfm.bench.speed.run_speed: tokens/s, MFU) of `model` with each
  attention implementation; a variant that fails is a record with status "failed" and its error."""
  from tfm.attention import recorded_paths  # noqa: PLC0415
  from tfm.bench.speed import expand_variants, run_speed  # noqa: PLC0415
  records = []
  for impl in implementations:
    [v] = expand_variants(model, [seq], [batch], dtypes=["bfloat16"], attentions=[impl])
    try:
      with recorded_paths() as paths:  # the step is traced inside: its attention calls are recorded
        rec = run_speed([v], warmup=warmup, iters=iters, forward=False, peak_dtype="bfloat16")[0]
      rec["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported; the other kernels still run
      rec = dict(model=v.label, attention=impl, seq_len=seq, batch_size=batch, dtype="bfloat16", status="failed",
                 error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
      print(f"{v.label} [{impl}]: FAILED: {rec['error']}", flush=True)
    rec["attention_path"] = attention_paths(paths)
    records.append(rec)
  return records


def run_device_check(args) -> int:
  """The `python -m tfm.bench device-check` command; returns 0 if every check passed, else 1."""
  from tfm.bench import report  # noqa: PLC0415
  platform = _platform()
  impls = list(args.impls or backend_implementations(platform))
  dtypes = list(args.dtypes or CHECK_DTYPES)
  # Lengths that cut into partial blocks: the blockwise path's 512-query / 256-key blocks, the 128-multiples of the
  # fused kernels (640 = 1.25 query and 2.5 key blocks; 1152 = 9 x 128).
  length = args.length or (640 if platform == "cpu" else 1152)
  d = jax.devices()[0]
  print(f"device-check on {platform} ({d.device_kind}, {jax.device_count()} devices), jax {jax.__version__}: "
        f"implementations {', '.join(impls)}")
  print(f"cases: batch {args.batch}, length {length}, {args.heads} heads (GQA: {args.kv_heads} kv heads), head_dim "
        f"{args.head_dim}; max |Δ| = max |kernel - reference| / max |reference| (output over real queries; "
        f"gradients: the worst of dq, dk, dv), reference = implementation 'reference' in float32 at highest "
        f"matmul precision on the same rounded inputs; tol: " +
        ", ".join(f"{dt} {check_tolerance(dt, platform):.0e}" for dt in dtypes), flush=True)
  rows = []
  for kind in args.cases or CHECK_CASES:
    for kv_heads in dict.fromkeys((args.heads, args.kv_heads)):
      case = attention_case(kind, heads=args.heads, kv_heads=kv_heads, batch=args.batch, length=length,
                            head_dim=args.head_dim)
      for dtype in dtypes:
        rows += check_attention(case, impls, dtype)
  for r in rows:
    r["ok_text"] = "ok" if r["ok"] else "FAIL"
  print()
  print(report.markdown_table(rows, CHECK_COLUMNS))
  failed = [r for r in rows if not r["ok"]]
  ran = sorted({r["path"] for r in rows if r["value_err"] is not None})
  print(f"\n{len(rows) - len(failed)} of {len(rows)} checks ok; kernels that ran: {', '.join(ran) or 'none'}")
  train_records = []
  train = args.train if args.train is not None else platform != "cpu"
  if train:
    print(f"\ntraining {args.train_model} in bfloat16, seq {args.train_seq}, batch {args.train_batch}, with each "
          "implementation (python -m tfm.bench speed):", flush=True)
    train_records = run_train_check(args.train_model, args.train_seq, args.train_batch, impls, args.warmup,
                                    args.iters)
    print()
    print(report.markdown_table(train_records, TRAIN_COLUMNS))
    if platform != "cpu":
      print("(peak mem: the device's high-water mark of this one process, which JAX cannot reset: a row shows at "
            "least the peak of the rows above it)")
  elif args.train is None:
    print("\n(training MFU skipped on CPU; --train runs it)")
  if args.out:
    import json  # noqa: PLC0415
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "device_check.json")
    with open(path, "w") as f:
      json.dump({"platform": platform, "device_kind": d.device_kind, "checks": rows, "train": train_records}, f,
                indent=1, default=str)
    print(f"wrote {path}")
  train_failed = [r for r in train_records if r.get("status") != "ok"]
  return 1 if failed or train_failed else 0
