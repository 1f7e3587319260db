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


def create_train_state(params, tx, rng) -> TrainState:
  """Returns the state at step 0 for `params` (raw or boxed; boxes are kept for sharding)."""
  raw = flax.linen.meta.unbox(params)
  return TrainState(params=params, opt_state=tx.init(raw), step=jnp.zeros((), jnp.int32), rng=rng)
