"""Checkpoints that move across topologies: save from any mesh, restore onto any other (or one CPU).

Orbax stores each array with its global shape, whatever the mesh that wrote it; restoring with a
target tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` reads every device's shard
straight into place on the new mesh. `sharding.abstract_state` builds such a target from the
initialiser without allocating anything. On several hosts every process calls save / restore;
orbax lets the primary process write the metadata and each process write its own shards.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def save_state(directory: str, state: Any) -> None:
  """Writes `state` (a pytree of sharded arrays) to `directory` with orbax; waits until done."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), state)
    ckptr.wait_until_finished()


def restore_target(state_or_abstract: Any, shardings: Any) -> Any:
  """Returns a tree of ShapeDtypeStruct carrying `shardings`: the target of an orbax restore."""
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state_or_abstract, shardings)


def restore_state(directory: str, target: Any) -> Any:
  """Returns the state in `directory`, each array placed with the sharding given in `target`."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(directory), target)
