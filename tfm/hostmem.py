"""Transparent huge pages for the host heap: glibc's `malloc.hugetlb` tunable, set by re-executing the entry point.

XLA:CPU allocates each step's temporaries afresh (hundreds of MB for a small model), and glibc serves blocks
that large with fresh `mmap`s, so every step the kernel faults them in 4 KiB at a time (60,000 faults per
BERT-4l-256 step). With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks the kernel for
transparent huge pages on those mappings (`madvise(MADV_HUGEPAGE)`), which turns the faults into a few
hundred 2 MiB ones. Tunables are read once when a process starts, so `use_huge_pages` re-executes the
command (same PID, same arguments) with the tunable added. Opt out with `TFM_HUGE_PAGES=0` or the entry
point's flag (`train.py --nohuge_pages`, `python -m tfm.bench ... --no-huge-pages`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT_ENV = "TFM_HUGE_PAGES"  # "0" keeps glibc's default malloc
_REEXEC_ENV = "TFM_HUGE_PAGES_REEXEC"  # set in the re-executed process: never re-execute twice
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with malloc.hugetlb
PR_SET_THP_DISABLE = 41  # prctl option (linux/prctl.h): no transparent huge pages for this process while set
_NOT_REQUESTED = "off (not requested)"


def thp_mode(path: str = THP_ENABLED) -> str | None:
  """Returns the kernel's transparent-huge-page mode ("always", "madvise", "never"), or None if unknown."""
  try:
    with open(path) as f:
      m = re.search(r"\[(\w+)\]", f.read())
  except OSError:
    return None
  return m.group(1) if m else None


def glibc_version() -> tuple[int, int] | None:
  """Returns (major, minor) of the C library this Python runs on if it is glibc, else None."""
  lib, version = platform.libc_ver()
  m = re.match(r"(\d+)\.(\d+)", version or "")
  return (int(m.group(1)), int(m.group(2))) if lib == "glibc" and m else None


def tunable_value(tunables: str) -> str | None:
  """Returns the value `glibc.malloc.hugetlb` has in a GLIBC_TUNABLES string, or None if it is not set."""
  for item in tunables.split(":"):
    name, _, value = item.partition("=")
    if name.strip() == TUNABLE:
      return value.strip()
  return None


def with_huge_pages(tunables: str) -> str:
  """Returns GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` appended (the string unchanged if it sets it)."""
  if tunable_value(tunables) is not None:
    return tunables
  return f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"


def huge_pages_state(environ=None) -> str:
  """Returns how this process's malloc uses huge pages: "on", or "off (<reason>)"."""
  environ = os.environ if environ is None else environ
  value = tunable_value(environ.get("GLIBC_TUNABLES", ""))
  if value not in (None, "0"):
    return "on" if thp_mode() in ("always", "madvise") else f"off ({TUNABLE}={value} but THP is {thp_mode()})"
  if value == "0":
    return f"off ({TUNABLE}=0 in GLIBC_TUNABLES)"
  if environ.get(OPT_OUT_ENV, "1") == "0":
    return f"off ({OPT_OUT_ENV}=0)"
  if not sys.platform.startswith("linux"):
    return f"off (not Linux: {sys.platform})"
  version = glibc_version()
  if version is None or version < MIN_GLIBC:
    return f"off (needs glibc >= 2.35; this C library: {' '.join(platform.libc_ver()) or 'unknown'})"
  mode = thp_mode()
  if mode not in ("always", "madvise"):
    return f"off (transparent huge pages: {mode or 'unknown'})"
  return _NOT_REQUESTED


def use_huge_pages(enable: bool = True) -> str:
  """Re-executes this process with malloc huge pages if they can apply and are not set; else returns the state.

  Call it from an entry point (a `__main__`), before any work: the process is replaced by a fresh one with
  the same PID, arguments and environment plus the tunable, which starts the entry point over.
  """
  if not enable:
    os.environ[OPT_OUT_ENV] = "0"  # the state, the run's summary and child processes all see the opt-out
    return huge_pages_state()
  state = huge_pages_state()
  if os.environ.pop(_REEXEC_ENV, None) or state != _NOT_REQUESTED or not getattr(sys, "orig_argv", None):
    return state
  env = {**os.environ, "GLIBC_TUNABLES": with_huge_pages(os.environ.get("GLIBC_TUNABLES", "")), _REEXEC_ENV: "1"}
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, env)
  except OSError as e:  # keep running without: huge pages only change speed
    return f"off (re-exec failed: {e})"
  return state  # not reached


@contextlib.contextmanager
def huge_pages_paused(pause: bool = True):
  """Returns a context in which the kernel gives this process no transparent huge pages; it yields whether it could.

  `prctl(PR_SET_THP_DISABLE)` applies to the faults taken inside the context (mappings made before keep their
  pages). `python -m tfm.bench torch` runs the PyTorch steps inside it: they measured slower with huge pages.
  """
  if not pause or not sys.platform.startswith("linux"):
    yield False
    return
  libc = ctypes.CDLL(None, use_errno=True)
  paused = libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
  try:
    yield paused
  finally:
    if paused:
      libc.prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0)
