"""Pretrain or fine-tune a tfm model: `python -m tfm.train` (also `tfm-train`, and `python train.py`).

    python -m tfm.train [--config configs/NAME.py] [--workdir DIR] [--config.a.b=value ...]

With no arguments it runs the embedded default (configs/default.py: the llama-test decoder on
Python's help topics, a few minutes on a CPU). Re-running the same command in the same workdir resumes.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where configs/ lives
config_flags.DEFINE_config_file("config", os.path.join(_REPO, "configs", "default.py"),
                                "Training config file (a get_config() returning a ConfigDict).", lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics, plots and the summary.")
flags.DEFINE_bool("huge_pages", False, "Restart once with transparent huge pages for malloc: CPU steps measured "
                  "0-5 % faster (tfm/hostmem.py). TFM_HUGE_PAGES=1 asks for them as well.")


def main(argv) -> None:
  """Trains as the flags say (absl app main); exits with 143 after a SIGTERM stop."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from tfm.hostmem import use_huge_pages
  use_huge_pages(flags.FLAGS.huge_pages)  # if asked for, restarts this process once, same arguments
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from tfm.parallel import initialize_distributed
  initialize_distributed()  # several hosts (SLURM, mpirun, TPU pod, JAX_COORDINATOR_ADDRESS): join them first
  from tfm.train import train_and_evaluate
  summary = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  if summary.get("stopped") == "sigterm":
    sys.exit(143)


def run() -> None:
  """Runs `main` under absl (the `tfm-train` console script, train.py); --help lists this module's flags."""
  for name in ("config", "workdir", "huge_pages"):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(main)


if __name__ == "__main__":
  run()
