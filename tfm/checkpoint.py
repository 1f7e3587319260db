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

What can go wrong, and what happens (tests/test_checkpoint.py, tests/test_faults.py, `python -m tfm.faults`):
a save killed at any point leaves at most a STEP.orbax-checkpoint-tmp directory, which orbax never
lists as a checkpoint and the run's next save removes; a newest checkpoint that does not read (or whose
arrays fail the CRC-32 saved in its meta: orbax reads a flipped bit back without an error) is moved to
WORKDIR/corrupt_checkpoints/ and the previous one is used; when none reads, CheckpointsUnreadableError
lists them (train.restart_if_unreadable starts over instead); a full disk or a permission error is a
CheckpointWriteError naming the directory and the bytes the state needs, the older checkpoints intact.
`TFM_CHECKPOINT_FAULT=POINT@STEP` kills the process at a named point of a save (FAULT_POINTS), so that
those moments can be hit on purpose.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import zlib
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from tfm.config import ModelConfig
from tfm.data.tokenizers import load_tokenizer
from tfm.errors import UserError
from tfm.errors import UserError
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


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (disk full, no permission); the previous checkpoints are intact."""


class CheckpointsUnreadableError(UserError):
  """Every checkpoint of a run failed to read; the message lists each step directory and why."""


CHECKSUMS = "state_crc32"  # meta key: {leaf path: CRC-32 of its bytes}, checked on restore
# errno values of a write that no retry fixes: the user must free space or fix permissions
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                 errno.EROFS: "read-only file system"}


def state_nbytes(state) -> int:
  """Returns the bytes of all arrays of `state` (global shapes): what a checkpoint of it needs, uncompressed."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state) if hasattr(x, "dtype")))


def state_checksums(state) -> Optional[dict]:
  """Returns {leaf path: CRC-32 of its bytes} of `state`, or None when this process does not hold every array."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  if any(not getattr(x, "is_fully_addressable", True) for _, x in flat):
    return None  # multi-host: no process sees the whole state
  raw = [jax.random.key_data(x) if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key) else x
         for _, x in flat]  # a typed PRNG key: its uint32 words
  out = {}
  for (path, _), x in zip(flat, jax.device_get(raw)):  # one transfer of the whole state to the host
    a = np.ascontiguousarray(np.asarray(x)).reshape(-1)
    out[jax.tree_util.keystr(path)] = zlib.crc32(a.view(np.uint8)) if a.size else 0
  return out


def _check_checksums(state, saved: Optional[dict]) -> None:
  """Raises ValueError naming the first array of `state` whose bytes differ from the checksums written with it."""
  if not saved:
    return  # written before checksums existed, or by several hosts
  now = state_checksums(state)
  if now is None:
    return
  bad = [k for k in saved if now.get(k) != saved[k]]
  if bad or set(now) != set(saved):
    what = f"array {bad[0]} (CRC-32 {now.get(bad[0])} != {saved[bad[0]]} when saved)" if bad else "its tree"
    raise ValueError(f"data differ from what was saved: {what}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))


def _write_failure(error: BaseException) -> Optional[str]:
  """Returns why a save failed when no retry can fix it (disk full, permissions), else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
      return _WRITE_ERRNOS[error.errno]
    text = str(error)  # tensorstore raises ValueError("... No space left on device [os_error_code='28']")
    for code, why in _WRITE_ERRNOS.items():
      if f"os_error_code='{code}'" in text or os.strerror(code) in text:
        return why
    error = error.__cause__ or error.__context__
  return None


