"""Multi-device checks for tests/test_parallel.py, run in a subprocess with 8 fake CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_worker.py CMD '{"json": "args"}'

prints one line `RESULT {...}` that the test asserts on. The training step, losses, optimizer and
checkpoints are tfm's own (tfm.train); the single-device reference is a plain jax.jit of that step
with no mesh at all, so nothing of tfm.parallel takes part in it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import flax.linen as nn
import tfm
from tfm import parallel as par
from tfm.train import objectives
from tfm.train.defaults import base_config
from tfm.train.optim import make_optimizer
from tfm.train.state import create_train_state
from tfm.train.step import eval_step, train_step

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
BATCH, SEQ = 8, 16
# Every sharded dimension divides 8: heads 8 (head_dim 8), d_ff 256 / 128, vocab 256, d_model 64.
FAMILIES = {
    "decoder": ("gpt2-tiny", "lm", dict(num_heads=8, num_layers=1)),
    "encoder": ("bert-tiny", "mlm", dict(num_heads=8, num_layers=1)),
    "encoder_decoder": ("t5-tiny", "span", dict(num_heads=8, head_dim=8, num_layers=1)),
}


def setup(family: str, **extra):
  """Returns (model, task, tx): the tiny model of `family`, its objective, AdamW (constant lr)."""
  preset, task_name, overrides = FAMILIES[family]
  model = tfm.build(tfm.get_config(preset, **dict(overrides, **extra)))
  o = base_config().optimizer
  o.learning_rate, o.warmup_steps, o.schedule = 1e-3, 0, "constant"
  # AdamW divides by sqrt(v) + eps. Some gradients are exactly zero in exact arithmetic (the key
  # bias: softmax ignores a constant shift of the scores) and ~1e-10 in float32 noise; with eps=1e-8
  # Adam turns that noise into ~1e-5 updates that differ between any two summation orders (even two
  # single-device XLA builds). eps=1e-6 keeps those updates below 1e-6 and leaves the others as is.
  o.eps = 1e-6
  return model, objectives.get_task(task_name), make_optimizer(o, 100)


def make_batches(family: str, n: int, batch: int = BATCH, seed: int = 0) -> list:
  """Returns n host batches (NumPy) in the layout of the family's objective."""
  rs = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    ids = rs.randint(5, 256, (batch, SEQ)).astype(np.int32)
    tgt = rs.randint(5, 256, (batch, SEQ)).astype(np.int32)
    if family == "decoder":  # two packed documents per row
      segs = np.concatenate([np.ones((batch, SEQ // 2)), 2 * np.ones((batch, SEQ - SEQ // 2))], 1).astype(np.int32)
      b = {"inputs": ids, "targets": tgt, "segment_ids": segs, "weights": np.ones((batch, SEQ), np.float32)}
    elif family == "encoder":  # a random ~30 % of positions are predicted: token counts differ per device
      b = {"inputs": ids, "targets": tgt, "segment_ids": np.ones((batch, SEQ), np.int32),
           "weights": (rs.rand(batch, SEQ) < 0.3).astype(np.float32)}
    else:  # targets padded at the end of some rows
      w = (np.arange(SEQ)[None] < rs.randint(SEQ // 2, SEQ + 1, (batch, 1))).astype(np.float32)
      b = {"inputs": ids, "targets": np.where(w > 0, tgt, 0).astype(np.int32), "weights": w}
    out.append(b)
  return out


def init_fn(model, tx):
  """Returns rng -> TrainState with boxed params (so shardings can be read from the logical names)."""
  def init(rng):
    ids = jnp.zeros((1, SEQ), jnp.int32)
    kw = {"decoder_input_ids": ids} if model.config.family == "encoder_decoder" else {}
    params = model.init(rng, ids, **kw)["params"]
    return create_train_state(params, tx, jax.random.PRNGKey(1))
  return init


def step_fn(model, tx, task, micro_batches=1):
  """Returns tfm's train_step with the model bound (axis_name stays free for pmap)."""
  def step(state, batch, rng, axis_name=None):
    return train_step(state, batch, rng, model=model, tx=tx, task=task, micro_batches=micro_batches,
                      axis_name=axis_name)
  return step


def eval_loss(model, task, params, batches) -> float:
  """Returns the token-weighted eval loss of params (any sharding) over batches (plain jit)."""
  f = jax.jit(lambda p, b: eval_step(p, b, model=model, task=task))
  tot = w = 0.0
  for b in batches:
    s = f(params, b)
    tot, w = tot + float(s["loss"]), w + float(s["weight"])
  return tot / w


def run_single(model, tx, task, batches, micro_batches=1):
  """Returns (losses, params, opt_state): the reference, a plain jax.jit on one device, no mesh, no tfm.parallel."""
  state = jax.jit(lambda r: nn.meta.unbox(init_fn(model, tx)(r)))(jax.random.PRNGKey(0))
  step = jax.jit(step_fn(model, tx, task, micro_batches))
  losses = []
  for i, b in enumerate(batches):
    state, m = step(state, b, jax.random.PRNGKey(100 + i))
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), jax.device_get(state.opt_state)


def run_mesh(model, tx, task, batches, shape, micro_batches=1):
  """Returns (losses, params, state, shardings, mesh) of the jit path on a (data, fsdp, tensor) mesh."""
  mesh = par.make_mesh(*shape)
  state, shardings = par.sharded_init(init_fn(model, tx), mesh, None, jax.random.PRNGKey(0))
  step = par.jit_step(step_fn(model, tx, task, micro_batches), mesh, shardings)
  losses = []
  for i, b in enumerate(batches):
    state, m = step(state, par.shard_batch(b, mesh), jax.random.PRNGKey(100 + i))
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params), state, shardings, mesh


def run_pmap(model, tx, task, batches, micro_batches=1):
  """Returns (losses, params, opt_state) of the pmap path over the 8 local devices."""
  state = par.replicate(jax.jit(lambda r: nn.meta.unbox(init_fn(model, tx)(r)))(jax.random.PRNGKey(0)))
  step = par.pmap_step(step_fn(model, tx, task, micro_batches))
  losses = []
  for i, b in enumerate(batches):
    state, m = step(state, par.split_batch(b), jax.random.PRNGKey(100 + i))
    losses.append(float(m["loss"]))
  assert len(state.params["token_embed"]["embedding"].sharding.device_set) == jax.device_count()
  return losses, jax.device_get(state.params), jax.device_get(state.opt_state)


def diffs(losses, params, opt_state, ref) -> dict:
  """Returns max |loss - ref|, max |param - ref| and max |optimizer state - ref| against ref = (losses, params, opt_state)."""
  return {"loss": max(abs(a - b) for a, b in zip(losses, ref[0])), "params": max_diff(params, ref[1]),
          "opt_state": max_diff(opt_state, ref[2])}


def run_state(workdir) -> dict:
  """Returns the newest checkpoint of a train.py run (params, opt_state, step, rng) on this process's first
  device, whatever topology wrote it (orbax needs a target then: built from the checkpoint's metadata)."""
  import orbax.checkpoint as ocp
  directory = os.path.join(str(workdir), "checkpoints")
  step = max(int(s) for s in os.listdir(directory) if s.isdigit())
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  return jax.device_get(checkpointer.restore(path, target))


def max_diff(a, b) -> float:
  """Returns the largest absolute difference between two trees of arrays (same structure)."""
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb))


# Commands ----------------------------------------------------------------------------------------

def cmd_equivalence(family: str, steps: int = 3, attention_impl: str = "auto", block: int = 0,
                    dropout: float = 0.0, meshes=None) -> dict:
  """Returns per-run max |loss - ref|, max |param - ref| and max |optimizer state - ref| against the
  single-device reference (`block`: blockwise attention's query and key block size, 0 for its
  defaults; `dropout`: hidden and attention dropout rate; `meshes`: default MESHES)."""
  if block:
    from tfm.attention import blockwise
    blockwise.BLOCK_Q = blockwise.BLOCK_K = block
  model, task, tx = setup(family, attention_impl=attention_impl, dropout_rate=dropout, attention_dropout_rate=dropout)
  batches = make_batches(family, 1) * steps  # one batch again and again: the loss must fall
  t = time.time()
  ref = run_single(model, tx, task, batches)
  out = {"ref_losses": ref[0], "runs": {}, "seconds": {"single": time.time() - t}}
  if dropout:  # the masks are really drawn: the same steps without dropout end elsewhere
    out["no_dropout_params"] = max_diff(run_single(setup(family, attention_impl=attention_impl)[0], tx, task,
                                                   batches)[1], ref[1])
  for shape in (MESHES if meshes is None else [tuple(m) for m in meshes]):
    t = time.time()
    losses, params, state = run_mesh(model, tx, task, batches, shape)[:3]
    out["runs"][str(shape)] = diffs(losses, params, jax.device_get(state.opt_state), ref)
    out["seconds"][str(shape)] = time.time() - t
  t = time.time()
  out["runs"]["pmap"] = diffs(*run_pmap(model, tx, task, batches), ref)
  out["seconds"]["pmap"] = time.time() - t
  return out


def cmd_shardings() -> dict:
  """Returns the specs and shard shapes of a few parameters, and bytes per device with fsdp=4."""
  model, task, tx = setup("decoder", tie_embeddings=False)
  init = init_fn(model, tx)
  out = {}
  mesh = par.make_mesh(2, 2, 2)
  state, sh = par.sharded_init(init, mesh, None, jax.random.PRNGKey(0))
  wi = state.params["decoder"]["layers"]["layer_0"]["mlp"]["wi"]["kernel"]
  emb = state.params["token_embed"]["embedding"]
  mu = state.opt_state[1][0].mu["decoder"]["layers"]["layer_0"]["mlp"]["wi"]["kernel"]
  out["mesh222"] = {
      "wi_spec": [a for a in wi.sharding.spec], "wi_shape": list(wi.shape),
      "wi_shard": list(wi.addressable_shards[0].data.shape),
      "emb_spec": [a for a in emb.sharding.spec], "emb_shape": list(emb.shape),
      "emb_shard": list(emb.addressable_shards[0].data.shape),
      "mu_wi_spec": [a for a in mu.sharding.spec],
  }
  # fsdp = 4: measure the bytes each device really holds (its addressable shards), params + opt state.
  mesh = par.make_mesh(2, 4, 1)
  state, sh = par.sharded_init(init, mesh, None, jax.random.PRNGKey(0))
  dev0 = jax.devices()[0]
  held = full = 0
  for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
    full += leaf.size * leaf.dtype.itemsize
    held += sum(s.data.size * s.data.dtype.itemsize for s in leaf.addressable_shards if s.device == dev0)
  report = par.sharding_report(state, sh, mesh)
  mem = par.memory_per_device(state, sh)
  # Compiled sharded init: what one device needs while initialising (outputs + temporaries).
  target, _ = par.abstract_state(init, mesh, None, jax.random.PRNGKey(0))
  compiled = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=sh).lower(jax.random.PRNGKey(0)).compile()
  ma = compiled.memory_analysis()
  out["fsdp4"] = {"full_bytes": full, "device0_bytes": held, "report_total": list(mem["total"]),
                  "report_params": list(mem["params"]), "report_opt": list(mem["opt_state"]),
                  "init_output_bytes": getattr(ma, "output_size_in_bytes", None),
                  "init_temp_bytes": getattr(ma, "temp_size_in_bytes", None),
                  "report_lines": report.splitlines()}
  # Scanned layers (nn.scan stacks them under a leading "layers" axis, never sharded): same specs
  # one axis later, and two steps on (2,2,2) equal one device.
  smodel, stask, stx = setup("decoder", scan_layers=True, num_layers=2)
  sbatches = make_batches("decoder", 2)
  ref = run_single(smodel, stx, stask, sbatches)
  losses, params, sstate = run_mesh(smodel, stx, stask, sbatches, (2, 2, 2))[:3]
  swi = sstate.params["decoder"]["layers"]["layers"]["mlp"]["wi"]["kernel"]
  out["scan"] = {"wi_spec": list(swi.sharding.spec), "wi_shape": list(swi.shape),
                 **diffs(losses, params, jax.device_get(sstate.opt_state), ref)}
  # A dimension that does not divide: 4 heads over tensor = 8.
  bad, _, _ = setup("decoder", num_heads=4)
  try:
    par.sharded_init(init_fn(bad, tx), par.make_mesh(1, 1, 8), None, jax.random.PRNGKey(0))
    out["error"] = None
  except ValueError as e:
    out["error"] = str(e)
  return out


def cmd_save(family: str, directory: str) -> dict:
  """Trains 2 steps on mesh (2,2,2), saves with tfm's CheckpointManager; returns the eval loss."""
  from tfm.checkpoint import Checkpoints
  model, task, tx = setup(family)
  batches = make_batches(family, 2)
  _, _, state, shardings, mesh = run_mesh(model, tx, task, batches, (2, 2, 2))
  ckpt = Checkpoints(directory, keep=2)
  ckpt.save(state, {"step": int(state.step)})
  ckpt.close()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get((state.params, state.opt_state)))[0]
  np.savez(os.path.join(directory, "state.npz"), **{par.sharding.path_name(p): x for p, x in flat})
  return {"eval_loss": eval_loss(model, task, state.params, make_batches(family, 2, seed=7)),
          "step": int(state.step), "devices": jax.device_count()}


