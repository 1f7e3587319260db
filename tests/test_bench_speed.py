"""`python -m tfm.bench speed` on a tiny model writes its table, CSV, JSON and plot; spec parsing."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from tfm.bench.specs import parse_spec, split_specs
from tfm.bench.speed import expand_variants
from tfm.flops import model_flops

REQUIRED = ("model", "seq_len", "batch_size", "dtype", "train_tokens_per_sec", "forward_tokens_per_sec",
            "flops_per_token", "mfu", "peak_flops", "compile_s", "peak_memory_bytes")


def test_speed_command_writes_table_csv_json_and_plot(tmp_path):
  out = tmp_path / "bench"
  cmd = [sys.executable, "-m", "tfm.bench", "speed", "--models", "gpt2-tiny:num_layers=1,t5-tiny:num_layers=1,seq=16",
         "--seq", "16,32", "--batch", "2", "--warmup", "1", "--iters", "2", "--out", str(out)]
  start = time.perf_counter()
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  wall_s = time.perf_counter() - start
  assert res.returncode == 0, res.stderr[-3000:]
  assert "| model | seq |" in res.stdout and "train tok/s" in res.stdout
  records = json.loads((out / "results.json").read_text())
  assert [(r["model"], r["seq_len"]) for r in records] == [
      ("gpt2-tiny:num_layers=1", 16), ("gpt2-tiny:num_layers=1", 32), ("t5-tiny:num_layers=1", 16)]
  for r in records:
    for key in REQUIRED:
      assert r[key] is not None, (key, r)
    assert r["train_tokens_per_sec"] > 0 and r["forward_tokens_per_sec"] > 0
    assert r["peak_flops"] > 1e8 and 0 < r["compile_s"] < wall_s
    # timings are real: the median lies among the timed steps, which fit in the command's wall time
    assert r["train_step_min_s"] <= r["train_step_s"] <= r["train_step_max_s"] and r["iters"] == 2
    assert r["train_step_s"] * r["iters"] < wall_s
    # MFU from its parts: the model's FLOPs per token (tfm.flops, computed here) x tokens/s / the run's peak
    config = parse_spec(r["model"]).config
    flops = model_flops(config, r["batch_size"], r["seq_len"], r["tgt_len"])
    assert r["flops_per_token"] == flops.train_per_token and r["train_flops_per_step"] == flops.train
    assert r["train_tokens_per_sec"] == pytest.approx(flops.tokens / r["train_step_s"], rel=1e-12)
    assert r["mfu"] == pytest.approx(flops.train_per_token * r["train_tokens_per_sec"] / r["peak_flops"], rel=1e-9)
    assert r["mfu_local"] == pytest.approx(flops.train / r["train_step_s"] / r["peak_flops_local"], rel=1e-9)
    assert 0 < r["mfu"] < 1 and 0 < r["mfu_local"] < 1  # a tiny model is far below one matmul's peak
    assert r["peak_memory_bytes"] > 10 * 2 ** 20  # a JAX process holds more than 10 MiB
    assert r["tokens_per_step"] == 2 * (r["seq_len"] + (r["tgt_len"] or 0))
  assert records[2]["tgt_len"] == 4 and records[2]["num_layers"] == 1  # decoder length seq // 4
  rows = list(csv.DictReader(open(out / "results.csv")))
  assert len(rows) == 3 and set(REQUIRED) <= set(rows[0])
  png = (out / "speed.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_model_specs_and_flags():
  assert split_specs("gpt2-small:scan_layers=True,remat=full,bert-tiny") == [
      "gpt2-small:scan_layers=True,remat=full", "bert-tiny"]
  spec = parse_spec("gpt2-small:scan_layers=True,seq=64,batch=3", dtype="bfloat16", remat="dots")
  assert spec.config.scan_layers and spec.config.dtype == "bfloat16" and spec.config.remat == "dots"
  assert spec.shapes([128, 256], [8]) == [(64, 3, None)]  # per-model keys beat the command line
  assert parse_spec("gpt-nano").shapes([], []) == [(256, 8, None)]  # the baseline shape
  assert parse_spec("t5-4l-256").shapes([], []) == [(128, 8, 32)]
  assert parse_spec("bert-cls-4l-256").config.num_labels == 2
  variants = expand_variants("gpt2-tiny", [16], [2], dtypes=["float32", "bfloat16"], attentions=["reference"])
  assert [v.spec.config.dtype for v in variants] == ["float32", "bfloat16"]
  assert all(v.spec.config.attention_impl == "reference" for v in variants)
  assert variants[1].label == "gpt2-tiny [dtype=bfloat16]"
  # learned positions shorter than the benchmark sequence are extended (and said so), never truncated
  assert expand_variants("gpt2-tiny", [256], [1])[0].spec.config.max_len == 256
  with pytest.raises(ValueError, match="unknown model"):
    parse_spec("gpt5")
  with pytest.raises(ValueError, match="remat"):
    parse_spec("gpt2-tiny:remat=sometimes")
  with pytest.raises(ValueError, match="field=value"):
    parse_spec("gpt2-tiny:scan_layers")
