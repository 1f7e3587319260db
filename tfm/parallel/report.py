"""What lives where: each array's sharding, and the bytes of parameters + optimizer state per device."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from tfm.parallel.sharding import path_name, state_shardings


def _shard_bytes(x, sharding) -> int:
  shape = sharding.shard_shape(tuple(x.shape)) if sharding is not None else tuple(x.shape)
  return math.prod(shape) * np.dtype(x.dtype).itemsize


def memory_per_device(state: Any, shardings: Any) -> dict:
  """Returns {top-level field: (unsharded bytes, bytes on each device)} plus a "total" entry.

  `state` may be real arrays or ShapeDtypeStructs (unboxed); its first path key groups the leaves
  (e.g. params / opt_state / step of a train state).
  """
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  shs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  if len(flat) != len(shs):
    raise ValueError(f"state has {len(flat)} leaves but shardings has {len(shs)}")
  out = {}
  for (path, x), sh in zip(flat, shs):
    group = path_name(path[:1]) if path else "state"
    full = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    total, per = out.get(group, (0, 0))
    out[group] = (total + full, per + _shard_bytes(x, sh))
  out["total"] = (sum(v[0] for v in out.values()), sum(v[1] for v in out.values()))
  return out


def sharding_report(state: Any, shardings: Any, mesh=None) -> str:
  """Returns a table: each array's path, shape, mesh PartitionSpec, per-device shape; byte totals."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  shs = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
  rows = [("array", "shape", "sharding", "per device")]
  for (path, x), sh in zip(flat, shs):
    spec = getattr(sh, "spec", None)
    rows.append((path_name(path), str(tuple(x.shape)), str(tuple(spec)) if spec is not None else "-",
                 str(sh.shard_shape(tuple(x.shape)))))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = []
  if mesh is not None:
    lines.append(f"mesh {dict(mesh.shape)} over {mesh.size} devices")
  lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  mem = memory_per_device(state, shardings)
  for group, (full, per) in mem.items():
    lines.append(f"{group}: {full / 2**20:.3f} MiB unsharded, {per / 2**20:.3f} MiB per device "
                 f"({100 * per / max(full, 1):.1f} %)")
  return "\n".join(lines)


def plan(model_config, data: int = 1, fsdp: int = 1, tensor: int = 1, tx=None, rules=None) -> tuple:
  """Returns (abstract train state, shardings, mesh) for a ModelConfig on a mesh of the given sizes.

  Nothing is allocated and no devices are needed: shapes come from jax.eval_shape and the mesh is
  an AbstractMesh, so a plan for 256 devices can be printed on a laptop. `tx` defaults to AdamW.
  """
  import flax.linen as nn
  import jax.numpy as jnp
  import optax
  from jax.sharding import AbstractMesh, AxisType

  import tfm
  from tfm.parallel.mesh import MESH_AXES

  model = tfm.build(model_config)
  tx = optax.adamw(1e-3) if tx is None else tx

  def init(rng):
    ids = jnp.zeros((1, 8), jnp.int32)
    kw = {"decoder_input_ids": ids} if model_config.family == "encoder_decoder" else {}
    params = model.init(rng, ids, **kw)["params"]
    return {"params": params, "opt_state": tx.init(nn.meta.unbox(params))}

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  mesh = AbstractMesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  shardings = state_shardings(abstract, mesh, rules)
  return nn.meta.unbox(abstract), shardings, mesh


def main(argv=None) -> None:
  """`python -m tfm.parallel PRESET --data D --fsdp F --tensor T [--set field=value ...]`: prints the plan."""
  import argparse
  import ast

  import tfm
  ap = argparse.ArgumentParser(description="Print each parameter's sharding and the bytes of params + AdamW "
                                           "state per device for a preset on a (data, fsdp, tensor) mesh.")
  ap.add_argument("preset", help=f"one of {tfm.list_configs()}")
  ap.add_argument("--data", type=int, default=1)
  ap.add_argument("--fsdp", type=int, default=1)
  ap.add_argument("--tensor", type=int, default=1)
  ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="ModelConfig override")
  a = ap.parse_args(argv)
  overrides = {}
  for item in a.set:
    k, _, v = item.partition("=")
    try:
      overrides[k] = ast.literal_eval(v)
    except (ValueError, SyntaxError):
      overrides[k] = v
  state, shardings, mesh = plan(tfm.get_config(a.preset, **overrides), a.data, a.fsdp, a.tensor)
  print(sharding_report(state, shardings, mesh))


if __name__ == "__main__":
  main()
