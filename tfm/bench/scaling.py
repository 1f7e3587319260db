"""`python -m tfm.bench torch`: tfm vs PyTorch over sequence lengths, every point in a process of its own.

    python -m tfm.bench torch --models gpt-6l-384,bert-cls-6l-384,t5-6l-384 --seq 512,2048,4096,8192 \\
        --batch 1 --attention auto --out bench_scaling

A point is one (framework, model, seq, batch). Each runs in a fresh child process of this Python (this file
run by path), so that the process's high-water mark is the point's own: peak RSS is
`getrusage(RUSAGE_SELF).ru_maxrss` of the child at its end, and on GPU / TPU the tfm child also reports the
device's `memory_stats()["peak_bytes_in_use"]`. The tfm child runs the training step of `python -m tfm.bench
speed` (tfm.bench.speed.TfmRunner: train.py's step, AdamW, clipping); the PyTorch child loads
tfm/bench/torch_ref.py by path, without importing the tfm package, so no JAX is in its RSS, and trains
`torch_ref.scaling_model` (the nanoGPT-style GPT with `scaled_dot_product_attention(is_causal=True)` for
GPT-2-shaped decoders, the transformers model otherwise) with AdamW in float32. Both see the same random
batch (tfm.bench.step.random_batch, written once by this process and checked by the tfm child). Tokens/s is
the median of the timed steps. A point that fails (out of memory, a kernel that does not compile, a time-out)
is recorded with what went wrong, and the run goes on. `rounds` > 1 runs every point that many times,
alternating the frameworks; the table then shows the median tokens/s and the largest peak RSS.

Results: results.json / results.csv (one record per point process, each with its pid), scaling.md (the
printed header and table) and scaling.png (tokens/s and peak memory against sequence length).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Optional

# Nothing above imports JAX or tfm: a PyTorch point process runs this file by path with these imports only.

POINT_FLAG = "--point"  # argv of a point process: scaling.py --point job.json result.json
_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(_HERE))  # the folder holding the tfm package


def peak_rss_bytes() -> int:
  """Returns this process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def _load_avg() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


# ----------------------------------------------------------------------------------------------
# The point processes
# ----------------------------------------------------------------------------------------------


def _tfm_point(job: dict) -> dict:
  """Trains the tfm model of `job` (warm-up, timed steps); returns its record."""
  import numpy as np  # noqa: PLC0415

  from tfm.bench import device as dev  # noqa: PLC0415
  from tfm.bench.specs import ModelSpec  # noqa: PLC0415
  from tfm.bench.speed import TfmRunner, Variant  # noqa: PLC0415
  from tfm.config import ModelConfig  # noqa: PLC0415
  rss_imports = peak_rss_bytes()
  c = ModelConfig(**job["config"])
  v = Variant(ModelSpec(label=job["label"], name=job["preset"], config=c), job["seq"], job["batch"],
              job["tgt_seq"], tuple(tuple(x) for x in job["varied"]))
  load_start = dev.load_average()
  from tfm.attention import recorded_paths  # noqa: PLC0415
  with recorded_paths() as paths:  # init and the training step are traced in here: the kernels they took
    runner = TfmRunner(v, forward=False)
    with np.load(job["batch_file"]) as data:  # the PyTorch process reads this file: the inputs must be the same
      if not np.array_equal(np.asarray(runner.batch["inputs"]), data["input_ids"]):
        raise RuntimeError("the tfm batch differs from the batch given to PyTorch")
    runner.time(job["warmup"], job["iters"])
  rec = runner.record(float("nan"), load_start)
  for key in ("peak_flops_local", "mfu_local"):  # no in-run matmul peak here: it would add to the point's RSS
    rec.pop(key, None)
  rec.update(attention_path=dev.attention_paths(paths),
             device_peak_bytes=dev.device_peak_bytes(), rss_after_imports_bytes=rss_imports)
  return rec


