"""The train and eval steps as pure functions (jit them, or pmap them with `axis_name`).

`train_step(state, batch, rng, *, model, tx, task, micro_batches=1, axis_name=None)`:
  batch: dict of [batch, ...] arrays made by the task (see tfm.train.objectives);
  rng: the step's key (dropout). Dropout masks are drawn per example: the mask of a row depends on
  rng, the layer and the row's index in the global batch only (tfm.layers.primitives.example_rows),
  so one device, any mesh, pmap, several processes and any `micro_batches` draw the same masks. The
  global rows are batch[EXAMPLE_ROWS] (int [rows]) when the caller gives them (the pmap runtime
  does), else 0 .. rows - 1 offset by the device's index along `axis_name` (pmap over one process),
  which under jit over a mesh is the global batch itself.
  Gradient accumulation: the batch is split into `micro_batches` slices and a lax.scan adds up the
  gradients of the summed loss, then divides once by the total weight: the same update as one big
  batch. With `axis_name` (pmap), the sums are `lax.psum`-ed over that axis before dividing, which
  equals a pmean of per-device means weighted by token counts (exact data parallelism).
Returns (new_state, metrics) with metrics loss, accuracy, tokens (weight), grad_norm, learning rate free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tfm.layers.primitives import example_rows
from tfm.train.state import update_ema

EXAMPLE_ROWS = "example_rows"  # optional batch entry: int32 [rows], each row's index in the global batch


def global_rows(batch, axis_name=None) -> jax.Array:
  """Returns int32 [rows]: batch[EXAMPLE_ROWS], else arange(rows) (+ rows * device index along `axis_name`)."""
  if EXAMPLE_ROWS in batch:
    return jnp.asarray(batch[EXAMPLE_ROWS], jnp.int32)
  n = jax.tree_util.tree_leaves(batch)[0].shape[0]
  rows = jnp.arange(n, dtype=jnp.int32)
  if axis_name is not None:  # pmap: device d holds rows d * n .. d * n + n - 1 of the batch
    rows = rows + n * jax.lax.axis_index(axis_name)
  return rows


def _split(batch, n):
  """Returns the batch reshaped [n, rows / n, ...]: micro-batch i holds rows i, i + n, i + 2n, ...

  Strided rather than contiguous: when the rows are sharded over devices (jit over a mesh), each
  device keeps its own rows in every micro-batch, so accumulation moves no data between devices
  (contiguous slices made XLA shuffle the batch: 15 collective-permutes + 9 all-gathers per step
  on mesh (8,1,1) with 4 micro-batches of 8 rows; none now). The sum over all rows is the same.
  """
  def f(x):
    if x.shape[0] % n:
      raise ValueError(f"train.batch_size ({x.shape[0]}) must be divisible by train.micro_batches ({n})")
    return x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)  # [n, rows / n, ...]
  return jax.tree_util.tree_map(f, batch)


def loss_and_grad_sums(params, batch, rng, *, model, task, micro_batches=1, axis_name=None):
  """Returns (grad sums, {"loss", "weight", "correct"} sums) over the batch, accumulated over micro-batches.

  Every micro-batch uses the same `rng`: its rows' global indices (`global_rows`) tell their dropout
  masks apart, so the masks are those of the whole batch in one step.
  """
  rows = global_rows(batch, axis_name)  # [rows]
  batch = {k: v for k, v in batch.items() if k != EXAMPLE_ROWS}

  def loss_fn(p, mb, mb_rows):
    with example_rows(mb_rows):
      sums = task.loss(model, p, mb, rng, deterministic=False, label_smoothing=task.label_smoothing)
    return sums["loss"], sums

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if micro_batches == 1:
    return grad_fn(params, batch, rows)

  micro, micro_rows = _split((batch, rows), micro_batches)  # [n, rows / n, ...], [n, rows / n]
  zeros = (jax.tree_util.tree_map(jnp.zeros_like, params),
           {"loss": jnp.zeros((), jnp.float32), "weight": jnp.zeros((), jnp.float32),
            "correct": jnp.zeros((), jnp.float32)})

  def body(carry, xs):
    mb, mb_rows = xs
    g, s = grad_fn(params, mb, mb_rows)
    return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None

  (grads, sums), _ = jax.lax.scan(body, zeros, (micro, micro_rows))
  return grads, sums


def train_step(state, batch, rng, *, model, tx, task, micro_batches=1, axis_name=None):
  """Returns (state after one optimizer step on `batch`, metrics dict of scalars)."""
  grads, sums = loss_and_grad_sums(state.params, batch, rng, model=model, task=task, micro_batches=micro_batches,
                                   axis_name=axis_name)
  if axis_name is not None:
    grads, sums = jax.lax.psum((grads, sums), axis_name)
  denom = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": sums["loss"] / denom, "accuracy": sums["correct"] / denom, "tokens": sums["weight"],
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                       ema_params=update_ema(state, params)), metrics


def eval_step(params, batch, *, model, task, axis_name=None):
  """Returns {"loss", "weight", "correct"} sums of `batch` (deterministic: no dropout)."""
  sums = task.loss(model, params, batch, None, deterministic=True)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
