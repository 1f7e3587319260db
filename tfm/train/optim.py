"""The optimizer: AdamW with warm-up then cosine / linear / constant decay, global-norm clipping,
and weight decay on weight matrices and embedding tables only (never on norm scales or biases)."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(o, total_steps: int) -> optax.Schedule:
  """Returns step -> learning rate: linear warm-up from 0 over o.warmup_steps, then o.schedule decay."""
  if o.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {list(SCHEDULES)}; got {o.schedule!r}")
  peak, end = o.learning_rate, o.learning_rate * o.end_learning_rate_factor
  warmup = max(0, min(o.warmup_steps, total_steps))
  decay_steps = max(1, total_steps - warmup)
  if o.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=o.end_learning_rate_factor)
  elif o.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


# Weight decay is decided by what a parameter is (its name), not by its rank: a query bias is
# [heads, head_dim] and a scanned stack makes every norm scale [layers, embed].
DECAYED = ("kernel", "embedding", "rel_embedding")  # projections, token / position / type / relative-bias tables
NOT_DECAYED = ("bias", "scale")                      # dense, norm and LM-head biases; norm scales


def _is_decayed(path, _) -> bool:
  """Returns whether the parameter at `path` (a tree path ending in its name) gets weight decay."""
  name = getattr(path[-1], "key", getattr(path[-1], "name", None))
  if name in DECAYED:
    return True
  if name in NOT_DECAYED:
    return False
  raise ValueError(f"parameter {jax.tree_util.keystr(path)} has name {name!r}, which the optimizer does not "
                   f"know: add it to DECAYED {DECAYED} or NOT_DECAYED {NOT_DECAYED} in tfm/train/optim.py")


def decay_mask(params):
  """Returns a tree of bools like `params`: True for kernels and embedding tables, False for biases and scales."""
  return jax.tree_util.tree_map_with_path(_is_decayed, params)


def make_optimizer(o, total_steps: int) -> optax.GradientTransformation:
  """Returns the optax transformation of optimizer config `o` for a run of `total_steps` steps."""
  if o.name != "adamw":
    raise ValueError(f"optimizer.name must be 'adamw'; got {o.name!r}")
  schedule = learning_rate_schedule(o, total_steps)
  parts = []
  if o.grad_clip_norm and o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
