"""Logical axis rules -> shardings: parameters, optimizer state, batches; sharded initialisation.

Every tfm parameter carries logical axis names (tfm/axes.py). With a mesh and rules they become
`NamedSharding`s: `state_shardings` maps a whole (abstract, boxed) train state, including optimizer
state that mirrors the parameters, and `sharded_init` runs the initialiser under `jax.jit` with
those shardings as `out_shardings`, so each device only ever materialises its own shards.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tfm.axes import DEFAULT_RULES
from tfm.checkpoint import abstract_like

Rules = Sequence[tuple]


def logical_rules(config=None) -> tuple:
  """Returns the logical axis rules as a tuple of (name, mesh axes) pairs.

  Read from `config.logical_axis_rules` when the config has it (a list of pairs; mesh axes may be
  a name, a list of names, or None), else `tfm.axes.DEFAULT_RULES`.
  """
  rules = None
  if config is not None:
    rules = config.get("logical_axis_rules", None) if hasattr(config, "get") else getattr(config, "logical_axis_rules", None)
  if rules is None:
    return tuple(DEFAULT_RULES)
  out = []
  for i, pair in enumerate(rules):
    if len(pair) != 2 or not isinstance(pair[0], str):
      raise ValueError(f"logical_axis_rules[{i}] must be a (logical name, mesh axis or axes or None) pair; got {pair!r}")
    name, axes = pair
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def is_box(x) -> bool:
  """Returns whether x is a flax partitioning box (nn.Partitioned / nn.LogicallyPartitioned)."""
  return isinstance(x, nn.meta.AxisMetadata)


def path_name(path) -> str:
  """Returns a key path as 'a/b/c' (dict keys, attribute names and indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _mesh_axes(axes) -> tuple:
  return () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))


def logical_to_mesh_spec(names: Sequence[Optional[str]], rules: Rules) -> P:
  """Returns the PartitionSpec of an array whose dimensions have logical `names`.

  Flax's rule semantics (rules in order of precedence; a mesh axis is used at most once per array;
  no matching rule = replicated), extended to names that repeat: a kernel [embed, embed] (BERT's
  MLM transform, the pooler) gets fsdp on its first dimension and stays whole on the second,
  where flax's logical_to_mesh_axes raises.
  """
  unset = object()
  spec = [unset] * len(names)
  used = set()
  for name, axes in rules:
    for i, n in enumerate(names):
      if n is None or n != name or spec[i] is not unset:
        continue
      if used & set(_mesh_axes(axes)):
        break  # the mesh axis is taken in this array: a later rule may still place this name
      spec[i] = axes
      used.update(_mesh_axes(axes))
      break
  return P(*[None if a is unset else a for a in spec])


def _box_spec(box, rules) -> P:
  if isinstance(box, nn.LogicallyPartitioned):
    return logical_to_mesh_spec(box.names, rules)
  return P(*box.names)


def _axis_size(mesh: Mesh, axes) -> int:
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def check_divisible(name: str, shape, spec: P, mesh: Mesh, logical=None) -> None:
  """Raises ValueError naming the parameter, dimension and mesh axis if a sharded dim does not divide."""
  for dim, axes in enumerate(spec):
    if axes is None or axes is P.UNCONSTRAINED:
      continue
    size = _axis_size(mesh, axes)
    if shape[dim] % size:
      what = f" (logical axis {logical[dim]!r})" if logical is not None else ""
      raise ValueError(
          f"cannot shard {name}: dimension {dim}{what} has size {shape[dim]}, which is not divisible by "
          f"mesh axis {axes!r} of size {size} (mesh {dict(mesh.shape)}). Choose model sizes that divide, "
          f"a smaller mesh axis, or logical_axis_rules that leave this axis unsharded.")


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Optional[Rules] = None) -> Any:
  """Returns a tree of NamedSharding with the structure of `nn.meta.unbox(abstract_state)`.

  Boxed leaves (parameters, and optimizer moments that optax built from boxed parameters) are
  sharded by their logical names. Unboxed array leaves that mirror a parameter (same shape, and
  their key path ends like the parameter's, e.g. opt_state/0/mu/decoder/.../kernel) take that
  parameter's sharding; all other leaves (step counters, RNG keys, scalars) are replicated.
  """
  rules = tuple(DEFAULT_RULES) if rules is None else tuple(rules)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=is_box)
  boxed = {}
  for path, leaf in flat:
    if is_box(leaf):
      keys = tuple(path_name([k]) for k in path)
      spec = _box_spec(leaf, rules)
      check_divisible(path_name(path), leaf.value.shape, spec, mesh, logical=leaf.names)
      boxed[keys] = (tuple(leaf.value.shape), spec)

  def mirrored_spec(keys, shape) -> P:
    best, best_len = [], 0
    for pkeys, (pshape, spec) in boxed.items():
      if pshape != shape:
        continue
      n = 0
      while n < min(len(keys), len(pkeys)) and keys[-1 - n] == pkeys[-1 - n]:
        n += 1
      if n > best_len:
        best, best_len = [spec], n
      elif n == best_len and n:
        best.append(spec)
    # Only a unique best match counts; ambiguous or no match: replicate.
    return best[0] if best_len and len(set(best)) == 1 else P()

  out = []
  for path, leaf in flat:
    if is_box(leaf):
      out.append(NamedSharding(mesh, boxed[tuple(path_name([k]) for k in path)][1]))
    elif hasattr(leaf, "shape"):
      out.append(NamedSharding(mesh, mirrored_spec(tuple(path_name([k]) for k in path), tuple(leaf.shape))))
    else:
      out.append(NamedSharding(mesh, P()))
  return jax.tree_util.tree_unflatten(treedef, out)


