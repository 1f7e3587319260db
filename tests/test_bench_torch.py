"""The PyTorch counterparts of `python -m tfm.bench torch` are the same architecture as the tfm model."""

import jax
import numpy as np
import pytest

import tfm
from tfm.bench.step import make_steps, random_batch

torch = pytest.importorskip("torch")
from tfm.bench import torch_ref  # noqa: E402

CASES = ["gpt2-tiny", "llama-test", "bert-tiny:num_labels=2", "bert-tiny", "t5-tiny", "t5-v1_1-tiny"]


@pytest.mark.parametrize("spec", CASES)
def test_hf_counterpart_has_the_same_parameter_count(spec):
  from tfm.bench.specs import parse_spec
  c = parse_spec(spec).config
  model = tfm.build(c)
  ids = np.ones((1, 8), np.int32)
  kw = {"decoder_input_ids": ids} if c.family == "encoder_decoder" else {}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, **kw)["params"])
  _, hf = torch_ref.build_hf(c)
  untied_head = 0
  if c.family == "encoder_decoder" and not c.tie_embeddings:
    # transformers 5.x T5Config forces tie_word_embeddings=True (it keeps the flag only to decide the
    # logit scaling), so the PyTorch T5 v1.1 shares its LM head with the embedding: same FLOPs, fewer params.
    untied_head = c.vocab_size * c.d_model
  assert sum(p.numel() for p in hf.parameters()) + untied_head == tfm.count_params(params)


def test_handwritten_gpt_matches_and_the_torch_step_learns():
  c = tfm.get_config("gpt2-tiny", num_layers=1)
  gpt = torch_ref._torch_gpt_class()(c)
  _, hf = torch_ref.build_hf(c)
  assert sum(p.numel() for p in gpt.parameters()) == sum(p.numel() for p in hf.parameters())
  runner = torch_ref.TorchRunner("nanoGPT", gpt, random_batch(c, 2, 16), hf=False)
  first = float(runner._loss().detach())
  runner.time(warmup=1, iters=3)
  assert len(runner.train_ts) == 3 and len(runner.fwd_ts) == 3
  assert runner.loss < first  # the same batch six times: AdamW must lower its loss


def test_unsupported_config_is_named():
  with pytest.raises(ValueError, match="no transformers counterpart"):
    torch_ref.build_hf(tfm.get_config("bart-tiny"))


def test_scaling_study_measures_each_point_in_its_own_process(tmp_path):
  """`python -m tfm.bench torch` over two lengths: four point processes, each with its own pid and peak RSS."""
  import csv
  import json
  import os
  import subprocess
  import sys
  out = tmp_path / "scaling"
  cmd = [sys.executable, "-m", "tfm.bench", "torch", "--models", "gpt2-tiny:num_layers=1,d_model=32", "--seq", "16,32",
         "--batch", "1", "--warmup", "1", "--iters", "1", "--out", str(out)]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  # the command line and the machine above the table, then one row per length with both frameworks' numbers
  assert "command: `python -m tfm.bench torch --models gpt2-tiny" in stdout
  assert "AVX-512: " in stdout and "load average (1, 5, 15 min): at start " in stdout
  assert ("| model | seq | batch | tfm attention | tfm tok/s | torch tok/s | ratio (tfm/torch) | tfm peak RSS MiB | "
          "torch peak RSS MiB | memory ratio (tfm/torch) |") in stdout
  rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| gpt2-tiny")]
  assert [r[1].strip() for r in rows] == ["16", "32"]
  for r in rows:
    assert all(float(c.replace(",", "")) > 0 for c in r[4:10]), r  # tok/s, ratio, RSS, memory ratio: numbers
  records = json.loads((out / "results.json").read_text())
  assert [(r["framework"], r["seq_len"]) for r in records] == [("tfm", 16), ("torch", 16), ("tfm", 32), ("torch", 32)]
  pids = [r["pid"] for r in records]
  assert len(set(pids)) == 4 and proc.pid not in pids and os.getpid() not in pids  # a fresh process per point
  for r in records:
    assert r["status"] == "ok" and r["train_tokens_per_sec"] > 0 and r["iters"] == 1
    # ru_maxrss of the point's process: above what its imports alone took, which a Python with JAX or torch
    # makes more than 100 MiB
    assert r["peak_rss_bytes"] >= r["rss_after_imports_bytes"] > 100 * 2 ** 20
    assert r["jax_imported"] == (r["framework"] == "tfm")  # the PyTorch processes hold no JAX
  assert {r["torch_model"] for r in records if r["framework"] == "torch"} == {"torch nanoGPT-style"}
  assert {r["attention_path"] for r in records if r["framework"] == "tfm"} == {"xla"}  # "auto" on CPU, short keys
  assert len(list(csv.DictReader(open(out / "results.csv")))) == 4
  assert "| gpt2-tiny" in (out / "scaling.md").read_text()
  png = (out / "scaling.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_failed_point_is_recorded_and_the_table_says_so():
  from tfm.bench import report
  from tfm.bench.scaling import _failure
  assert "out of memory" in _failure(-9, "", None)  # SIGKILL: what the OOM killer sends
  assert _failure(1, "Traceback...\njaxlib.XlaRuntimeError: RESOURCE_EXHAUSTED: 9 GiB", None).startswith(
      "out of memory: ")
  assert _failure(None, "", 60) == "timed out after 60 s"
  base = dict(model="m", seq_len=8192, batch_size=1, tgt_len=None, attention="auto")
  records = [dict(base, framework="tfm", status="ok", train_tokens_per_sec=1000.0, peak_rss_bytes=2 ** 30, pid=1,
                  attention_path="blockwise"),
             dict(base, framework="torch", status="failed", error="killed by SIGKILL (out of memory?)")]
  [row] = report.scaling_rows(records)
  assert row["tfm_tokens_per_sec"] == 1000.0 and row["torch_failed"] and row["tokens_ratio"] is None
  table = report.scaling_table([row])
  assert "| m | 8192 | 1 | auto → blockwise | 1,000 | failed | - | 1,024 | failed | - | torch: killed" in table
