"""Reading and writing Hugging Face weight files: safetensors (single or sharded) and pytorch_model.bin.

Safetensors files are opened with the `safetensors` library (`safe_open`: the header is checked against the
file's size when it is opened, tensors are memory-mapped and read one at a time); a truncated or corrupt file
raises CheckpointError naming the file before any tensor is used. pytorch_model.bin needs torch (a dev
dependency).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import ml_dtypes  # noqa: F401  registers "bfloat16" and the float8 names with numpy, which safetensors asks for
import numpy as np
import safetensors
from safetensors.numpy import save_file

from tfm.errors import UserError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH, PYTORCH_INDEX)


class CheckpointError(UserError):
  """A weight file or directory that cannot be read as a Hugging Face checkpoint."""


def open_safetensors(path: str):
  """Returns the library's open handle (`keys()`, `get_slice(name)`, `get_tensor(name)`) of a safetensors file."""
  try:
    return safetensors.safe_open(path, framework="np")
  except safetensors.SafetensorError as e:  # the library's message says what is wrong, not which file
    raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({os.path.getsize(path)} bytes): "
                          f"{' '.join(str(e).split())}") from None


class WeightFiles:
  """The tensors of a checkpoint directory by name: `keys()`, `shape(name)`, `get(name)` (a numpy array)."""

  def __init__(self, directory: str):
    self.directory = directory
    self._where: dict[str, str] = {}   # tensor name -> file
    self._safetensors: dict[str, object] = {}  # file -> safe_open handle
    self._torch: dict[str, dict] = {}
    files = _weight_files(directory)
    for path in files:
      if path.endswith(".safetensors"):
        self._safetensors[path] = open_safetensors(path)
        names = self._safetensors[path].keys()
      else:
        self._torch[path] = _torch_load(path)
        names = self._torch[path]
      for name in names:
        if name in self._where:
          raise CheckpointError(f"{directory}: tensor {name!r} appears in both {self._where[name]} and {path}")
        self._where[name] = path

  def keys(self) -> list[str]:
    """Returns the tensor names, sorted."""
    return sorted(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple:
    """Returns the shape of tensor `name`."""
    path = self._where[name]
    if path in self._safetensors:
      return tuple(self._safetensors[path].get_slice(name).get_shape())
    return tuple(self._torch[path][name].shape)

  def get(self, name: str) -> np.ndarray:
    """Returns tensor `name` as a numpy array (bfloat16 as ml_dtypes.bfloat16)."""
    path = self._where[name]
    if path in self._torch:
      return self._torch[path][name]
    try:
      return self._safetensors[path].get_tensor(name)
    except (safetensors.SafetensorError, TypeError) as e:  # TypeError: a dtype numpy does not know
      raise CheckpointError(f"{path}: cannot read tensor {name!r}: {e}") from None


def _weight_files(directory: str) -> list[str]:
  """Returns the weight files of a checkpoint directory (safetensors preferred), or raises CheckpointError."""
  for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS), (PYTORCH_INDEX, PYTORCH)):
    single_path = os.path.join(directory, single)
    if os.path.isfile(single_path):
      return [single_path]
    index_path = os.path.join(directory, index_name)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map", {})
      files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
      missing = [p for p in files if not os.path.isfile(p)]
      if missing:
        raise CheckpointError(f"{index_path} lists shard(s) that are missing: {missing}")
      return files
  raise CheckpointError(f"no weights file in {directory}: expected one of {list(WEIGHT_FILES)} "
                        f"(found: {sorted(os.listdir(directory))})")


def _torch_load(path: str) -> dict:
  """Returns {name: numpy array} of a pytorch_model.bin (float32 for bfloat16 tensors)."""
  try:
    import torch
  except ImportError:
    raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install torch), or give a "
                          f"directory with model.safetensors") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several kinds for a bad file
    raise CheckpointError(f"{path}: cannot read this pytorch checkpoint ({type(e).__name__}: {e})") from None
  out = {}
  for name, t in state.items():
    if t.dtype == torch.bfloat16:
      t = t.to(torch.float32)
    out[name] = t.detach().contiguous().numpy()
  return out


def write_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: Optional[dict] = None) -> None:
  """Writes {name: array} to a safetensors file at `path`; returns None."""
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
            metadata=dict(metadata or {"format": "pt"}))