def _remove_killed_saves(directory: str) -> None:
  """Removes the temporary directories that saves killed before their final rename left in `directory`.

  Only the writing run does this, just before it saves (orbax's own cleanup runs whenever a manager
  is made, which would also remove a running job's save from under it when another process reads).
  """
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if ".orbax-checkpoint-tmp" in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _short(error: BaseException, limit: int = 160) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class Checkpoints:
  """The workdir's checkpoints: WORKDIR/checkpoints (last K) and WORKDIR/best (best eval metric).

  Each save records a CRC-32 of every array in its meta; restoring checks them (orbax reads a flipped
  bit of an array file back without an error). Restoring tries the newest checkpoint first; one that
  cannot be read is moved to WORKDIR/corrupt_checkpoints/ and the previous one is used, saying so.
  When none can be read it raises CheckpointsUnreadableError (moving nothing) unless told to restart.
  """

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.dir = os.path.join(workdir, RUN_CHECKPOINTS)
    self.best_dir = os.path.join(workdir, RUN_BEST)
    self.keep = keep
    self.latest = _manager(self.dir, keep)
    self.best = _manager(self.best_dir, 1)
    if os.environ.get(FAULT_ENV):
      _install_fault_hooks(os.environ[FAULT_ENV], (self.dir, self.best_dir))

  def save(self, state, meta: dict, *, best: bool = False) -> None:
    """Writes `state` and `meta` at step meta["step"] (to best/ as well when `best`).

    A write that fails for lack of space or permission raises CheckpointWriteError (one line: the
    directory, the bytes the state needs); the partial save is removed and older checkpoints stay.
    """
    step = int(meta["step"])
    meta = dict(meta, **{CHECKSUMS: state_checksums(state)})
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    # best/ first: a run killed between the two resumes from the checkpoint before this one, evaluates
    # this step again and re-writes best/; the other order could leave best/ without this step for good.
    for which, m in ([("best", self.best)] if best else []) + [("latest", self.latest)]:
      _SAVING.update(step=step, which=which)
      threads = set(threading.enumerate())
      try:
        _fault_point("save_start")
        _remove_killed_saves(str(m.directory))
        if step in m.all_steps():
          m.delete(step)  # a re-run after falling back re-creates a step that a SIGTERM save already wrote
        m.save(step, args=args, force=True)
        m.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        why = _write_failure(e)
        if why is None:
          raise
        # orbax does not stop an item's writer threads when another item fails: let them end before cleaning up
        deadline = time.time() + 30
        for t in set(threading.enumerate()) - threads:
          t.join(max(deadline - time.time(), 0))
        raise self._write_error(m, step, why, state) from e
      finally:
        _SAVING.clear()
    _SAVING.update(step=step, which="latest")
    _fault_point("save_end")
    _SAVING.clear()

  def _write_error(self, m: ocp.CheckpointManager, step: int, why: str, state) -> CheckpointWriteError:
    """Removes what the failed save of `step` left in `m`'s directory; returns the error to raise."""
    directory = str(m.directory)
    for name in os.listdir(directory):
      if name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    m.reload()
    try:
      free = f"{shutil.disk_usage(directory).free:,} bytes free there"
    except OSError:
      free = "free space unknown"
    older = [s for s in self.latest.all_steps() if s != step]
    where = f" in {self.dir}" if m is not self.latest else ""
    kept = f"the previous checkpoint (step {max(older)}) is intact{where}" if older else "no earlier checkpoint exists"
    return CheckpointWriteError(
        f"cannot write the checkpoint of step {step} to {directory}: {why}; the state needs "
        f"{state_nbytes(state):,} bytes ({free}); {kept}; free space or fix the permissions (or pick another "
        f"--workdir) and run the same command again to resume")

  def _read(self, step: int, abstract_state) -> tuple[Any, dict]:
    """Returns (state, meta) of checkpoint `step`, its arrays checked against the checksums saved with them."""
    out = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                            meta=ocp.args.JsonRestore()))
    state, meta = out["state"], dict(out["meta"])
    jax.block_until_ready(state)
    _check_checksums(state, meta.pop(CHECKSUMS, None))
    return state, meta

  def restore(self, abstract_state, restart_if_unreadable: bool = False) -> Optional[tuple[Any, dict]]:
    """Returns (state, meta) of the newest readable checkpoint placed as `abstract_state` says, or None if none.

    Unreadable newer checkpoints are moved to WORKDIR/corrupt_checkpoints/. When there are
    checkpoints but none reads: CheckpointsUnreadableError listing each (nothing moved), or, with
    `restart_if_unreadable`, all are moved and None is returned (the run starts from scratch).
    """
    failed = []  # (step, why), newest first
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        state, meta = self._read(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        failed.append((step, _short(e)))
        continue
      for bad, why in failed:
        print(f"WARNING: checkpoint at step {bad} could not be read ({why}); moved it to {self._quarantine(bad)}; "
              f"falling back to the previous checkpoint (step {step})", flush=True)
      return state, meta
    if failed and not restart_if_unreadable:
      listing = "; ".join(f"{os.path.join(self.dir, str(s))}: {why}" for s, why in failed)
      raise CheckpointsUnreadableError(
          f"none of the {len(failed)} checkpoint(s) in {self.dir} can be read ({listing}); nothing was moved; "
          f"set --config.train.restart_if_unreadable=True to move them to {self.workdir}/corrupt_checkpoints "
          f"and start from scratch")
    for bad, why in failed:
      print(f"WARNING: checkpoint at step {bad} could not be read ({why}); moved it to {self._quarantine(bad)}; "
            "no readable checkpoint: starting from scratch (train.restart_if_unreadable=True)", flush=True)
    return None

  def _quarantine(self, step: int) -> str:
    """Moves checkpoint `step` out of the manager's directory; returns where it went."""
    src = os.path.join(self.dir, str(step))
    dst_dir = os.path.join(self.workdir, "corrupt_checkpoints")
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, f"{step}.{time.time_ns()}")
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


# ------------------------------------------------------------------------------------------------
# Fault injection: kill this process at a named point of a save (tfm.faults, tests)
# ------------------------------------------------------------------------------------------------

FAULT_ENV = "TFM_CHECKPOINT_FAULT"  # "POINT@STEP" or "POINT@STEP:best": SIGKILL at POINT of the first save >= STEP
FAULT_POINTS = (
    "save_start",     # before anything of the save is written
    "tmp_created",    # orbax made STEP.orbax-checkpoint-tmp (nothing in it yet)
    "items_written",  # every array and the meta are in the temporary directory, not committed
    "before_rename",  # commit_success.txt written, the directory still has its temporary name
    "after_rename",   # STEP/ is final; older checkpoints not yet removed, best/ not yet written
    "deleting_old",   # half the files of the oldest checkpoint removed (killed during its deletion)
    "save_end",       # the save (and best/) is complete
)
_SAVING: dict = {}  # the save in progress: {"step", "which"} (latest | best)
_FAULT: dict = {}   # the armed fault: {"point", "step", "which", "dirs"}


