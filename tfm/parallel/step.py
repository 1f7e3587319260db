"""Compiled train / eval steps: jax.jit over a mesh, or jax.pmap over local devices.

Both wrap the same step function `fn(state, batch, *rest, axis_name=None)`. The jit path passes
no axis name: the state and batch are global sharded arrays and XLA inserts the collectives. The
pmap path passes `axis_name`, so the step must `lax.pmean` its gradients and metrics over it (as
tfm's train step does); the state is replicated and each device gets its slice of the batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tfm.axes import DEFAULT_RULES
from tfm.parallel.sharding import Rules, batch_sharding

PMAP_AXIS = "batch"


def jit_step(fn: Callable, mesh: Mesh, state_shardings: Any, rules: Optional[Rules] = None, *,
             returns_state: bool = True, donate: bool = True) -> Callable:
  """Returns `step(state, batch, *rest)` compiled with jax.jit over `mesh`.

  In: state sharded by `state_shardings`, batch over the "batch" mesh axes, `rest` (RNG keys and
  the like) replicated. Out: (state, metrics) with the same state shardings and replicated metrics
  (or just replicated outputs when `returns_state` is False, as for an eval step). The input state
  is donated, so its buffers are reused for the new state. Logical constraints inside the model
  (nn.with_logical_constraint) are honoured: the step is traced under the mesh and rules.
  """
  rules = tuple(DEFAULT_RULES) if rules is None else tuple(rules)
  replicated = NamedSharding(mesh, P())
  batch_sh = batch_sharding(mesh, rules)
  compiled = {}

  def step(state, batch, *rest):
    key = len(rest)
    if key not in compiled:
      in_sh = (state_shardings, batch_sh) + (replicated,) * len(rest)
      out_sh = (state_shardings, replicated) if returns_state else replicated
      compiled[key] = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh,
                              donate_argnums=(0,) if donate and returns_state else ())
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return compiled[key](state, batch, *rest)

  return step


def pmap_step(fn: Callable, *, axis_name: str = PMAP_AXIS, axis_name_kwarg: Optional[str] = "axis_name",
              donate: bool = True) -> Callable:
  """Returns `step(state, batch, *rest)` compiled with jax.pmap over the local devices.

  In: the state as ordinary arrays (every device gets a copy: pmap in_axes=None; `replicate` puts
  it on all devices once), the batch split per device (`split_batch`: [devices, rows, ...]), `rest`
  broadcast. `fn` gets `axis_name=` so it can psum / pmean gradients and metrics over the devices.
  Out: (state, metrics) again as ordinary arrays replicated on every device (out_axes=None), so a
  loop, a checkpoint or an eval sees the same shapes as with jit. pmap does not check that
  outputs agree across devices (it returns device 0's): a step that forgets to pmean its gradients
  is caught by the equivalence tests, not here.
  """
  body = functools.partial(fn, **{axis_name_kwarg: axis_name}) if axis_name_kwarg else fn
  compiled = {}

  def step(state, batch, *rest):
    key = len(rest)
    if key not in compiled:
      compiled[key] = jax.pmap(body, axis_name=axis_name, in_axes=(None, 0) + (None,) * len(rest), out_axes=None,
                               donate_argnums=(0,) if donate else ())
    return compiled[key](state, batch, *rest)

  return step


def replicate(tree: Any, devices=None) -> Any:
  """Returns the tree with every array copied onto each local device (the pmap path's state)."""
  devices = list(jax.local_devices() if devices is None else devices)
  return jax.device_put(tree, NamedSharding(Mesh(np.array(devices), ("devices",)), P()))


def split_batch(batch: Any, num_devices: Optional[int] = None) -> Any:
  """Returns the batch reshaped [devices, rows / devices, ...] (host-local rows, for pmap)."""
  n = jax.local_device_count() if num_devices is None else num_devices

  def split(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ValueError(f"per-host batch size {x.shape[0]} is not divisible by the {n} local devices (pmap)")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree_util.tree_map(split, batch)
