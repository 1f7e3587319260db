"""Generation speed: tfm.generate vs Hugging Face generate() in PyTorch, same weights, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python -m tfm.bench_generate [--batches 1,8 --iters 7 --no-torch]

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


def _tfm_model(hf):
  """Returns (tfm model, params) holding the weights of `hf`."""
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    config, params = tfm.from_pretrained(d)
  return tfm.build(config), params


def _median(xs):
  return float(statistics.median(xs))


def run(batches=(1, 8), prompt_len: int = 32, new_tokens: int = 128, iters: int = 7, torch_side: bool = True,
        log=print) -> dict:
  """Returns {"results": [...], "summary": {...}, ...}: tokens/s of tfm (and HF) per batch size."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import torch
  hf = _hf_model()
  model, params = _tfm_model(hf)
  out = {"bench": "generate", "config": dict(GPT_NANO, prompt_len=prompt_len, new_tokens=new_tokens),
         "jax_version": jax.__version__, "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
         "load_avg_before": os.getloadavg(), "results": []}
  g = np.random.default_rng(0)
  for batch in batches:
    ids = g.integers(1, GPT_NANO["vocab_size"], (batch, prompt_len))

    def tfm_call():
      return np.asarray(tfm.generate(model, params, ids, max_new_tokens=new_tokens))

    def hf_call():
      with torch.inference_mode():
        o = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                        eos_token_id=None, pad_token_id=0)
      return o[:, prompt_len:].numpy()

    t0 = time.perf_counter()
    ours = tfm_call()  # compile + first run
    compile_s = time.perf_counter() - t0
    same = None
    sides = {"tfm": tfm_call}
    if torch_side:
      same = bool(np.array_equal(ours, hf_call()))
      sides["hf_generate"] = hf_call
    times = {k: [] for k in sides}
    for _ in range(iters):
      for name, fn in sides.items():
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
      med = _median(ts)
      r = dict(method=name, batch=batch, median_s=med, min_s=min(ts), max_s=max(ts), n=len(ts),
               tokens_per_s=batch * new_tokens / med, ms_per_step=med / new_tokens * 1e3, greedy_outputs_match=same)
      if name == "tfm":
        r["compile_and_first_call_s"] = compile_s
      out["results"].append(r)
      log(f"{name:12s} batch {batch:2d}: {med * 1e3:8.1f} ms per generate  {r['tokens_per_s']:8.1f} tok/s  "
          f"{r['ms_per_step']:.2f} ms/step  (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f})  match={same}")
  out["load_avg_after"] = os.getloadavg()
  summary = {f"{r['method']}_b{r['batch']}_tok_per_s": round(r["tokens_per_s"], 1) for r in out["results"]}
  if torch_side:
    for batch in batches:
      summary[f"speedup_b{batch}"] = round(summary[f"tfm_b{batch}_tok_per_s"] / summary[f"hf_generate_b{batch}_tok_per_s"], 2)
  out["summary"] = summary
  return out


def main(argv: Optional[list] = None) -> None:
  """Parses flags, runs the benchmark, prints a table and the JSON result."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--iters", type=int, default=7, help="timed calls per side and batch (median reported)")
  p.add_argument("--no-torch", action="store_true", help="time tfm only")
  args = p.parse_args(argv)
  out = run(tuple(int(b) for b in args.batches.split(",")), args.prompt_len, args.new_tokens, args.iters,
            torch_side=not args.no_torch)
  print(f"load average before {out['load_avg_before']}, after {out['load_avg_after']} (2 cores; others share them)")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
