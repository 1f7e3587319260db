"""The train and eval steps as pure functions (jit them, or pmap them with `axis_name`).

`train_step(state, batch, rng, *, model, tx, task, micro_batches=1, axis_name=None)`:
  batch: dict of [batch, ...] arrays made by the task (see tfm.train.objectives);
  rng: the step's key (dropout; micro-batch i uses fold_in(rng, i)).
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


def loss_and_grad_sums(params, batch, rng, *, model, task, micro_batches=1):
  """Returns (grad sums, {"loss", "weight", "correct"} sums) over the batch, accumulated over micro-batches."""
  def loss_fn(p, mb, r):
    sums = task.loss(model, p, mb, r, deterministic=False)
    return sums["loss"], sums

  grad_fn = jax.grad(loss_fn, has_aux=True)
  if micro_batches == 1:
    return grad_fn(params, batch, jax.random.fold_in(rng, 0))

  micro = _split(batch, micro_batches)
  zeros = (jax.tree_util.tree_map(jnp.zeros_like, params),
           {"loss": jnp.zeros((), jnp.float32), "weight": jnp.zeros((), jnp.float32),
            "correct": jnp.zeros((), jnp.float32)})

  def body(carry, xs):
    i, mb = xs
    g, s = grad_fn(params, mb, jax.random.fold_in(rng, i))
    return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None

  (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(micro_batches), micro))
  return grads, sums


def train_step(state, batch, rng, *, model, tx, task, micro_batches=1, axis_name=None):
  """Returns (state after one optimizer step on `batch`, metrics dict of scalars)."""
  grads, sums = loss_and_grad_sums(state.params, batch, rng, model=model, task=task, micro_batches=micro_batches)
  if axis_name is not None:
    grads, sums = jax.lax.psum((grads, sums), axis_name)
  denom = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": sums["loss"] / denom, "accuracy": sums["correct"] / denom, "tokens": sums["weight"],
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def eval_step(params, batch, *, model, task, axis_name=None):
  """Returns {"loss", "weight", "correct"} sums of `batch` (deterministic: no dropout)."""
  sums = task.loss(model, params, batch, None, deterministic=True)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
