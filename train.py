"""Pretrain a tfm model: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.a.b=value ...]`.

With no arguments it runs the embedded default (configs/default.py: a small GPT on Python's help
topics, a few minutes on a CPU). Re-running the same command in the same workdir resumes.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "default.py"),
                                "Training config file (a get_config() returning a ConfigDict).", lock_config=True)
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics, plots and the summary.")
flags.DEFINE_bool("huge_pages", True, "Restart once with transparent huge pages for malloc (tfm/hostmem.py); "
                  "--nohuge_pages keeps glibc's default.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from tfm.hostmem import use_huge_pages
  use_huge_pages(flags.FLAGS.huge_pages)  # may restart this process once, same arguments; before any work
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from tfm.parallel import initialize_distributed
  initialize_distributed()  # several hosts (SLURM, mpirun, TPU pod, JAX_COORDINATOR_ADDRESS): join them first
  from tfm.train import train_and_evaluate
  summary = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  if summary.get("stopped") == "sigterm":
    sys.exit(143)


if __name__ == "__main__":
  app.run(main)
