"""The train state: params, optimizer state, step and the base RNG key, as one pytree."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly: saved whole in every checkpoint."""

  params: Any      # model parameters (raw arrays, float32)
  opt_state: Any   # optax state
  step: jax.Array  # int32 scalar: optimizer steps taken (= batches consumed: the data position)
  rng: jax.Array   # uint32[2] base key; step s uses fold_in(rng, s) (dropout)
  ema_params: Any = None  # the params' exponential moving average (optimizer.ema_decay > 0), else None
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)  # static: part of the tree's structure


def create_train_state(params, tx, rng, ema_decay: float = 0.0) -> TrainState:
  """Returns the state at step 0 for `params` (raw or boxed; boxes are kept for sharding), with an EMA if asked."""
  raw = flax.linen.meta.unbox(params)
  ema = jax.tree_util.tree_map(jnp.copy, params) if ema_decay else None  # its own buffers: the step donates both
  return TrainState(params=params, opt_state=tx.init(raw), step=jnp.zeros((), jnp.int32), rng=rng,
                    ema_params=ema, ema_decay=float(ema_decay))


def update_ema(state: TrainState, params) -> Any:
  """Returns the moving average after a step to `params` (None without one).

  The decay warms up as min(decay, (1 + t) / (10 + t)) at step t, so the average leaves the
  initial params behind within tens of steps instead of after about 1 / (1 - decay).
  """
  if state.ema_params is None:
    return None
  t = state.step.astype(jnp.float32)
  d = jnp.minimum(state.ema_decay, (1.0 + t) / (10.0 + t))
  return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)


def eval_params(state: TrainState) -> Any:
  """Returns the params to evaluate and export: the moving average when the run keeps one, else the params."""
  return state.params if state.ema_params is None else state.ema_params
