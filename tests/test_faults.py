"""Faults: SIGKILL at each named point of a checkpoint save, torn metrics lines, and a 3-fault campaign.

The full campaign (`python -m tfm.faults --faults 30`) injects every kind many times; here one trial
of three kinds (a random SIGKILL, a SIGKILL before the final rename of a save, a truncated array file)
must end bitwise equal to the uninterrupted run.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tfm import faults
from tfm.checkpoint import FAULT_ENV, FAULT_POINTS, Checkpoints, abstract_like
from tfm.train.writers import MetricsWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.path.dirname(ROOT), "shared", "data", "tiny_shakespeare")

_SAVES = """
import sys, jax, jax.numpy as jnp
from tfm.checkpoint import Checkpoints
c = Checkpoints(sys.argv[1], 2)
for step in (1, 2, 3):
  c.save({"w": jnp.full((8, 4), float(step)), "n": jnp.arange(3) + step}, {"step": step})
print("all saved")
"""


def _state(step):
  return {"n": jax.numpy.arange(3) + step, "w": jax.numpy.full((8, 4), float(step))}


# point -> (complete checkpoints left, what the killed save left in checkpoints/, newest readable step)
EXPECTED = {
    "save_start": ([1], [], 1),
    "tmp_created": ([1], ["_CHECKPOINT_METADATA"], 1),
    "items_written": ([1], ["_CHECKPOINT_METADATA", "meta.orbax-checkpoint-tmp", "state.orbax-checkpoint-tmp"], 1),
    "before_rename": ([1], ["_CHECKPOINT_METADATA", "commit_success.txt", "meta", "state"], 1),
    "after_rename": ([1, 2], [], 2),
    "deleting_old": ([1, 2, 3], [], 3),  # step 1 half deleted during the save of 3 (keep 2)
    "save_end": ([1, 2], [], 2),
}
FAST = ("tmp_created", "before_rename", "deleting_old")


@pytest.mark.parametrize("point", [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in FAULT_POINTS])
def test_a_kill_at_each_point_of_a_save_leaves_a_readable_checkpoint(tmp_path, point):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{FAULT_ENV: f"{point}@2"})
  r = subprocess.run([sys.executable, "-c", _SAVES, str(tmp_path)], env=env, capture_output=True, text=True,
                     cwd=ROOT, timeout=300)
  assert r.returncode == -9, r.stderr[-2000:]
  assert f"fault injection: SIGKILL at {point} of the save of step" in r.stderr and "all saved" not in r.stdout
  complete, tmp_contents, newest = EXPECTED[point]
  ckpts = tmp_path / "checkpoints"
  assert faults.checkpoint_steps(str(tmp_path)) == complete
  tmp = [n for n in os.listdir(ckpts) if not n.isdigit()]
  assert tmp == (["2.orbax-checkpoint-tmp"] if tmp_contents else [])
  if tmp_contents:
    assert sorted(os.listdir(ckpts / tmp[0])) == tmp_contents
  c = Checkpoints(str(tmp_path), 2)
  state, meta = c.restore(abstract_like(_state(newest)))
  assert meta["step"] == newest and np.asarray(state["w"]).tobytes() == np.asarray(_state(newest)["w"]).tobytes()
  c.save(_state(4), {"step": 4})  # the next save removes what the killed one left
  c.close()
  assert all(n.isdigit() for n in os.listdir(ckpts))


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
  lines = [json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) for s in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 4, "split": "tr')
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]
  w = MetricsWriter(str(tmp_path), resume_step=2)
  w.write(3, "train", {"loss": 0.5})
  w.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [(1, 1.0), (2, 0.5), (3, 0.5)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reader of a damaged file
def test_three_faults_of_different_kinds_end_bitwise_equal_to_the_uninterrupted_run(tmp_path):
  kinds = ["sigkill", "kill_before_rename", "corrupt_truncate"]
  out = faults.campaign(str(tmp_path), faults=3, seed=1, manual_dir=SHAKESPEARE, steps=40, faults_per_run=3,
                        kinds=kinds, log=lambda *_: None)
  rows = {r["kind"]: r for r in out["table"]}
  assert rows["total"]["injected"] == rows["total"]["survived"] == rows["total"]["good_checkpoint_kept"] == 3, \
      json.dumps(out["faults"], indent=1)
  assert all(rows[k]["injected"] == 1 for k in kinds)
  assert rows["kill_before_rename"]["lost_steps_max"] == faults.CHECKPOINT_EVERY  # the save being written is lost
  for r in out["faults"]:
    assert r["resumed_from"] == r["expected_resume"] and r["final_ok"]
  assert json.load(open(tmp_path / "faults.json"))["table"] == out["table"]
  text = faults.format_table(out["table"])
  assert text.splitlines()[0].split()[:3] == ["kind", "injected", "survived"] and "total" in text