def cmd_restore(family: str, directory: str, shape) -> dict:
  """Restores the checkpoint onto `shape` (or one device: [1, 1, 1]); returns eval loss and specs."""
  from tfm.checkpoint import Checkpoints
  model, task, tx = setup(family)
  devices = jax.devices()[:int(np.prod(shape))]
  mesh = par.make_mesh(*shape, devices=devices)
  target, shardings = par.abstract_state(init_fn(model, tx), mesh, None, jax.random.PRNGKey(0))
  ckpt = Checkpoints(directory, keep=2)
  state, meta = ckpt.restore(target)
  ckpt.close()
  wi = [x for x in jax.tree_util.tree_leaves(state.params) if x.ndim == 2][0]
  saved = np.load(os.path.join(directory, "state.npz"))  # (params, opt_state) as saved on (2,2,2)
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get((state.params, state.opt_state)))[0]
  diff = {str(i): max([float(np.max(np.abs(saved[par.sharding.path_name(p)] - x))) for p, x in flat if p[0].idx == i])
          for i in (0, 1)}
  return {"param_diff": diff["0"], "opt_state_diff": diff["1"], "num_leaves": len(flat),
          "num_params": sum(p[0].idx == 0 for p, _ in flat), "num_saved": len(saved.files),
          "eval_loss": eval_loss(model, task, state.params, make_batches(family, 2, seed=7)),
          "step": int(state.step), "devices": jax.device_count(), "meta": meta,
          "mesh_devices": len(wi.sharding.device_set)}


