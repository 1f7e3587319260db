"""tfm.parallel: meshes, shardings, jit over (data, fsdp, tensor) and pmap == one device, checkpoints
across topologies, gradient accumulation on a mesh.

The multi-device checks run tests/parallel_worker.py in a subprocess with 8 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts, and the rest of
the suite runs with one device). The reference for every equality is tfm's train step under a plain
jax.jit on one device, without a mesh.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tfm import parallel as par

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "parallel_worker.py")
# Backend optimisation level 0: these programs run for milliseconds and compile for seconds; the
# SPMD partitioner (what is under test) runs all the same. The reference runs with the same flags.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def run_worker(cmd: str, devices: int = 8, timeout: int = 600, **args) -> dict:
  """Runs the worker command with `devices` fake CPU devices; returns its RESULT dict."""
  env = dict(os.environ)
  flags = [FAST_COMPILE] + ([f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else [])
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("TFM_DISTRIBUTED", None)
  proc = subprocess.run([sys.executable, WORKER, cmd, json.dumps(args)], capture_output=True, text=True,
                        env=env, timeout=timeout)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"worker {cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return json.loads(lines[-1][len("RESULT "):])


# Pure functions (this process, one device) ---------------------------------------------------------

def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
  assert par.mesh_shape(-1, 2, 1, num_devices=8) == (4, 2, 1)
  assert par.mesh_shape(2, -1, 2, num_devices=8) == (2, 2, 2)
  assert par.mesh_shape(1, 1, 8, num_devices=8) == (1, 1, 8)
  with pytest.raises(ValueError, match="at most one"):
    par.mesh_shape(-1, -1, 1, num_devices=8)
  with pytest.raises(ValueError, match="must equal the device count"):
    par.mesh_shape(2, 2, 1, num_devices=8)
  with pytest.raises(ValueError, match="does not divide"):
    par.mesh_shape(-1, 3, 1, num_devices=8)
  with pytest.raises(ValueError, match="mesh.tensor"):
    par.mesh_shape(8, 1, 0, num_devices=8)
  mesh = par.make_mesh()  # one device here: data=1 after the default -1... or 1
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}


def test_distributed_plan_reads_the_environment():
  assert par.distributed_plan({}) is None
  assert par.distributed_plan({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
                               "JAX_PROCESS_ID": "1"}) == dict(coordinator_address="10.0.0.1:1234",
                                                               num_processes=2, process_id=1)
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    par.distributed_plan({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}
  assert par.distributed_plan(slurm) == {}
  assert par.distributed_plan(dict(slurm, SLURM_NTASKS="1")) is None  # one task: single process
  assert par.distributed_plan({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}) == {}
  assert par.distributed_plan({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert par.distributed_plan({"OMPI_MCA_orte_hnp_uri": "x"}) == {}
  assert par.distributed_plan(dict(slurm, TFM_DISTRIBUTED="off")) is None
  assert par.distributed_plan({"TFM_DISTRIBUTED": "on"}) == {}
  with pytest.raises(ValueError, match="TFM_DISTRIBUTED"):
    par.distributed_plan({"TFM_DISTRIBUTED": "yes"})
  assert par.initialize_distributed({}) is False  # nothing asked: no initialisation
  assert par.process_batch_slice(8) == slice(0, 8)  # one process reads the whole batch


def test_logical_rules_default_and_from_config():
  from tfm.axes import DEFAULT_RULES
  assert par.logical_rules() == tuple(DEFAULT_RULES)
  rules = par.logical_rules({"logical_axis_rules": [["batch", ["data"]], ["mlp", "tensor"], ["embed", None]]})
  assert rules == (("batch", ("data",)), ("mlp", "tensor"), ("embed", None))
  with pytest.raises(ValueError, match=r"logical_axis_rules\[0\]"):
    par.logical_rules({"logical_axis_rules": [["batch"]]})
  assert tuple(par.batch_spec()) == (("data", "fsdp"),)


def test_split_batch_and_replicate():
  batch = {"x": np.arange(12).reshape(6, 2)}
  out = par.split_batch(batch, num_devices=3)
  assert out["x"].shape == (3, 2, 2) and out["x"][1, 0, 0] == 4
  with pytest.raises(ValueError, match="not divisible by the 4 local devices"):
    par.split_batch(batch, num_devices=4)
  rep = par.replicate({"w": np.ones((2, 3), np.float32)})
  assert rep["w"].shape == (2, 3) and rep["w"].sharding.is_fully_replicated
  assert len(rep["w"].sharding.device_set) == jax.local_device_count()


# Multi-device (subprocess, 8 fake CPU devices) -----------------------------------------------------

# Without dropout the decoder / encoder-decoder / blockwise cases are the dropout-0.1 ones minus the
# masks: they run in the slow suite; the encoder (no dropout case) stays in the default one.
_SLOW = pytest.mark.slow
@pytest.mark.parametrize("family,attention,dropout", [
    pytest.param("decoder", "auto", 0.0, marks=_SLOW), ("encoder", "auto", 0.0),
    pytest.param("encoder_decoder", "auto", 0.0, marks=_SLOW), pytest.param("decoder", "blockwise", 0.0, marks=_SLOW),
    ("decoder", "auto", 0.1), ("encoder_decoder", "auto", 0.1), ("decoder", "blockwise", 0.1)])
def test_meshes_and_pmap_equal_single_device(family, attention, dropout):
  """Three steps on (8,1,1), (2,4,1), (2,2,2), (1,1,8) and pmap over 8 == one device (1e-5): losses,
  parameters and optimizer state; blockwise attention with blocks of 6 tokens (rows of 16 in two
  packed documents: ragged blocks across both). With hidden and attention dropout 0.1 too: each
  example's masks follow its global row, so every split of the batch draws the same ones."""
  block = 6 if attention == "blockwise" else 0
  out = run_worker("equivalence", family=family, steps=3, attention_impl=attention, block=block, dropout=dropout)
  assert set(out["runs"]) == {"(8, 1, 1)", "(2, 4, 1)", "(2, 2, 2)", "(1, 1, 8)", "pmap"}
  assert out["ref_losses"][-1] < out["ref_losses"][0]  # it trains
  if dropout:
    assert out["no_dropout_params"] > 1e-3, out  # dropout is on: without it the parameters end elsewhere
  for run, diff in out["runs"].items():
    assert diff["loss"] <= 1e-5, (family, run, diff)
    assert diff["params"] <= 1e-5, (family, run, diff)
    assert diff["opt_state"] <= 1e-5, (family, run, diff)


