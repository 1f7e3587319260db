"""The host heap: transparent huge pages (glibc's `malloc.hugetlb` tunable, an explicit opt-in), and
handing the memory freed after compilation back to the kernel (`release_free_heap`).

XLA:CPU allocates each step's temporaries afresh (250 MB for the BERT-4l-256 classifier), and glibc serves
blocks that large with fresh `mmap`s, so every step the kernel faults them in 4 KiB at a time (60,753 faults per
BERT step). With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks the kernel for transparent
huge pages on those mappings (`madvise(MADV_HUGEPAGE)`): 465 faults per BERT step. Measured with steps
alternating in one process, huge pages on vs paused: BERT 837 vs 885 ms, gpt-nano 2,470 vs 2,520 ms, T5 963 vs
964 ms; PyTorch measured slower with them on two of three models (HF T5 980 vs 932 ms, HF gpt-nano 2,758 vs
2,659 ms, HF BERT 868 vs 874 ms).

Off unless asked for: `train.py --huge_pages`, `python -m tfm.bench ... --huge-pages`, or `TFM_HUGE_PAGES=1`
in the environment. Tunables are read once when a process starts, so then `use_huge_pages` re-executes the
command once (same PID, same arguments) with the tunable added. A process started with `glibc.malloc.hugetlb`
already in GLIBC_TUNABLES uses the user's setting and never re-executes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_IN_ENV = "TFM_HUGE_PAGES"  # "1" asks for huge pages, as the entry points' flags do
_REEXEC_ENV = "TFM_HUGE_PAGES_REEXEC"  # set in the re-executed process: never re-execute twice
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with malloc.hugetlb
PR_SET_THP_DISABLE = 41  # prctl option (linux/prctl.h): no transparent huge pages for this process while set
NOT_REQUESTED = "off (not requested)"
_AVAILABLE = "off (requested; this process started without the tunable)"  # possible: re-execute


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


def unavailable() -> str | None:
  """Returns why malloc huge pages cannot apply to a process started here ("not Linux: ...", ...), or None."""
  if not sys.platform.startswith("linux"):
    return f"not Linux: {sys.platform}"
  version = glibc_version()
  if version is None or version < MIN_GLIBC:
    return f"needs glibc >= 2.35; this C library: {' '.join(platform.libc_ver()) or 'unknown'}"
  mode = thp_mode()
  if mode not in ("always", "madvise"):
    return f"transparent huge pages: {mode or 'unknown'}"
  return None


def requested(flag: bool = False, environ=None) -> bool:
  """Returns whether huge pages are asked for: by the entry point's flag or by TFM_HUGE_PAGES=1."""
  environ = os.environ if environ is None else environ
  return flag or environ.get(OPT_IN_ENV, "") == "1"


def huge_pages_state(environ=None) -> str:
  """Returns how a process with this environment uses malloc huge pages: "on", or "off (<reason>)"."""
  environ = os.environ if environ is None else environ
  value = tunable_value(environ.get("GLIBC_TUNABLES", ""))
  if value == "0":
    return f"off ({TUNABLE}=0 in GLIBC_TUNABLES)"
  if value is not None:
    return "on" if thp_mode() in ("always", "madvise") else f"off ({TUNABLE}={value} but THP is {thp_mode()})"
  if not requested(environ=environ):
    return NOT_REQUESTED
  reason = unavailable()
  return f"off ({reason})" if reason else _AVAILABLE


def reexec_environment(flag: bool = False, environ=None) -> dict | None:
  """Returns the environment to re-execute with for huge pages, or None when this process must not re-execute.

  None unless they are requested (`flag` or TFM_HUGE_PAGES=1), can apply here, and GLIBC_TUNABLES does not
  set them already; None as well in a process that is itself the re-execution.
  """
  environ = dict(os.environ if environ is None else environ)
  if not requested(flag, environ) or environ.get(_REEXEC_ENV):
    return None
  environ[OPT_IN_ENV] = "1"  # the re-executed process, its summary and its children see the request
  if huge_pages_state(environ) != _AVAILABLE:
    return None
  environ["GLIBC_TUNABLES"] = with_huge_pages(environ.get("GLIBC_TUNABLES", ""))
  environ[_REEXEC_ENV] = "1"
  return environ


def use_huge_pages(flag: bool = False) -> str:
  """Re-executes this process with malloc huge pages if requested and possible; else returns their state.

  Call it from an entry point (a `__main__`), before any work: when `flag` or TFM_HUGE_PAGES=1 asks for huge
  pages, the process is replaced by a fresh one with the same PID, arguments and environment plus the
  tunable, which starts the entry point over. Without the request nothing happens.
  """
  env = reexec_environment(flag) if getattr(sys, "orig_argv", None) else None
  os.environ.pop(_REEXEC_ENV, None)  # this process's children start afresh
  if requested(flag):
    os.environ[OPT_IN_ENV] = "1"  # the state says why they are off, if they cannot apply
  if env is None:
    return huge_pages_state()
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, env)
  except OSError as e:  # keep running without: huge pages only change speed
    return f"off (re-exec failed: {e})"
  return huge_pages_state()  # not reached


@contextlib.contextmanager
def huge_pages_paused(pause: bool = True):
  """Returns a context in which the kernel gives this process no transparent huge pages; it yields whether it could.

  `prctl(PR_SET_THP_DISABLE)` applies to the faults taken inside the context (mappings made before keep their
  pages). `python -m tfm.bench torch --huge-pages --pause-torch-huge-pages` runs the PyTorch steps inside it.
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


def release_free_heap() -> bool:
  """Returns whether glibc's malloc_trim handed the free heap back to the kernel (False: no glibc).

  Compiling a step allocates and frees a few hundred MB on the host (XLA's passes, LLVM); glibc keeps
  the freed pages in its arenas, so the process's resident size stays at its compile-time height
  while training (about 160 MB for the 6-layer 384-wide GPT). Called once after the first step, it
  lowers the peak resident size of the run by that much on every backend (the host heap is the
  host's). Cheap: one call, no effect on results.
  """
  if not sys.platform.startswith("linux") or glibc_version() is None:
    return False
  try:
    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
  except (OSError, AttributeError):
    return False