def cmd_accumulation(family: str, k: int = 4, dropout: float = 0.0) -> dict:
  """Returns diffs (loss, params, optimizer state) of k micro-batches vs one step on the k-times larger
  batch (mesh, pmap, 1 device); `dropout`: hidden and attention dropout rate."""
  model, task, tx = setup(family, dropout_rate=dropout, attention_dropout_rate=dropout)
  batches = make_batches(family, 2, batch=BATCH * k, seed=3)
  ref = run_single(model, tx, task, batches, micro_batches=1)
  out = {"single": diffs(*run_single(model, tx, task, batches, micro_batches=k), ref)}
  losses, params, state = run_mesh(model, tx, task, batches, (2, 2, 2), micro_batches=k)[:3]
  out["(2, 2, 2)"] = diffs(losses, params, jax.device_get(state.opt_state), ref)
  out["pmap"] = diffs(*run_pmap(model, tx, task, batches, micro_batches=k), ref)
  return out


def cmd_multiprocess(family: str = "decoder", steps: int = 2, dropout: float = 0.0, directory: str = "") -> dict:
  """One process of a multi-host run (jax.distributed from the environment). On mesh (2,2,2) the
  batch is split across processes; on (1,1,8) it is replicated, so each process needs every row.
  Each process passes only the rows `process_rows` names. With `directory`, every process takes
  part in saving the (2,2,2) state there (tfm's Checkpoints: orbax, each process its own shards)
  and process 0 writes the one-device reference state as state.npz (for cmd_restore)."""
  joined = par.initialize_distributed()
  model, task, tx = setup(family, dropout_rate=dropout, attention_dropout_rate=dropout)
  batches = make_batches(family, steps)
  out = {"joined": joined, "process": jax.process_index(), "processes": jax.process_count(),
         "local_devices": jax.local_device_count(), "devices": jax.device_count(), "runs": {}}
  for shape in ((2, 2, 2), (1, 1, 8)):
    mesh = par.make_mesh(*shape)
    rows = par.process_rows(BATCH, mesh)
    state, shardings = par.sharded_init(init_fn(model, tx), mesh, None, jax.random.PRNGKey(0))
    step = par.jit_step(step_fn(model, tx, task), mesh, shardings)
    losses = []
    for i, b in enumerate(batches):
      local = {k: v[rows] for k, v in b.items()}
      state, m = step(state, par.shard_batch(local, mesh, None, BATCH), jax.random.PRNGKey(100 + i))
      losses.append(float(m["loss"]))
    out["runs"][str(shape)] = {"rows": rows.tolist(), "losses": losses}
    if directory and shape == (2, 2, 2):
      from tfm.checkpoint import Checkpoints
      ckpt = Checkpoints(directory, keep=2)
      ckpt.save(state, {"step": int(state.step)})
      ckpt.close()
      out["opt_state_sharded"] = sum(x.addressable_shards[0].data.shape != x.shape  # leaves split over devices
                                     for x in jax.tree_util.tree_leaves(state.opt_state))
  if jax.process_index() == 0:  # the reference: the same steps on this process's first device alone
    with jax.default_device(jax.local_devices()[0]):
      ref = run_single(model, tx, task, batches)
    out["ref_losses"] = ref[0]
    if directory:
      flat = jax.tree_util.tree_flatten_with_path((ref[1], ref[2]))[0]
      np.savez(os.path.join(directory, "state.npz"), **{par.sharding.path_name(p): x for p, x in flat})
      out["ref_eval_loss"] = eval_loss(model, task, ref[1], make_batches(family, 2, seed=7))
  return out


COMMANDS = {"multiprocess": cmd_multiprocess, "equivalence": cmd_equivalence, "shardings": cmd_shardings, "save": cmd_save, "restore": cmd_restore,
            "accumulation": cmd_accumulation}

if __name__ == "__main__":
  result = COMMANDS[sys.argv[1]](**(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
  print("RESULT " + json.dumps(result), flush=True)