def test_shardings_are_real_and_fsdp_saves_memory():
  out = run_worker("shardings")
  m = out["mesh222"]
  # MLP kernel [embed, mlp]: embed over fsdp, mlp over tensor; each device holds a quarter.
  assert m["wi_spec"] == ["fsdp", "tensor"] and m["wi_shard"] == [m["wi_shape"][0] // 2, m["wi_shape"][1] // 2]
  # Token embedding [vocab, embed]: vocabulary-parallel over tensor, embed over fsdp.
  assert m["emb_spec"] == ["tensor", "fsdp"] and m["emb_shard"] == [m["emb_shape"][0] // 2, m["emb_shape"][1] // 2]
  assert m["mu_wi_spec"] == ["fsdp", "tensor"]  # Adam's moments follow their parameter
  f = out["fsdp4"]
  # Bytes device 0 really holds (its shards of params + optimizer state) with fsdp = 4.
  assert f["device0_bytes"] <= 0.30 * f["full_bytes"], f
  assert f["report_total"][1] <= 0.30 * f["report_total"][0]
  assert abs(f["report_total"][1] - f["device0_bytes"]) <= 64  # the report agrees (scalars aside)
  # The compiled sharded init (XLA's memory analysis of one device's program): its outputs are the
  # shards, its temporaries are smaller than the unsharded params, so no device holds the model.
  assert f["init_output_bytes"] <= 0.30 * f["full_bytes"]
  assert f["init_temp_bytes"] < f["report_params"][0]
  assert f["init_output_bytes"] + f["init_temp_bytes"] <= 0.5 * f["full_bytes"]
  # The printed report: the mesh, a row per array (path, shape, spec, per-device shape), the byte totals.
  lines = f["report_lines"]
  assert lines[0] == "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} over 8 devices"
  assert lines[1].split() == ["array", "shape", "sharding", "per", "device"]
  rows = {l.split()[0]: l.split(None, 1)[1] for l in lines[2:] if not l.split()[0].endswith(":")}
  vocab, embed = m["emb_shape"]
  emb_row = f"({vocab},{embed})('tensor','fsdp')({vocab},{embed // 4})"  # fsdp = 4 splits embed; tensor = 1
  assert rows["params/token_embed/embedding"].replace(" ", "") == emb_row
  assert rows["opt_state/1/0/mu/token_embed/embedding"] == rows["params/token_embed/embedding"]
  full, per = f["report_total"]
  assert lines[-1] == (f"total: {full / 2**20:.3f} MiB unsharded, {per / 2**20:.3f} MiB per device "
                       f"({100 * per / full:.1f} %)")
  sc = out["scan"]
  assert sc["wi_shape"] == [2, 64, 256] and sc["wi_spec"] == [None, "fsdp", "tensor"]
  assert sc["loss"] <= 1e-5 and sc["params"] <= 1e-5 and sc["opt_state"] <= 1e-5, sc
  # A dimension that does not divide gives an error naming the parameter, the axis and the mesh axis.
  assert "cannot shard params/decoder/layers/layer_0/self_attention/" in out["error"]
  assert "'tensor' of size 8" in out["error"] and "size 4" in out["error"]


def test_checkpoint_moves_across_topologies(tmp_path):
  """Save on (2,2,2); restore on (8,1,1) and in a one-device process: same params, optimizer state and eval loss."""
  directory = str(tmp_path / "run")
  saved = run_worker("save", family="decoder", directory=directory)
  assert saved["devices"] == 8 and saved["step"] == 2
  for shape, devices in (([8, 1, 1], 8), ([1, 1, 1], 1)):
    out = run_worker("restore", devices=devices, family="decoder", directory=directory, shape=shape)
    assert out["devices"] == devices and out["mesh_devices"] == devices and out["step"] == 2
    assert out["num_leaves"] == out["num_saved"] and out["num_params"] < out["num_leaves"]
    assert out["param_diff"] == 0.0 and out["opt_state_diff"] == 0.0  # bit-exact
    assert abs(out["eval_loss"] - saved["eval_loss"]) <= 1e-6, (shape, out["eval_loss"], saved["eval_loss"])


@pytest.mark.parametrize("family,k,dropout", [("encoder", 4, 0.0), ("decoder", 2, 0.1)])
def test_gradient_accumulation_equals_large_batch_on_every_path(family, k, dropout):
  """k micro-batches == one step on the k-times batch: one device, mesh (2,2,2), pmap (1e-5): losses,
  parameters, optimizer state; with dropout 0.1 too (the masks follow the rows, not the slices)."""
  out = run_worker("accumulation", family=family, k=k, dropout=dropout)
  assert set(out) == {"single", "(2, 2, 2)", "pmap"}
  for run, diff in out.items():
    assert diff["loss"] <= 1e-5 and diff["params"] <= 1e-5 and diff["opt_state"] <= 1e-5, (run, diff)


def test_two_processes_each_feeding_their_rows_equal_single_device(tmp_path):
  """A real multi-host run on one machine: 2 processes x 4 CPU devices joined by jax.distributed
  (JAX_COORDINATOR_ADDRESS etc., as a launcher sets them), meshes (2,2,2) and (1,1,8) over all 8
  devices, each process passing only the rows its devices hold, dropout 0.1; losses equal one
  device's (1e-5). Both processes save the (2,2,2) state (orbax, each its own shards); a one-device
  process restores it: parameters and optimizer state equal the one-device run's (1e-5).
  (tests/test_distributed.py: the same through train.py, killed and resumed; slow.)"""
  import socket
  directory = str(tmp_path / "run")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), XLA_FLAGS=f"{FAST_COMPILE} --xla_force_host_platform_device_count=4")
    env.pop("TFM_DISTRIBUTED", None)
    args = {"family": "decoder", "dropout": 0.1, "directory": directory}
    procs.append(subprocess.Popen([sys.executable, WORKER, "multiprocess", json.dumps(args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"process failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    outs.append(json.loads(lines[-1][len("RESULT "):]))
  assert [o["process"] for o in outs] == [0, 1] and all(o["joined"] and o["devices"] == 8 for o in outs)
  # Batch split over the processes: each loads only its half. Replicated (1,1,8): each needs all rows.
  assert [o["runs"]["(2, 2, 2)"]["rows"] for o in outs] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert [o["runs"]["(1, 1, 8)"]["rows"] for o in outs] == [list(range(8))] * 2
  ref = outs[0]["ref_losses"]
  for o in outs:
    assert o["local_devices"] == 4
    assert o["opt_state_sharded"] > 0  # each process held (and wrote) only its shards of the optimizer state
    for run in o["runs"].values():
      assert max(abs(a - b) for a, b in zip(run["losses"], ref)) <= 1e-5, (run, ref)
  out = run_worker("restore", devices=1, family="decoder", directory=directory, shape=[1, 1, 1])
  assert out["step"] == 2 and out["num_leaves"] == out["num_saved"]
  assert out["param_diff"] <= 1e-5 and out["opt_state_diff"] <= 1e-5, out
  assert abs(out["eval_loss"] - outs[0]["ref_eval_loss"]) <= 1e-5


def test_sharding_plan_needs_no_devices():
  """The report helper plans any mesh from shapes alone (AbstractMesh): here 64 devices on one CPU."""
  import tfm
  state, shardings, mesh = par.plan(tfm.get_config("llama-1b"), data=2, fsdp=8, tensor=4)  # shapes only
  mem = par.memory_per_device(state, shardings)
  assert mesh.size == 64 and set(mem) == {"params", "opt_state", "total"}
  assert mem["params"][0] > 4e9  # 1.2 B float32 parameters
  assert mem["total"][1] <= mem["total"][0] / 32 * 1.01  # 32-way (fsdp x tensor) for nearly every byte
  text = par.sharding_report(state, shardings, mesh)
  assert "params/token_embed/embedding" in text and "('tensor', 'fsdp')" in text
  with pytest.raises(ValueError, match=r"key/kernel: dimension 1 \(logical axis 'kv_heads'\) has size 4.*'tensor' of size 8"):
    par.plan(tfm.get_config("gpt2-tiny", use_bias=False), tensor=8)  # 4 heads over 8
  out = subprocess.run([sys.executable, "-m", "tfm.parallel", "gpt2-tiny", "--fsdp", "4"], capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert out.returncode == 0 and out.stdout.splitlines()[-1].startswith("total:"), out.stderr[-2000:]
