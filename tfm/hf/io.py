"""Reading and writing Hugging Face weight files: safetensors (single or sharded) and pytorch_model.bin.

Safetensors files are parsed here (8-byte header length, JSON header, raw little-endian data) and
memory-mapped, so a large checkpoint is not read twice and a truncated file is caught with a clear
message before any tensor is used. pytorch_model.bin needs torch (a dev dependency).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Optional

import ml_dtypes
import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH, PYTORCH_INDEX)

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


class CheckpointError(ValueError):
  """A weight file or directory that cannot be read as a Hugging Face checkpoint."""


def read_safetensors_header(path: str) -> tuple[dict, int]:
  """Returns (header dict without __metadata__, byte offset of the data) after checking the file's size."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes; the 8-byte header length is missing)")
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
      raise CheckpointError(f"{path}: truncated safetensors file: the header needs {n} bytes after the first 8, "
                            f"the file has {size} bytes in all")
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  header.pop("__metadata__", None)
  data_start = 8 + n
  need = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
  if data_start + need > size:
    raise CheckpointError(f"{path}: truncated safetensors file: its header describes {need} bytes of tensor data, "
                          f"the file holds {size - data_start}")
  for name, v in header.items():
    if v["dtype"] not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {name!r} has dtype {v['dtype']}; readable dtypes: {sorted(_DTYPES)}")
    begin, end = v["data_offsets"]
    expected = int(np.prod(v["shape"], dtype=np.int64)) * np.dtype(_DTYPES[v["dtype"]]).itemsize
    if end - begin != expected:
      raise CheckpointError(f"{path}: tensor {name!r} of shape {v['shape']} ({v['dtype']}) needs {expected} bytes; "
                            f"the header gives {end - begin}")
  return header, data_start


class WeightFiles:
  """The tensors of a checkpoint directory by name: `keys()`, `shape(name)`, `get(name)` (a numpy array)."""

  def __init__(self, directory: str):
    self.directory = directory
    self._where: dict[str, str] = {}   # tensor name -> file
    self._headers: dict[str, tuple[dict, int]] = {}
    self._torch: dict[str, dict] = {}
    files = _weight_files(directory)
    for path in files:
      if path.endswith(".safetensors"):
        self._headers[path] = read_safetensors_header(path)
        names = self._headers[path][0]
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
    if path in self._headers:
      return tuple(self._headers[path][0][name]["shape"])
    return tuple(self._torch[path][name].shape)

  def get(self, name: str) -> np.ndarray:
    """Returns tensor `name` as a numpy array (bfloat16 as ml_dtypes.bfloat16)."""
    path = self._where[name]
    if path in self._torch:
      return self._torch[path][name]
    header, start = self._headers[path]
    info = header[name]
    begin, end = info["data_offsets"]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=start + begin, shape=(end - begin,)) if end > begin \
        else np.zeros((0,), np.uint8)
    return np.asarray(raw).view(_DTYPES[info["dtype"]]).reshape(info["shape"])


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
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
            metadata=dict(metadata or {"format": "pt"}))