def _fault_point(point: str) -> None:
  """SIGKILLs this process if the armed fault is `point` of the save in progress; returns otherwise."""
  if not _FAULT or not _SAVING or _FAULT["point"] != point or _SAVING["step"] < _FAULT["step"]:
    return
  if _FAULT["which"] and _FAULT["which"] != _SAVING["which"]:
    return
  print(f"fault injection: SIGKILL at {point} of the save of step {_SAVING['step']} ({_SAVING['which']})",
        file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _install_fault_hooks(spec: str, dirs: Sequence[str]) -> None:
  """Arms the fault `spec` ("POINT@STEP[:latest|best]") and wraps orbax's save steps to reach it (once)."""
  point, _, rest = spec.partition("@")
  step, _, which = rest.partition(":")
  if point not in FAULT_POINTS or not step.isdigit() or which not in ("", "latest", "best"):
    raise UserError(f"{FAULT_ENV}={spec!r}: expected POINT@STEP[:latest|best] with POINT one of {list(FAULT_POINTS)}")
  _FAULT.update(point=point, step=int(step), which=which, dirs={os.path.abspath(d) for d in dirs})
  if _FAULT.get("installed"):
    return
  _FAULT["installed"] = True
  from orbax.checkpoint._src.handlers import composite_checkpoint_handler as composite
  from orbax.checkpoint._src.path import async_path, atomicity, deleter

  is_step_dir = lambda path: os.path.dirname(os.path.abspath(str(path))) in _FAULT["dirs"]
  create, rename = atomicity._create_tmp_directory, async_path.rename  # pylint: disable=protected-access
  finalize = composite.CompositeCheckpointHandler.finalize
  delete = deleter.StandardCheckpointDeleter._delete_step_permanently  # pylint: disable=protected-access

  async def create_hooked(make_dir, tmp_dir, **kwargs):
    out = await create(make_dir, tmp_dir, **kwargs)
    if is_step_dir(tmp_dir):
      _fault_point("tmp_created")
    return out

  async def rename_hooked(src, dst, *args, **kwargs):
    if is_step_dir(dst):
      _fault_point("before_rename")
    out = await rename(src, dst, *args, **kwargs)
    if is_step_dir(dst):
      _fault_point("after_rename")
    return out

  def finalize_hooked(self, directory):
    if is_step_dir(directory):
      _fault_point("items_written")
    return finalize(self, directory)

  def delete_hooked(self, step, delete_target):
    if _FAULT["point"] == "deleting_old" and _SAVING and _SAVING["step"] >= _FAULT["step"]:
      files = sorted(os.path.join(r, f) for r, _, fs in os.walk(str(delete_target)) for f in fs)
      for f in files[: len(files) // 2]:
        os.remove(f)
      _fault_point("deleting_old")
    return delete(self, step, delete_target)

  atomicity._create_tmp_directory = create_hooked  # pylint: disable=protected-access
  async_path.rename = rename_hooked
  composite.CompositeCheckpointHandler.finalize = finalize_hooked
  deleter.StandardCheckpointDeleter._delete_step_permanently = delete_hooked  # pylint: disable=protected-access


def run_model_config(workdir: str) -> ModelConfig:
  """Returns the ModelConfig saved in a training run's WORKDIR/config.json."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no {CONFIG}: not a tfm training run")
  with open(path) as f:
    return ModelConfig(**json.load(f)["model_config"])


def run_params(workdir: str, which: str = "latest") -> tuple[Any, int]:
  """Returns (params, step) of a training run (its EMA params if it kept one): its newest checkpoint, or its best."""
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
  params = state.get("ema_params")  # a run with optimizer.ema_decay > 0 evaluated (and exports) the average
  return (state["params"] if params is None else params), step


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
      raise UserError(f"{given}: not a model to start from ({e}); expected {_ACCEPTED}") from None
    kind = model_kind(local)
  if kind is None:
    has = "" if not os.path.isdir(local) or os.path.isfile(os.path.join(local, CONFIG)) else f" (it has no {CONFIG})"
    raise UserError(f"{given}: not a model to start from{has}; expected {_ACCEPTED}")
  try:
    if kind == "run":
      config = run_model_config(local)
      params, _ = run_params(local, checkpoint)
    elif kind == "params":
      config, params = load_params(local)
    else:
      config, params = from_pretrained(local)
  except UserError:
    raise
  except (ValueError, FileNotFoundError) as e:  # a field, tensor or file of the directory, named by the reader
    raise UserError(f"{given}: {e}") from e
  try:
    tokenizer = load_tokenizer(local)
  except FileNotFoundError:
    tokenizer = None
  return ResolvedModel(config, params, tokenizer, kind, local)
