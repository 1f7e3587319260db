"""Pretrain or fine-tune a tfm model: `python -m tfm.train` (also `tfm-train`, and `python train.py`).

    python -m tfm.train [--config configs/NAME.py] [--workdir DIR] [--config.a.b=value ...]

With no arguments it runs the embedded default (configs/default.py: the llama-test decoder on
Python's help topics, a few minutes on a CPU). Re-running the same command in the same workdir resumes.
Bad input (a misspelt field, a value not allowed, a missing file) is one line `error: ...` and exit
status 2; --traceback (or TFM_TRACEBACK=1) shows its traceback.
"""

import os
import re
import sys

from absl import app, flags, logging

from tfm.errors import TRACEBACK_ENV, UserError, one_line, run_cli

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # where configs/ lives
# What ml_collections and absl raise for a bad --config file or --config.a.b=value override.
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError)


def _define_flags() -> None:
  """Defines the command's flags once (the config flag reads the --config.* overrides of sys.argv here)."""
  if "workdir" in flags.FLAGS:
    return
  from ml_collections import config_flags
  flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics, plots and the summary.")
  flags.DEFINE_bool("huge_pages", False, "Restart once with transparent huge pages for malloc: CPU steps measured "
                    "0-5 % faster (tfm/hostmem.py). TFM_HUGE_PAGES=1 asks for them as well.")
  flags.DEFINE_bool("traceback", False, f"Show the traceback of an error in the input (also {TRACEBACK_ENV}=1).")
  config_flags.DEFINE_config_file("config", os.path.join(_REPO, "configs", "default.py"),
                                  "Training config file (a get_config() returning a ConfigDict).", lock_config=True)


def flag_error(error: BaseException, argv) -> UserError:
  """Returns the one-line UserError of a bad --config flag in `argv`: the field named (with its closest), or why."""
  from tfm.train import defaults
  args = list(argv[1:])
  for i, a in enumerate(args):
    if a.startswith("--config."):
      path, eq, value = a[len("--config."):].partition("=")
      if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
        value, eq = args[i + 1], "="
      problem = defaults.field_problem(path, value if eq else None)
      if problem:
        return UserError(problem)
  if isinstance(error, UserError):
    return error
  return UserError(f"bad flag or config file: {one_line(error)}")


def _parse_flags(argv):
  """Returns the arguments left after parsing the flags of `argv` (absl's flags_parser); a bad one is a UserError."""
  try:
    return flags.FLAGS(argv)
  except _FLAG_ERRORS as e:
    raise flag_error(e, argv) from e


def _loaded_config():
  """Returns the --config ConfigDict; a file that failed to load (ml_collections defers the error) is a UserError."""
  config = flags.FLAGS.config
  try:
    config.keys()
  except OSError as e:
    text = one_line(e)
    errno = re.search(r"\[Errno \d+\] (.*)$", text)
    raise UserError(f"--config: cannot load the config file: {errno.group(1) if errno else text}") from e
  return config


def main(argv) -> None:
  """Trains as the flags say (absl app main); exits with 143 after a SIGTERM stop."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: flags are --config FILE, --workdir DIR, --config.a.b=value")
  from tfm.hostmem import use_huge_pages
  use_huge_pages(flags.FLAGS.huge_pages)  # if asked for, restarts this process once, same arguments
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from tfm.parallel import initialize_distributed
  initialize_distributed()  # several hosts (SLURM, mpirun, TPU pod, JAX_COORDINATOR_ADDRESS): join them first
  from tfm.train import train_and_evaluate
  summary = train_and_evaluate(_loaded_config(), flags.FLAGS.workdir)
  if summary.get("stopped") == "sigterm":
    sys.exit(143)


def _run(argv=None) -> int:
  """Defines the flags and runs `main` under absl; returns the exit status."""
  argv = sys.argv if argv is None else [sys.argv[0], *argv]
  try:
    _define_flags()
  except _FLAG_ERRORS as e:
    raise flag_error(e, argv) from e
  for name in ("config", "workdir", "huge_pages", "traceback"):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(main, argv, flags_parser=_parse_flags)
  return 0


def run() -> None:
  """Runs the command (the `tfm-train` console script, train.py); --help lists this module's flags."""
  sys.exit(run_cli(_run))


if __name__ == "__main__":
  run()