def sharded_init(init_fn: Callable, mesh: Mesh, rules: Optional[Rules] = None, *args) -> tuple:
  """Returns (state, shardings): `init_fn(*args)` (unboxed) created directly in its shards.

  `init_fn` may return boxed parameters (as `model.init` does) or a train state holding them.
  Shapes come from jax.eval_shape (no memory), shardings from the logical names, and the real
  initialisation runs under jax.jit with those out_shardings, so with fsdp > 1 no device holds
  the whole model. Random values do not depend on the mesh (threefry is partitionable in JAX).
  """
  rules = tuple(DEFAULT_RULES) if rules is None else tuple(rules)
  # No mesh context while tracing init: the out_shardings alone place the result (XLA propagates
  # them back through the initialisers), and unboxing applies no constraints.
  abstract = jax.eval_shape(init_fn, *args)
  shardings = state_shardings(abstract, mesh, rules)
  state = jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return state, shardings


def abstract_state(init_fn: Callable, mesh: Mesh, rules: Optional[Rules] = None, *args) -> tuple:
  """Returns (abstract unboxed state with .sharding set, shardings) without allocating anything."""
  rules = tuple(DEFAULT_RULES) if rules is None else tuple(rules)
  abstract = jax.eval_shape(init_fn, *args)
  shardings = state_shardings(abstract, mesh, rules)
  unboxed = nn.meta.unbox(abstract)
  target = abstract_like(unboxed, shardings)
  return target, shardings


# Batches -----------------------------------------------------------------------------------------

def batch_spec(rules: Optional[Rules] = None) -> P:
  """Returns the PartitionSpec of a batch's leading (examples) dimension under `rules`."""
  rules = tuple(DEFAULT_RULES) if rules is None else tuple(rules)
  return logical_to_mesh_spec(("batch",), rules)


def batch_sharding(mesh: Mesh, rules: Optional[Rules] = None) -> NamedSharding:
  """Returns the sharding of batch arrays: examples split over the mesh axes of "batch" (data, fsdp)."""
  return NamedSharding(mesh, batch_spec(rules))


def process_rows(global_batch_size: int, mesh: Mesh, rules: Optional[Rules] = None) -> np.ndarray:
  """Returns the (sorted) rows of each global batch that this process's devices hold on `mesh`.

  With the batch split over every process (the usual case) these are the process's contiguous
  share; where the mesh replicates the batch across processes (e.g. data = fsdp = 1) every process
  needs every row. Load these rows, then `shard_batch(rows_batch, mesh, rules, global_batch_size)`.
  """
  sharding = batch_sharding(mesh, rules)
  spec = sharding.spec
  groups = _axis_size(mesh, spec[0]) if len(spec) and spec[0] is not None else 1
  if global_batch_size % groups:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the {groups} batch shards "
                     f"(mesh axes {spec[0]!r} of {dict(mesh.shape)})")
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
    rows.update(range(*index[0].indices(global_batch_size)))
  return np.array(sorted(rows), np.int64)


def shard_batch(batch: Any, mesh: Mesh, rules: Optional[Rules] = None, global_batch_size: Optional[int] = None) -> Any:
  """Returns global jax Arrays made from this process's rows of the batch (NumPy arrays).

  On one process the rows are the whole batch. On several, each process passes the rows
  `process_rows` names (its share of every global batch); give `global_batch_size` whenever
  the rows are not simply 1 / process_count of the batch.
  """
  sharding = batch_sharding(mesh, rules)
  spec = sharding.spec
  groups = _axis_size(mesh, spec[0]) if len(spec) and spec[0] is not None else 1

  def put(x):
    x = np.asarray(x)
    rows = global_batch_size or x.shape[0] * jax.process_count()
    if rows % groups:
      raise ValueError(f"global batch size {rows} is not divisible by the {groups} batch shards "
                       f"(mesh axes {spec[0]!r} of {dict(mesh.shape)})")
    return jax.make_array_from_process_local_data(sharding, x, (rows,) + x.shape[1:])

  return jax.tree_util.tree_map(put, batch)
