"""Checkpoints: tfm's params format, a training run's orbax checkpoints, and "a model to start from".

Three layouts hold a model (each has a config.json; `resolve_model` tells them apart):

  run directory      what train.py writes: WORKDIR/config.json ({"config", "model_config"}),
                     WORKDIR/checkpoints/<step>/ (the last K TrainStates), WORKDIR/best/<step>/ (the
                     best by eval metric), WORKDIR/tokenizer.json
  params directory   what `save_params` (and `python -m tfm.convert --from-hf`) writes:
                     DIR/config.json (ModelConfig.to_dict()), DIR/params/ (orbax tree {"params": ...},
                     plain unboxed arrays in the config's param_dtype), tokenizer files if any
  Hugging Face       config.json with `architectures` / `model_type`, *.safetensors or pytorch weights,
  directory          tokenizer files (read by tfm.hf.from_pretrained; a hub id is downloaded first)

A run's checkpoints go through one orbax CheckpointManager type (`Checkpoints`): each holds the
whole TrainState and a small JSON "meta" item (data position = step, best eval so far, tokens seen).
Orbax stores every array with its global shape, whatever mesh wrote it; restoring onto a target of
`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (`abstract_like`) reads each device's shard
straight into place, so a checkpoint moves to any other mesh, to pmap, or to one CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from tfm.config import ModelConfig
from tfm.data.tokenizers import load_tokenizer
from tfm.hf.api import from_pretrained, read_json_object, resolve_directory

CONFIG = "config.json"
PARAMS = "params"
TOKENIZER = "tokenizer.json"
RUN_CHECKPOINTS, RUN_BEST = "checkpoints", "best"


def abstract_like(tree: Any, shardings: Any = None) -> Any:
  """Returns `tree` as jax.ShapeDtypeStruct leaves with `shardings` (default: each leaf's own): a restore target."""
  if shardings is None:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ------------------------------------------------------------------------------------------------
# tfm's params format
# ------------------------------------------------------------------------------------------------


def save_params(params, config: ModelConfig, directory: str, extra_files: Sequence[str] = ()) -> str:
  """Writes params (orbax, under "params") and config.json into `directory`; returns its absolute path.

  `extra_files` (e.g. tokenizer.json) are copied next to them.
  The checkpoint is written to a temporary sibling and renamed, so a failure leaves nothing behind.
  An existing non-empty `directory` is an error (nothing is overwritten).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(directory) and os.listdir(directory):
    raise FileExistsError(f"{directory} exists and is not empty; choose a new output directory")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tfm-ckpt-", dir=parent)
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, PARAMS), {"params": nn.meta.unbox(params)})
    checkpointer.wait_until_finished()
    with open(os.path.join(tmp, CONFIG), "w") as f:
      json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    for path in extra_files:
      shutil.copy(path, tmp)
    if os.path.exists(directory):
      os.rmdir(directory)  # empty (checked above)
    os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def load_config(directory: str) -> ModelConfig:
  """Returns the ModelConfig stored in a params directory."""
  path = os.path.join(directory, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a tfm params directory "
                            f"(expected {CONFIG} and {PARAMS}/)")
  with open(path) as f:
    return ModelConfig(**json.load(f))


def load_params(directory: str, target: Optional[Any] = None):
  """Returns (ModelConfig, params) of a params directory written by save_params.

  `target` (optional): a params tree of jax.ShapeDtypeStruct (with shardings) to restore onto.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  config = load_config(directory)
  path = os.path.join(directory, PARAMS)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a tfm params directory")
  restored = ocp.StandardCheckpointer().restore(path, None if target is None else {"params": target})
  return config, restored["params"]


# ------------------------------------------------------------------------------------------------
# A training run's checkpoints
# ------------------------------------------------------------------------------------------------


def _manager(directory: str, keep: Optional[int] = None, create: bool = True) -> ocp.CheckpointManager:
  """Returns the orbax manager of one run directory (items "state" and "meta"), synchronous saves."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


class Checkpoints:
  """The workdir's checkpoints: WORKDIR/checkpoints (last K) and WORKDIR/best (best eval metric).

  Restoring tries the newest checkpoint first; one that cannot be read is moved to
  WORKDIR/corrupt_checkpoints/ and the previous one is used, saying so.
  """

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.dir = os.path.join(workdir, RUN_CHECKPOINTS)
    self.best_dir = os.path.join(workdir, RUN_BEST)
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
    """Returns (state, meta) of the newest readable checkpoint placed as `abstract_state` says, or None."""
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
    """Returns the meta of the best checkpoint (with its eval metric), or None."""
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


def run_model_config(workdir: str) -> ModelConfig:
  """Returns the ModelConfig saved in a training run's WORKDIR/config.json."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no {CONFIG}: not a tfm training run")
  with open(path) as f:
    return ModelConfig(**json.load(f)["model_config"])


def run_params(workdir: str, which: str = "latest") -> tuple[Any, int]:
  """Returns (params, step) of a training run: its newest checkpoint, or with which="best" its best one."""
  if which not in ("latest", "best"):
    raise ValueError(f"checkpoint must be 'latest' or 'best'; got {which!r}")
  directory = os.path.join(workdir, RUN_BEST if which == "best" else RUN_CHECKPOINTS)
  if not os.path.isdir(directory) or not os.listdir(directory):
    directory = os.path.join(workdir, RUN_CHECKPOINTS)  # a run that never evaluated has no best/
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no {RUN_CHECKPOINTS}/ directory: not a tfm training run")
  mgr = _manager(directory, create=False)
  try:
    step = mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    mgr.close()
  return state["params"], step


# ------------------------------------------------------------------------------------------------
# A model to start from
# ------------------------------------------------------------------------------------------------

KINDS = ("run", "params", "hf")
_ACCEPTED = ("a tfm run directory (config.json + checkpoints/), a tfm params directory (config.json + params/), "
             "or a Hugging Face model directory or hub id (config.json with architectures / model_type + weights)")


class ResolvedModel(NamedTuple):
  """A model read from a directory: its config, params and tokenizer, and what the directory was."""

  config: ModelConfig
  params: Any
  tokenizer: Any        # the one tokenizer interface (tfm.data.tokenizers), or None if the directory has none
  kind: str             # "run" | "params" | "hf"
  directory: str        # the local directory read (a hub id's download)


def model_kind(directory: str) -> Optional[str]:
  """Returns which of KINDS the local `directory` holds ("run", "params", "hf"), or None."""
  blob = read_json_object(os.path.join(directory, CONFIG))
  if blob is None:
    return None
  if "model_config" in blob and os.path.isdir(os.path.join(directory, RUN_CHECKPOINTS)):
    return "run"
  if os.path.isdir(os.path.join(directory, PARAMS)):
    return "params"
  if "architectures" in blob or "model_type" in blob:
    return "hf"
  return None


def resolve_model(path: str, checkpoint: str = "latest") -> ResolvedModel:
  """Returns the ResolvedModel (config, params, tokenizer, kind, directory) of a run, params or HF directory.

  `checkpoint` picks a run's newest ("latest") or best ("best") checkpoint. Any other path is a
  ValueError naming it and the three kinds accepted.
  """
  given = str(path)
  local = os.path.abspath(os.path.expanduser(given))
  kind = model_kind(local) if os.path.isdir(local) else None
  if kind is None and not os.path.exists(local):
    try:
      local = resolve_directory(given)  # a hub id: its snapshot (or a FileNotFoundError saying why not)
    except (FileNotFoundError, NotADirectoryError) as e:
      raise ValueError(f"{given}: not a model to start from ({e}); expected {_ACCEPTED}") from None
    kind = model_kind(local)
  if kind is None:
    raise ValueError(f"{given}: not a model to start from; expected {_ACCEPTED}")
  if kind == "run":
    config = run_model_config(local)
    params, _ = run_params(local, checkpoint)
  elif kind == "params":
    config, params = load_params(local)
  else:
    config, params = from_pretrained(local)
  try:
    tokenizer = load_tokenizer(local)
  except FileNotFoundError:
    tokenizer = None
  return ResolvedModel(config, params, tokenizer, kind, local)
