"""Session setup: XLA compiling fast (backend optimisation level 0), one persistent JAX compilation cache for every process of a test run.

Many tests compile the same programs again: train_and_evaluate builds fresh jitted steps on every call, and
subprocesses (train.py runs that resume or are killed, `python -m tfm.bench`, the 8-device parallel
workers) start from nothing, so a run that resumes compiles what the first run already compiled. The
controlling pytest process makes one empty cache directory and puts it in the environment before any test
module imports JAX, so its xdist workers and every subprocess they start share it: a program compiled once
in the run is loaded from disk the next time. The pytest processes keep JAX's threshold (only programs
that took a second or more to compile are written: writing each small one costs more than it saves, as
measured on tests/test_core_models.py); subprocesses write every program, since most of their time is
compiling. Nothing outlives the run: the directory is removed at the end. A cache directory the user set
(JAX_COMPILATION_CACHE_DIR) is used as it is.
"""

import os
import shutil
import tempfile

import pytest

# A size limit makes JAX lock the directory around each read and write, so that concurrent processes never
# read an entry another one is still writing; 8 GiB is never reached by the suite.
MAX_SIZE = str(8 * 2 ** 30)
_RUN_CACHE = "TFM_TESTS_JAX_CACHE_DIR"  # the directory this run made (a user's own is not touched)
_MADE_HERE = pytest.StashKey[str]()
# XLA:CPU backend optimisation level 0 (LLVM without its optimisation passes): the suite's programs run for
# milliseconds and compile for seconds, and the HLO passes (fusion, SPMD partitioning: what the results
# depend on) run all the same. Measured on tests/test_core_models.py + test_generate.py: 172 s -> 129 s.
# A level the user put in XLA_FLAGS is kept.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  """Sets the XLA flags of the run and makes its cache directory, in the controlling process only (xdist
  workers and subprocesses inherit the environment)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE}".strip()
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # a worker of this run, or the user's own directory
  path = tempfile.mkdtemp(prefix="tfm-tests-jax-cache-")
  config.stash[_MADE_HERE] = path
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_RUN_CACHE] = path
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", MAX_SIZE)


def pytest_unconfigure(config):
  """Removes the run's cache directory, if this process made it."""
  path = config.stash.get(_MADE_HERE, None)
  if path:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def subprocesses_cache_every_program():
  """Lets the subprocesses of this run write every compiled program to the cache; yields nothing.

  A session fixture runs after collection, when the test modules have imported JAX, so this process's
  JAX keeps the threshold it read at import.
  """
  if os.environ.get(_RUN_CACHE) == os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  yield
