"""What the device can do and what a run used: in-run matmul peak, vendor peaks, peak memory, load.

MFU in tfm.bench is always reported against a peak measured in the same run (a 2048 x 2048 matmul,
as ../shared/bench/bench_peak.py does), and, where the device kind is known, against the vendor's
dense peak from `VENDOR_PEAKS` as well.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp

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
