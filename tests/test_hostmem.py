"""tfm.hostmem: the entry points restart once with transparent huge pages for malloc, which removes the page faults
of large allocations; the opt-out keeps glibc's default, and huge_pages_paused suspends them."""

import json
import os
import subprocess
import sys

import pytest

from tfm import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 64 * 2 ** 20  # one malloc of 64 MiB: 16,384 pages of 4 KiB when faulted in without huge pages

# Restarts through use_huge_pages (hostmem.py loaded by path: no jax import), then faults in a fresh malloc'd
# block three times and prints what it saw as one JSON line.
CHILD = f"""
import ctypes, importlib.util, json, os, resource, sys
spec = importlib.util.spec_from_file_location("hostmem", {os.path.join(ROOT, "tfm", "hostmem.py")!r})
hostmem = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hostmem)
print("start", os.getpid(), flush=True)
state = hostmem.use_huge_pages(sys.argv[1] == "on")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc({BLOCK})
  ctypes.memset(p, 1, {BLOCK})
  libc.free(ctypes.c_void_p(p))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
with hostmem.huge_pages_paused() as paused:  # prctl(PR_SET_THP_DISABLE) for the faults inside only
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc({BLOCK})
  ctypes.memset(p, 1, {BLOCK})
  libc.free(ctypes.c_void_p(p))
  paused_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(dict(state=state, tunables=os.environ.get("GLIBC_TUNABLES"), faults=faults, pid=os.getpid(),
                      paused=paused, paused_faults=paused_faults)))
"""


def _child(mode: str, **env) -> tuple[list[str], dict]:
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT_ENV)}
  r = subprocess.run([sys.executable, "-c", CHILD, mode], env={**base, **env}, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  return [l for l in lines if l.startswith("start")], json.loads(lines[-1])


def test_tunables_string_keeps_the_users_settings():
  assert hostmem.with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert hostmem.with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hostmem.with_huge_pages("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"  # the user's choice wins
  assert hostmem.tunable_value("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2") == "2"
  assert hostmem.tunable_value("glibc.malloc.arena_max=2") is None
  assert hostmem.huge_pages_state({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}).startswith("off (")
  assert hostmem.huge_pages_state({hostmem.OPT_OUT_ENV: "0"}) == "off (TFM_HUGE_PAGES=0)"


@pytest.mark.skipif(not hostmem.huge_pages_state({}).endswith("(not requested)"),
                    reason=f"huge pages cannot apply here: {hostmem.huge_pages_state({})}")
def test_restart_with_huge_pages_removes_the_page_faults_of_large_blocks():
  pages = BLOCK // 4096
  starts, on = _child("on")
  assert on["state"] == "on" and "glibc.malloc.hugetlb=1" in on["tunables"]
  assert len(starts) == 2 and starts[0] == starts[1] == f"start {on['pid']}"  # restarted once, same process
  starts, off = _child("off")
  assert off["state"] == "off (TFM_HUGE_PAGES=0)" and off["tunables"] is None and len(starts) == 1
  assert min(off["faults"]) >= 0.9 * pages  # 4 KiB pages: one fault each
  assert max(on["faults"]) < pages / 8  # 2 MiB pages (measured: 544 faults against 16,385)
  assert on["paused"] and on["paused_faults"] >= 0.9 * pages  # huge_pages_paused: 4 KiB pages again
  starts, env_off = _child("on", TFM_HUGE_PAGES="0")  # the environment opts out as well
  assert env_off["state"] == "off (TFM_HUGE_PAGES=0)" and len(starts) == 1
  starts, user = _child("on", GLIBC_TUNABLES="glibc.malloc.hugetlb=0")  # so does the user's own tunable
  assert user["state"] == "off (glibc.malloc.hugetlb=0 in GLIBC_TUNABLES)" and len(starts) == 1
