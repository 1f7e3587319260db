"""A tfm params checkpoint: an orbax tree {"params": params} plus the tfm config as JSON.

Layout of CKPT_DIR (what `python -m tfm.convert --from-hf` writes and train.py's init_from reads):
  CKPT_DIR/config.json   ModelConfig.to_dict() (load with ModelConfig(**json.load(...)))
  CKPT_DIR/params/       orbax StandardCheckpointer directory of the tree {"params": <nested dict of arrays>}
The params are unboxed (plain arrays, no nn.LogicallyPartitioned), in the config's param_dtype.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Optional, Sequence

import flax.linen as nn
import orbax.checkpoint as ocp

from tfm.config import ModelConfig

CONFIG = "config.json"
PARAMS = "params"


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
  """Returns the ModelConfig stored in a tfm checkpoint directory."""
  path = os.path.join(directory, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a tfm params checkpoint "
                            f"(expected {CONFIG} and {PARAMS}/)")
  with open(path) as f:
    return ModelConfig(**json.load(f))


def load_params(directory: str, target: Optional[Any] = None):
  """Returns (ModelConfig, params) of a checkpoint written by save_params.

  `target` (optional): a params tree of jax.ShapeDtypeStruct (with shardings) to restore onto.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  config = load_config(directory)
  path = os.path.join(directory, PARAMS)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a tfm params checkpoint")
  restored = ocp.StandardCheckpointer().restore(path, None if target is None else {"params": target})
  return config, restored["params"]
