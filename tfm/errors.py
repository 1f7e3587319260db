"""Errors in what a user gave (a config field, a file, a flag) and the one way every command reports them.

`UserError` (a ValueError) is bad input: its message names the field, file (with line or byte
offset) or value, and what is allowed. Every command's `main` runs under `run_cli`, which prints such
an error as one line, `error: <message>`, and returns exit status 2; any other exception is a bug
and keeps its traceback. `--traceback` on any command line (or TFM_TRACEBACK=1) shows the traceback
of a user error too. This module imports nothing of tfm, so every layer may raise its errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

EXIT_USER_ERROR = 2  # the exit status of bad input (argparse's too)
TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "TFM_TRACEBACK"


class UserError(ValueError):
  """Bad input: a config field, file or value that is not allowed; the message names it and what is allowed."""


class UserFileNotFoundError(UserError, FileNotFoundError):
  """A file or directory the user named (a path, a glob, a model directory) does not exist."""


def one_line(error: BaseException) -> str:
  """Returns the message of `error` on one line (a KeyError's message without its quotes)."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(str(text).split()) or type(error).__name__


def wants_traceback(argv: Optional[Sequence[str]] = None) -> bool:
  """Returns whether the command line `argv` (default sys.argv) or TFM_TRACEBACK=1 asks for tracebacks."""
  args = sys.argv[1:] if argv is None else argv
  return TRACEBACK_FLAG in args or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def report(error: BaseException) -> int:
  """Prints `error` as one line `error: <message>` to stderr; returns the exit status of bad input (2)."""
  print(f"error: {one_line(error)}", file=sys.stderr)
  sys.stderr.flush()
  return EXIT_USER_ERROR


def run_cli(main: Callable[[Optional[list]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
  """Returns the exit status of `main(argv)`: its own, or 2 after printing a UserError it raised as one line.

  `--traceback` is taken out of the arguments (out of sys.argv when `argv` is None, so `main` sees the
  command line as before) and sets TFM_TRACEBACK=1 while `main` runs, so child processes inherit it.
  """
  args = sys.argv[1:] if argv is None else list(argv)
  show = wants_traceback(args)
  old_env = os.environ.get(TRACEBACK_ENV)
  if TRACEBACK_FLAG in args:
    os.environ[TRACEBACK_ENV] = "1"  # for the child processes a command starts
    args = [a for a in args if a != TRACEBACK_FLAG]
    if argv is None:
      sys.argv[1:] = args
  try:
    status = main(None if argv is None else args)
  except UserError as e:
    if show:
      raise
    return report(e)
  finally:
    if old_env is None:
      os.environ.pop(TRACEBACK_ENV, None)
    else:
      os.environ[TRACEBACK_ENV] = old_env
  return 0 if status is None else int(status)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose usage errors are UserErrors (one line under run_cli), with --traceback in --help."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument(TRACEBACK_FLAG, action="store_true",
                      help=f"show the traceback of an error in the input (also {TRACEBACK_ENV}=1)")

  def error(self, message):
    """Raises UserError with the usage error `message` (argparse prints usage and exits instead)."""
    raise UserError(f"{message} (see {self.prog} --help)")
