"""Checkpoints with orbax CheckpointManager: every N steps keep the last K, plus the best by eval loss.

Each checkpoint holds the whole TrainState (params, optimizer state, step, RNG key) and a small
JSON "meta" item (the data position = the step, the best eval loss so far, the tokens seen).
Restoring tries the newest checkpoint first; one that cannot be read is moved to
WORKDIR/corrupt_checkpoints/ and the previous one is used, saying so.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def _manager(directory: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


class Checkpoints:
  """The workdir's checkpoints: WORKDIR/checkpoints (last K) and WORKDIR/best (best eval loss)."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.dir = os.path.join(workdir, "checkpoints")
    self.best_dir = os.path.join(workdir, "best")
    self.keep = keep
    self.latest = _manager(self.dir, keep)
    self.best = _manager(self.best_dir, 1)

  def save(self, state, meta: dict, *, best: bool = False) -> None:
    """Writes `state` and `meta` at step meta["step"] (to best/ as well when `best`)."""
    step = int(meta["step"])
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    managers = [self.latest] + ([self.best] if best else [])
    for m in managers:
      if step in m.all_steps():
        m.delete(step)  # a re-run after falling back re-creates a step that a SIGTERM save already wrote
      m.save(step, args=args, force=True)
      m.wait_until_finished()

  def restore(self, abstract_state) -> Optional[tuple[Any, dict]]:
    """Returns (state, meta) of the newest readable checkpoint, or None if there is none."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        out = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                meta=ocp.args.JsonRestore()))
        jax.block_until_ready(out["state"])
        return out["state"], dict(out["meta"])
      except Exception as e:  # pylint: disable=broad-except
        moved = self._quarantine(step)
        older = [s for s in self.latest.all_steps() if s < step]
        print(f"WARNING: checkpoint at step {step} could not be read ({type(e).__name__}: {str(e)[:200]}); "
              f"moved it to {moved}; "
              + (f"falling back to the previous checkpoint (step {max(older)})" if older else
                 "no earlier checkpoint: starting from scratch"), flush=True)
    return None

  def _quarantine(self, step: int) -> str:
    """Moves checkpoint `step` out of the manager's directory; returns where it went."""
    src = os.path.join(self.dir, str(step))
    dst_dir = os.path.join(self.workdir, "corrupt_checkpoints")
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, f"{step}.{int(time.time())}")
    shutil.move(src, dst)
    self.latest.close()
    self.latest = _manager(self.dir, self.keep)
    return dst

  def best_meta(self) -> Optional[dict]:
    """Returns the meta of the best checkpoint (with its eval loss), or None."""
    step = self.best.latest_step()
    if step is None:
      return None
    try:
      return dict(self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    except Exception:  # pylint: disable=broad-except
      return None

  def latest_step(self) -> Optional[int]:
    """Returns the newest checkpoint step, or None."""
    return self.latest.latest_step()

  def close(self) -> None:
    """Closes both managers."""
    self.latest.close()
    self.best.close()


def run_model_config(workdir: str):
  """Returns the tfm.ModelConfig saved in a training run's WORKDIR/config.json."""
  import json
  from tfm.config import ModelConfig
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no config.json: not a tfm training run")
  with open(path) as f:
    return ModelConfig(**json.load(f)["model_config"])


def run_params(workdir: str, which: str = "latest") -> tuple[Any, int]:
  """Returns (params, step) of a training run: its newest checkpoint, or with which="best" its best one."""
  if which not in ("latest", "best"):
    raise ValueError(f"checkpoint must be 'latest' or 'best'; got {which!r}")
  directory = os.path.join(workdir, "best" if which == "best" else "checkpoints")
  if not os.path.isdir(directory) or not os.listdir(directory):
    directory = os.path.join(workdir, "checkpoints")  # a run that never evaluated has no best/
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ directory: not a tfm training run")
  mgr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "meta"))
  try:
    step = mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    mgr.close()
  return state["params"], step
