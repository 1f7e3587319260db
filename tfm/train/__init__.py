"""Training: the loop (`train_and_evaluate`), steps, objectives, optimizer, checkpoints, writers.

The public names load their module on first use: the training step (tfm.train.step, .objectives,
.optim, .state) imports without the loop's data, checkpoint and writer dependencies.
"""

import importlib

_HOMES = {
    "NonFiniteLossError": "tfm.train.loop", "make_runtime": "tfm.train.loop", "train_and_evaluate": "tfm.train.loop",
    "TASKS": "tfm.train.objectives", "get_task": "tfm.train.objectives",
    "TrainState": "tfm.train.state", "create_train_state": "tfm.train.state",
    "eval_step": "tfm.train.step", "train_step": "tfm.train.step",
}
__all__ = sorted(_HOMES)


def __getattr__(name):
  """Returns the public name `name` from its module (imported on first use)."""
  if name in _HOMES:
    return getattr(importlib.import_module(_HOMES[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
