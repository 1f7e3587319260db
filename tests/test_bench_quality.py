"""`python -m tfm.bench quality`: config paths, the variant grid, and (slow) an end-to-end two-variant run."""

import json
import subprocess
import sys

import pytest

from tfm.bench import quality


def test_vary_and_set_paths_reach_the_model_overrides():
  config = quality.load_config("configs/gpt_shakespeare_char.py")
  grid = quality.parse_vary(["model.position=learned,rope,alibi", "model.mlp=gelu,swiglu"])
  assert grid == [("model.position", ["learned", "rope", "alibi"]), ("model.mlp", ["gelu", "swiglu"])]
  quality.set_field(config, "model.position", "rope")
  quality.set_field(config, "train.steps", 7)
  assert config.model_overrides.position == "rope" and config.train.steps == 7
  with pytest.raises(ValueError, match="model.positon"):
    quality.set_field(config, "model.positon", "rope")
  with pytest.raises(ValueError, match="field=value1"):
    quality.parse_vary(["model.position"])
  assert quality.variant_name([("model.position", "rope"), ("model.mlp", "swiglu")]) == "position=rope,mlp=swiglu"
  # the equal-FLOPs budget: a gated MLP (3 matrices) costs more per step than a plain one (2)
  quality.set_field(config, "model.mlp", "gelu")
  plain = quality.flops_per_step(config)
  quality.set_field(config, "model.mlp", "swiglu")
  assert quality.flops_per_step(config) > plain


@pytest.mark.slow
def test_quality_command_trains_two_variants(tmp_path):
  cmd = [sys.executable, "-m", "tfm.bench", "quality", "--config", "configs/default.py",
         "--vary", "model.position=learned,rope", "--set", "train.batch_size=4", "--set", "data.seq_len=32",
         "--set", "train.eval_batches=2", "--set", "train.eval_every=3", "--set", "train.log_every=2",
         "--steps", "6", "--out", str(tmp_path)]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  records = json.loads((tmp_path / "quality.json").read_text())
  assert [r["variant"] for r in records] == ["position=learned", "position=rope"]
  for r in records:
    assert [p["step"] for p in r["eval_curve"]] == [3, 6] and r["eval_loss"] < 5.6  # log(259) = 5.56
  assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"
  assert "final eval loss" in res.stdout
