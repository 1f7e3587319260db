"""Training: the loop (`train_and_evaluate`), steps, objectives, optimizer, checkpoints, writers."""

from tfm.train.loop import NonFiniteLossError, make_runtime, train_and_evaluate
from tfm.train.objectives import TASKS, get_task
from tfm.train.state import TrainState, create_train_state
from tfm.train.step import eval_step, train_step

__all__ = ["NonFiniteLossError", "TASKS", "TrainState", "create_train_state", "eval_step", "get_task",
           "make_runtime", "train_and_evaluate", "train_step"]
