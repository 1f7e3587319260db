"""A real multi-process run: train.py on 2 processes joined by jax.distributed (localhost, CPU), killed
with SIGKILL after a checkpoint, resumed on 1 process: the parameters and optimizer state equal an
uninterrupted 1-process run's (1e-5), with dropout on (its masks follow each example's global row).

Each run is a `python train.py` process; the two distributed ones find each other through
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, as a launcher would set them
(tfm.parallel.initialize_distributed), and each holds 2 fake CPU devices: a mesh of 4 devices
(data=4), each process feeding only its own rows of every batch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from parallel_worker import max_diff, run_state  # tests/ is on the path under pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_COMPILE = "--xla_backend_optimization_level=0"
STEPS, EVERY = 12, 4


def _cmd(workdir, tmp_path, *extra):
  """Returns the train.py command of a few-second run (pydoc_topics, 1-layer gpt2-tiny, dropout 0.1)."""
  return [sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(workdir),
          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.model=gpt2-tiny",
          "--config.model_overrides.num_layers=1", "--config.model_overrides.d_model=32",
          "--config.model_overrides.d_ff=64", "--config.model_overrides.dropout_rate=0.1",
          "--config.data.seq_len=32", "--config.train.batch_size=8", f"--config.train.steps={STEPS}",
          f"--config.train.eval_every={STEPS}", "--config.train.eval_batches=1",
          f"--config.train.checkpoint_every={EVERY}", f"--config.train.log_every={EVERY}",
          "--config.train.progress=False", "--config.train.sample_tokens=0", "--config.optimizer.warmup_steps=2",
          # Adam's eps: gradients that are zero in exact arithmetic are ~1e-10 of summation-order noise,
          # which eps=1e-8 turns into updates that differ between topologies (see tests/parallel_worker.py).
          "--config.optimizer.eps=1e-6", *extra]


def _env(devices: int = 1, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env["XLA_FLAGS"] = " ".join([FAST_COMPILE] + ([f"--xla_force_host_platform_device_count={devices}"]
                                               if devices > 1 else []))
  env.pop("TFM_DISTRIBUTED", None)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, tmp_path, log_dir):
  """Returns the two Popen of a 2-process run (2 CPU devices each), output in log_dir/process_{i}.log."""
  port = _free_port()
  procs = []
  for i in range(2):
    env = _env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    with open(log_dir / f"process_{i}.log", "w") as log:  # the child keeps its own descriptor
      procs.append(subprocess.Popen(_cmd(workdir, tmp_path, "--config.mesh.data=-1"), env=env, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT))
  return procs


def _logs(log_dir) -> str:
  return "\n".join(f"--- process {i}:\n" + (log_dir / f"process_{i}.log").read_text()[-3000:] for i in range(2))


# Three train.py runs (two at once): 40 s of CPU, 95 s on a busy 2-core machine. The default suite's
# variant: tests/test_parallel.py::test_two_processes_each_feeding_their_rows_equal_single_device.
@pytest.mark.slow
def test_two_process_run_killed_after_a_checkpoint_resumes_on_one_process(tmp_path):
  # The reference: one process, one device, uninterrupted (it also prepares the TFDS data once).
  ref = tmp_path / "ref"
  done = subprocess.run(_cmd(ref, tmp_path), env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  # Two processes over one mesh of 4 devices; SIGKILL both once the first checkpoint is complete.
  run = tmp_path / "run"
  procs = _start_two_processes(run, tmp_path, tmp_path)
  ckpt = run / "checkpoints" / str(EVERY)  # orbax renames the finished checkpoint to its step number
  deadline = time.time() + 300
  while not ckpt.exists() and all(p.poll() is None for p in procs) and time.time() < deadline:
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for p in procs:
    p.wait()
  log = _logs(tmp_path)
  assert ckpt.exists(), f"the 2-process run never wrote its step-{EVERY} checkpoint:\n{log}"
  assert "jit over mesh {'data': 4, 'fsdp': 1, 'tensor': 1} (2 process(es))" in log, log
  assert not (run / "summary.json").exists(), f"the run finished before it was killed:\n{log}"
  # Resume on one process with one device.
  resumed = subprocess.run(_cmd(run, tmp_path), env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout and "could not be read" not in resumed.stdout, resumed.stdout[-2000:]
  a, b = run_state(ref), run_state(run)
  assert int(a["step"]) == int(b["step"]) == STEPS
  for part in ("params", "opt_state"):
    assert max_diff(b[part], a[part]) <= 1e-5, (part, max_diff(b[part], a[part]))
  with open(ref / "summary.json") as f, open(run / "summary.json") as g:
    a, b = json.load(f), json.load(g)
  assert a["tokens_seen"] == b["tokens_seen"] and abs(a["eval_loss"] - b["eval_loss"]) <= 1e-5
