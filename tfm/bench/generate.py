"""Generation speed: tfm.generate vs Hugging Face generate() in PyTorch, same weights, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python -m tfm.bench.generate [--batches 1,8 --iters 7 --no-torch]

Model: the 6-layer, 384-wide, 6-head GPT (vocab 65, 256 positions; the shape of
../shared/bench/bench_generate_torch.py). A GPT2LMHeadModel with random weights is built by
`transformers`, saved, and loaded into tfm with `tfm.from_pretrained`, so both sides run the same
model. Prompt: 32 random tokens; exactly 128 new tokens, greedy, no EOS, float32, KV cache.
tokens/s = batch * new tokens / wall time of one generate() call (prompt pass included, compile
excluded: one warm-up call first). The two sides alternate call by call, so machine load (other
processes share the CPU) hits both alike; medians of `--iters` calls are reported, with the load
average before and after. Last stdout line: one JSON object. `run(...)` returns the same dict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

import jax
import numpy as np

import tfm

GPT_NANO = dict(n_layer=6, n_head=6, n_embd=384, n_positions=256, vocab_size=65)


def _hf_model():
  """Returns the random-weight HF GPT2LMHeadModel of the benchmark (dropout off, eval mode)."""
  import torch
  import transformers
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(**GPT_NANO, bos_token_id=0, eos_token_id=0, pad_token_id=0, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0)
  return transformers.GPT2LMHeadModel(cfg).eval()


def torch_worker(directory: str, threads: int = 0) -> None:
  """Saves the HF model into `directory`, then answers generate requests (JSON lines on stdin)."""
  import torch
  if threads:
    torch.set_num_threads(threads)
  hf = _hf_model()
  hf.save_pretrained(directory)
  print(json.dumps({"ready": True, "torch_version": torch.__version__, "threads": torch.get_num_threads()}),
        flush=True)
  for line in sys.stdin:
    req = json.loads(line)
    ids = torch.tensor(req["ids"])
    t0 = time.perf_counter()
    with torch.inference_mode():
      o = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=req["new"],
                      min_new_tokens=req["new"], do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "tokens": o[:, ids.shape[1]:].tolist()}), flush=True)


class _TorchSide:
  """The PyTorch worker process: `call(ids, new)` returns (seconds, new tokens)."""

  def __init__(self, directory: str, threads: int = 0):
    self.proc = subprocess.Popen([sys.executable, "-m", "tfm.bench.generate", "--torch-worker", directory,
                                  "--torch-threads", str(threads)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    self.info = json.loads(self._readline())

  def _readline(self) -> str:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker exited (code {self.proc.wait()}); see its stderr above")
    return line

  def call(self, ids: np.ndarray, new: int):
    self.proc.stdin.write(json.dumps({"ids": ids.tolist(), "new": new}) + "\n")
    self.proc.stdin.flush()
    r = json.loads(self._readline())
    return r["seconds"], np.asarray(r["tokens"])

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _median(xs):
  return float(statistics.median(xs))


def run(batches=(1, 8), prompt_len: int = 32, new_tokens: int = 128, iters: int = 7, torch_side: bool = True,
        torch_threads: int = 0, log=print) -> dict:
  """Returns {"results": [...], "summary": {...}, ...}: tokens/s of tfm (and HF) per batch size."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  tmp = tempfile.TemporaryDirectory()
  if torch_side:
    torch = _TorchSide(tmp.name, torch_threads)  # writes the HF model into tmp
  else:
    _hf_model().save_pretrained(tmp.name)
  config, params = tfm.from_pretrained(tmp.name)
  model = tfm.build(config)
  out = {"bench": "generate", "config": dict(GPT_NANO, prompt_len=prompt_len, new_tokens=new_tokens),
         "jax_version": jax.__version__, "load_avg_before": os.getloadavg(), "results": []}
  if torch_side:
    out["torch"] = torch.info
  g = np.random.default_rng(0)
  for batch in batches:
    ids = g.integers(1, GPT_NANO["vocab_size"], (batch, prompt_len))

    def tfm_call():
      t0 = time.perf_counter()
      toks = np.asarray(tfm.generate(model, params, ids, max_new_tokens=new_tokens))
      return time.perf_counter() - t0, toks

    compile_s, ours = tfm_call()  # compile + first run
    same = None
    sides = {"tfm": tfm_call}
    if torch_side:
      _, theirs = torch.call(ids, new_tokens)  # warm-up
      same = bool(np.array_equal(ours, theirs))
      sides["hf_generate"] = lambda: torch.call(ids, new_tokens)
    times = {k: [] for k in sides}
    for _ in range(iters):
      for name, fn in sides.items():
        times[name].append(fn()[0])
    for name, ts in times.items():
      med = _median(ts)
      r = dict(method=name, batch=batch, median_s=med, min_s=min(ts), max_s=max(ts), n=len(ts),
               tokens_per_s=batch * new_tokens / med, ms_per_step=med / new_tokens * 1e3, greedy_outputs_match=same)
      if name == "tfm":
        r["compile_and_first_call_s"] = compile_s
      out["results"].append(r)
      log(f"{name:12s} batch {batch:2d}: {med * 1e3:8.1f} ms per generate  {r['tokens_per_s']:8.1f} tok/s  "
          f"{r['ms_per_step']:.2f} ms/step  (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})  match={same}")
  if torch_side:
    torch.close()
  tmp.cleanup()
  out["load_avg_after"] = os.getloadavg()
  summary = {f"{r['method']}_b{r['batch']}_tok_per_s": round(r["tokens_per_s"], 1) for r in out["results"]}
  if torch_side:
    for batch in batches:
      summary[f"speedup_b{batch}"] = round(summary[f"tfm_b{batch}_tok_per_s"] / summary[f"hf_generate_b{batch}_tok_per_s"], 2)
  out["summary"] = summary
  return out


def main(argv: Optional[list] = None) -> None:
  """Parses flags, runs the benchmark, prints a table and the JSON result."""
  p = argparse.ArgumentParser(prog="python -m tfm.bench.generate", description=__doc__.split("\n")[0])
  p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--iters", type=int, default=7, help="timed calls per side and batch (median reported)")
  p.add_argument("--no-torch", action="store_true", help="time tfm only")
  p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads for HF (0: torch's default)")
  p.add_argument("--torch-worker", metavar="DIR", help=argparse.SUPPRESS)  # internal: the PyTorch process
  args = p.parse_args(argv)
  if args.torch_worker:
    torch_worker(args.torch_worker, args.torch_threads)
    return
  out = run(tuple(int(b) for b in args.batches.split(",")), args.prompt_len, args.new_tokens, args.iters,
            torch_side=not args.no_torch, torch_threads=args.torch_threads)
  print(f"load average before {out['load_avg_before']}, after {out['load_avg_after']} (2 cores; others share them)")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