def _load_torch_ref():
  """Returns tfm/bench/torch_ref.py as a module of its own, loaded by path (the tfm package stays unimported)."""
  spec = importlib.util.spec_from_file_location("tfm_bench_torch_ref", os.path.join(_HERE, "torch_ref.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _torch_point(job: dict) -> dict:
  """Trains the PyTorch model of `job` (warm-up, timed steps); returns its record."""
  import numpy as np  # noqa: PLC0415
  tr = _load_torch_ref()
  torch = tr._torch()
  rss_imports = peak_rss_bytes()
  c = SimpleNamespace(**job["config"], **job["derived"])  # a ModelConfig's fields and properties, without tfm
  torch.manual_seed(0)
  name, model, hf = tr.scaling_model(c, job["nanogpt"])
  with np.load(job["batch_file"]) as data:
    batch = SimpleNamespace(input_ids=data["input_ids"], targets=data["targets"],
                            decoder_input_ids=data["decoder_input_ids"] if "decoder_input_ids" in data else None)
  load_start = _load_avg()
  runner = tr.TorchRunner(name, model, batch, hf=hf, attention_mask=tr.uses_attention_mask(c))
  runner.time(job["warmup"], job["iters"], forward=False)
  ts = sorted(runner.train_ts)
  step_s = ts[len(ts) // 2] if len(ts) % 2 else (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]) / 2
  return dict(torch_model=name, num_params=runner.num_params, train_step_s=step_s, train_step_min_s=ts[0],
              train_step_max_s=ts[-1], iters=len(ts), first_step_s=runner.first_step_s, final_loss=runner.loss,
              load_avg_start=load_start, load_avg_end=_load_avg(), torch_version=torch.__version__,
              torch_threads=torch.get_num_threads(), backend="torch-cpu", device_kind="cpu",
              rss_after_imports_bytes=rss_imports)


def _point_main(job_path: str, result_path: str) -> int:
  """Runs one point (the child's entry); writes its record to result_path. Returns the exit status."""
  with open(job_path) as f:
    job = json.load(f)
  rec = (_tfm_point if job["framework"] == "tfm" else _torch_point)(job)
  rec.update(pid=os.getpid(), peak_rss_bytes=peak_rss_bytes(), jax_imported="jax" in sys.modules)
  with open(result_path, "w") as f:
    json.dump(rec, f, default=str)
  return 0


# ----------------------------------------------------------------------------------------------
# The parent: one process per point
# ----------------------------------------------------------------------------------------------


def _config_dicts(c) -> tuple[dict, dict]:
  """Returns a ModelConfig's fields and its derived values (properties), both JSON-able."""
  derived = {k: getattr(c, k) for k, v in vars(type(c)).items() if isinstance(v, property)}
  return dataclasses.asdict(c), derived


def _without_huge_pages(env: dict) -> dict:
  """Returns env with malloc's huge-page tunable removed from GLIBC_TUNABLES (tfm.hostmem)."""
  from tfm import hostmem  # noqa: PLC0415
  items = [i for i in env.get("GLIBC_TUNABLES", "").split(":") if i and i.split("=")[0].strip() != hostmem.TUNABLE]
  env = dict(env)
  if items:
    env["GLIBC_TUNABLES"] = ":".join(items)
  else:
    env.pop("GLIBC_TUNABLES", None)
  return env


def _failure(returncode: Optional[int], stderr: str, timeout_s: Optional[float]) -> str:
  """Returns a one-line account of why a point process produced no record."""
  if returncode is None:
    return f"timed out after {timeout_s:.0f} s"
  lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
  last = lines[-1] if lines else ""
  oom = any(w in stderr for w in ("RESOURCE_EXHAUSTED", "MemoryError", "Out of memory", "out of memory",
                                  "DefaultCPUAllocator: can't allocate memory"))
  if returncode < 0:
    name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
    why = f"killed by {name}" + (" (out of memory: the kernel's OOM killer?)" if -returncode == signal.SIGKILL else "")
    return why + (f": {last[:200]}" if last else "")
  return ("out of memory: " if oom else f"exit status {returncode}: ") + last[:300]


def run_point(job: dict, work_dir: str, timeout_s: Optional[float] = None, env: Optional[dict] = None) -> dict:
  """Runs one point in a fresh process; returns its record (status "ok", or "failed" with `error`)."""
  stem = f"{job['framework']}-{job['index']}-{job['round']}"
  job_path = os.path.join(work_dir, f"{stem}.job.json")
  result_path = os.path.join(work_dir, f"{stem}.result.json")
  with open(job_path, "w") as f:
    json.dump(job, f)
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
  cmd = [sys.executable, os.path.abspath(__file__), POINT_FLAG, job_path, result_path]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    returncode, stderr = proc.returncode, proc.stderr
  except subprocess.TimeoutExpired as e:  # the child is killed; what it wrote so far is kept
    returncode = None
    stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
  wall_s = time.perf_counter() - t0
  base = dict(framework=job["framework"], model=job["label"], preset=job["preset"], family=job["config"]["family"],
              seq_len=job["seq"], batch_size=job["batch"], tgt_len=job["tgt_seq"], dtype=job["config"]["dtype"],
              attention=job["config"]["attention_impl"], round=job["round"], point_wall_s=wall_s)
  if returncode == 0 and os.path.exists(result_path):
    with open(result_path) as f:
      rec = json.load(f)
    rec.update(base, status="ok")
  else:
    rec = dict(base, status="failed", error=_failure(returncode, stderr, timeout_s), returncode=returncode,
               stderr_tail=stderr[-4000:])
  return rec


def _tokens(job: dict) -> int:
  return job["batch"] * (job["seq"] + (job["tgt_seq"] or 0))


def run_scaling(variants: list, warmup: int = 2, iters: int = 5, rounds: int = 1, nanogpt: bool = True,
                timeout_s: Optional[float] = None, pause_torch_huge_pages: bool = False,
                verbose: bool = True) -> list[dict]:
  """Returns one record per (framework, variant, round), each measured in a process of its own.

  `variants` are tfm.bench.speed.Variant (float32 only: the PyTorch side is float32). Records carry
  `status` ("ok" | "failed", with `error`), `pid`, `peak_rss_bytes`, `train_tokens_per_sec` (median of the
  timed steps), and on accelerators `device_peak_bytes` (tfm).
  """
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from tfm import hostmem  # noqa: PLC0415
  from tfm.bench.step import random_batch  # noqa: PLC0415
  # This process only writes numpy batches: its JAX stays on the CPU, so that it takes none of the accelerator's
  # memory (XLA:GPU preallocates most of it per process), which belongs to the point processes.
  jax.config.update("jax_platforms", "cpu")
  huge = hostmem.huge_pages_state()
  pause = pause_torch_huge_pages and huge == "on"
  torch_env = _without_huge_pages(os.environ) if pause else None
  records = []
  with tempfile.TemporaryDirectory(prefix="tfm-bench-scaling-") as work_dir:
    for index, v in enumerate(variants):
      c = v.spec.config
      if c.dtype != "float32":
        raise ValueError(f"{v.label}: the torch comparison is float32 only; got dtype={c.dtype}")
      b = random_batch(c, v.batch, v.seq, v.tgt_seq)
      batch_file = os.path.join(work_dir, f"batch-{index}.npz")
      arrays = {k: getattr(b, k) for k in ("input_ids", "targets", "decoder_input_ids") if getattr(b, k) is not None}
      np.savez(batch_file, **arrays)
      fields, derived = _config_dicts(c)
      for rnd in range(rounds):
        for framework in ("tfm", "torch"):  # alternate, so that drift in machine load hits both alike
          job = dict(framework=framework, index=index, round=rnd, label=v.label, preset=v.spec.name, seq=v.seq,
                     batch=v.batch, tgt_seq=v.tgt_seq, varied=[list(x) for x in v.varied], config=fields,
                     derived=derived, warmup=warmup, iters=iters, batch_file=batch_file, nanogpt=nanogpt)
          rec = run_point(job, work_dir, timeout_s, torch_env if framework == "torch" else None)
          rec["huge_pages"] = ("off (tunable removed for the PyTorch processes)"
                               if framework == "torch" and pause else huge)
          if rec["status"] == "ok":
            rec.setdefault("tokens_per_step", _tokens(job))
            rec["train_tokens_per_sec"] = rec["tokens_per_step"] / rec["train_step_s"]
          records.append(rec)
          if verbose:
            _say(rec)
  return records


def _say(r: dict) -> None:
  where = f"{r['model']} seq={r['seq_len']} batch={r['batch_size']} {r['framework']}"
  if r["status"] == "ok":
    print(f"{where}: {r['train_tokens_per_sec']:,.0f} tok/s, peak RSS {r['peak_rss_bytes'] / 2 ** 20:,.0f} MiB"
          + (f", device peak {r['device_peak_bytes'] / 2 ** 20:,.0f} MiB" if r.get("device_peak_bytes") else "")
          + f" (pid {r['pid']}, {r['point_wall_s']:.0f} s, load {r.get('load_avg_start')})", flush=True)
  else:
    print(f"{where}: FAILED: {r['error']} ({r['point_wall_s']:.0f} s)", flush=True)
    tail = r.get("stderr_tail", "").strip().splitlines()[-6:]
    if tail:
      print("  | " + "\n  | ".join(tail), flush=True)


def header(command: str, machine_start: dict, machine_end: dict, records: list[dict]) -> str:
  """Returns the lines above the table: the command line, the machine, load averages at start and end."""
  tfm_rec = next((r for r in records if r["framework"] == "tfm" and r["status"] == "ok"), {})
  torch_rec = next((r for r in records if r["framework"] == "torch" and r["status"] == "ok"), {})
  avx = {True: "yes", False: "no", None: "unknown"}[machine_start.get("avx512")]
  lines = [
      f"command: `{command}`",
      f"machine: {machine_start.get('cpu_model')}, {machine_start.get('cpu_count')} CPUs, AVX-512: {avx}; "
      f"tfm on {tfm_rec.get('backend', '?')} ({tfm_rec.get('device_kind', '?')}), jax {machine_start.get('jax')}; "
      f"PyTorch {machine_start.get('torch')} on CPU ({torch_rec.get('torch_threads', '?')} threads)",
      f"load average (1, 5, 15 min): at start {machine_start.get('load_avg')}, at end {machine_end.get('load_avg')}",
      "peak RSS: getrusage(RUSAGE_SELF).ru_maxrss of each point's own process (tfm: JAX + Flax + tfm; PyTorch: "
      "torch alone); tok/s: median of the timed training steps (AdamW, float32)",
  ]
  return "\n".join(lines)


def run_scaling_cli(args, command: str, variants: list) -> int:
  """The `python -m tfm.bench torch` command (per-point processes); returns the exit status (0: table written,
  failed points included)."""
  from tfm.bench import device as dev  # noqa: PLC0415
  from tfm.bench import report  # noqa: PLC0415
  start = dev.machine_info()
  records = run_scaling(variants, warmup=args.warmup, iters=args.iters, rounds=args.rounds,
                        nanogpt=not args.no_nanogpt, timeout_s=args.point_timeout or None,
                        pause_torch_huge_pages=args.pause_torch_huge_pages)
  end = dev.machine_info()
  for r in records:
    r["command"] = command
    r["cpu_model"] = start["cpu_model"]
    r["avx512"] = start["avx512"]
    r["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  rows = report.scaling_rows(records)
  text = header(command, start, end, records) + "\n\n" + report.scaling_table(rows)
  print()
  print(text)
  json_path, csv_path = report.write_records(records, args.out, "results")
  with open(os.path.join(args.out, "scaling.md"), "w") as f:
    f.write(text + "\n")
  plot = report.plot_scaling(rows, os.path.join(args.out, "scaling.png"),
                             title=f"tfm vs PyTorch on {start.get('cpu_model')}, load {start.get('load_avg')}")
  print(f"\nwrote {json_path}, {csv_path}, {os.path.join(args.out, 'scaling.md')}" + (f", {plot}" if plot else ""))
  return 0


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == POINT_FLAG:
  # A point process: run by path (sys.path[0] is then this folder, whose module names, such as `generate`
  # and `step`, must not shadow anything), the tfm package importable through PYTHONPATH.
  sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
  sys.exit(_point_main(sys.argv[2], sys.argv[3]))
