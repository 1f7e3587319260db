"""The device mesh ("data", "fsdp", "tensor") from a config, and multi-host start-up.

A mesh shape is three sizes; one of them may be -1 and is filled with the devices left over
(`mesh.data=-1` on 8 devices with fsdp=2 gives (4, 2, 1)). The mesh always spans every device of
every process, so on several hosts `jax.distributed` must be initialised first
(`initialize_distributed`, which decides from the environment whether it is a multi-host run).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(data: int = 1, fsdp: int = 1, tensor: int = 1, num_devices: Optional[int] = None) -> tuple:
  """Returns the (data, fsdp, tensor) sizes with a -1 filled in; their product is `num_devices`."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  sizes = dict(data=data, fsdp=fsdp, tensor=tensor)
  for name, size in sizes.items():
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f"mesh.{name} must be a positive integer or -1 (fill with the remaining devices); got {size!r}")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"at most one of mesh.data / mesh.fsdp / mesh.tensor may be -1; got {sizes}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes}: the fixed sizes multiply to {fixed}, which does not divide the "
                       f"{num_devices} devices, so mesh.{free[0]}=-1 cannot be filled")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh {sizes} has {fixed} devices but {num_devices} are available; the product of "
                     f"mesh.data * mesh.fsdp * mesh.tensor must equal the device count (or set one to -1)")
  return tuple(int(sizes[a]) for a in MESH_AXES)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Optional[Sequence] = None) -> Mesh:
  """Returns a Mesh with axes ("data", "fsdp", "tensor") over `devices` (default: all devices).

  The axes are of type Auto (XLA's partitioner places the communication), so logical constraints
  inside the model are hints and the code is the same for any mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(data, fsdp, tensor, num_devices=len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _field(config, name, default):
  if config is None:
    return default
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default)


def mesh_from_config(config, devices: Optional[Sequence] = None) -> Mesh:
  """Returns the mesh of a config with a `mesh` group (`mesh.data`, `mesh.fsdp`, `mesh.tensor`)."""
  group = _field(config, "mesh", None)
  return make_mesh(_field(group, "data", -1), _field(group, "fsdp", 1), _field(group, "tensor", 1), devices)


# Multi-host --------------------------------------------------------------------------------------

# Variables that say "this process is one of several", per launcher. JAX's own cluster detection
# (jax._src.clusters) then finds the coordinator, process count and id.
_LAUNCHERS = {
    "slurm": ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID"),
    "openmpi": ("OMPI_MCA_orte_hnp_uri",),
    "tpu": ("TPU_WORKER_HOSTNAMES",),
}


def distributed_plan(environ: Optional[Mapping[str, str]] = None) -> Optional[dict]:
  """Returns the keyword arguments for jax.distributed.initialize, or None for a single-process run.

  Decided from the environment: TFM_DISTRIBUTED=off never initialises, =on always does (JAX
  auto-detects the cluster); otherwise JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
  JAX_PROCESS_ID give an explicit setup, and SLURM with more than one task, Open MPI (mpirun) or a
  multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES with several hosts) are auto-detected.
  """
  env = os.environ if environ is None else environ
  mode = env.get("TFM_DISTRIBUTED", "auto").lower()
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"TFM_DISTRIBUTED must be one of ['auto', 'on', 'off']; got {mode!r}")
  if mode == "off":
    return None
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not; set all three "
                       f"(or unset it to let JAX auto-detect the cluster)")
    return dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
                process_id=int(env["JAX_PROCESS_ID"]))
  if mode == "on":
    return {}
  if all(k in env for k in _LAUNCHERS["slurm"]) and int(env["SLURM_NTASKS"]) > 1:
    return {}
  if all(k in env for k in _LAUNCHERS["openmpi"]):
    return {}
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1:
    return {}
  return None


def initialize_distributed(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Calls jax.distributed.initialize when the environment asks for it; returns whether it did.

  Must run before anything touches a JAX device (train.py calls it first). Safe to call twice.
  """
  if jax.distributed.is_initialized():
    return True
  plan = distributed_plan(environ)
  if plan is None:
    return False
  jax.distributed.initialize(**plan)
  return True


def process_batch_slice(global_batch_size: int) -> slice:
  """Returns this process's contiguous 1 / process_count of the global batch (by jax.process_index()).

  The pmap path feeds these rows to the local devices; the jit path asks `process_rows` (which
  rows the mesh puts on this process's devices).
  """
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ValueError(f"train batch_size {global_batch_size} must be divisible by the number of processes ({count})")
  per = global_batch_size // count
  return slice(index * per, (index + 1) * per)
