"""train.py end to end on 8 fake CPU devices, dropout 0.1 on: jit over mesh (data=4, fsdp=2) and pmap
give the single-device run's train loss (summary.json) within 1e-4 and its parameters and optimizer
state and moving average (the final checkpoints) within 1e-5 after the same steps; the mesh run's checkpoint then
resumes on one device.

Each run is a separate `python train.py` process (the device count is fixed when JAX starts).
"""

import json
import os
import subprocess
import sys

from parallel_worker import max_diff, run_state  # tests/ is on the path under pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.path.dirname(ROOT), "shared", "data", "tiny_shakespeare")
# The command, cut to a few steps of a small model so three runs take seconds each.
ARGS = ["--config", os.path.join(ROOT, "configs", "gpt_shakespeare_char.py"),
        f"--config.data.manual_dir={SHAKESPEARE}", "--config.train.steps=3", "--config.train.batch_size=16",
        "--config.data.seq_len=32", "--config.train.eval_batches=2", "--config.train.sample_tokens=0",
        "--config.train.progress=False", "--config.model_overrides.num_layers=1",
        "--config.model_overrides.d_model=64", "--config.model_overrides.d_ff=128",
        "--config.model_overrides.dropout_rate=0.1",  # the masks follow each example's global row: any topology
        "--config.optimizer.ema_decay=0.9"]  # the moving average is sharded like the params and checkpointed


def train(tmp_path, name: str, devices: int, *extra) -> dict:
  """Runs train.py with `devices` fake CPU devices; returns its summary.json."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
      ["--xla_backend_optimization_level=0"] + ([f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else [])))
  env.pop("TFM_DISTRIBUTED", None)
  workdir = tmp_path / name
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, f"--config.data.data_dir={tmp_path / 'tfds'}",
         f"--workdir={workdir}", *extra]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  summary["log"] = proc.stdout
  return summary


def test_train_py_on_mesh_and_pmap_matches_single_device(tmp_path):
  single = train(tmp_path, "single", 1)
  mesh = train(tmp_path, "mesh", 8, "--config.mesh.data=4", "--config.mesh.fsdp=2")
  pmap = train(tmp_path, "pmap", 8, "--config.parallel=pmap")
  assert "jit on cpu" in single["log"]
  assert "jit over mesh {'data': 4, 'fsdp': 2, 'tensor': 1}" in mesh["log"]
  assert "pmap over 8 local devices" in pmap["log"]
  for run in (mesh, pmap):
    assert run["steps"] == single["steps"] == 3
    assert run["tokens_seen"] == single["tokens_seen"]
    assert abs(run["train_loss"] - single["train_loss"]) <= 1e-4, (run["train_loss"], single["train_loss"])
    assert abs(run["eval_loss"] - single["eval_loss"]) <= 1e-4, (run["eval_loss"], single["eval_loss"])
  # The final checkpoints (written from 8 devices, read here on one): parameters and optimizer state.
  ref = run_state(tmp_path / "single")
  for name in ("mesh", "pmap"):
    state = run_state(tmp_path / name)
    assert int(state["step"]) == int(ref["step"]) == 3
    for part in ("params", "opt_state", "ema_params"):
      assert max_diff(state[part], ref[part]) <= 1e-5, (name, part, max_diff(state[part], ref[part]))
  # The mesh run's checkpoint (step 3, written from 8 devices) resumes on one device for 2 more steps.
  resumed = train(tmp_path, "mesh", 1, "--config.train.steps=5")
  assert "resumed from" in resumed["log"] and "could not be read" not in resumed["log"], resumed["log"][-2000:]
  assert resumed["steps"] == 5 and resumed["tokens_seen"] > mesh["tokens_seen"]
