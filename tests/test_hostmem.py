"""tfm.hostmem: huge pages for malloc only when asked for (a flag or TFM_HUGE_PAGES=1): then the entry point
restarts once with glibc's tunable, which removes the page faults of large allocations; a user's own
GLIBC_TUNABLES applies with no restart, and huge_pages_paused suspends them."""

import json
import os
import subprocess
import sys

import pytest

from tfm import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 64 * 2 ** 20  # one malloc of 64 MiB: 16,384 pages of 4 KiB when faulted in without huge pages

# Calls use_huge_pages(flag) (hostmem.py loaded by path: no jax import), then faults in a fresh malloc'd block
# three times and prints what it saw as one JSON line. A restart prints "start" twice.
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
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_IN_ENV)}
  r = subprocess.run([sys.executable, "-c", CHILD, mode], env={**base, **env}, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  return [l for l in lines if l.startswith("start")], json.loads(lines[-1])


def _possible(monkeypatch, mode="madvise", version=(2, 39)):
  """Makes this process look like Linux with the given THP mode and glibc version."""
  monkeypatch.setattr(hostmem.sys, "platform", "linux")
  monkeypatch.setattr(hostmem, "thp_mode", lambda path=hostmem.THP_ENABLED: mode)
  monkeypatch.setattr(hostmem, "glibc_version", lambda: version)


def test_tunables_string_keeps_the_users_settings():
  assert hostmem.with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert hostmem.with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert hostmem.with_huge_pages("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"  # the user's choice wins
  assert hostmem.tunable_value("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2") == "2"
  assert hostmem.tunable_value("glibc.malloc.arena_max=2") is None


def test_nothing_re_executes_without_the_opt_in(monkeypatch):
  _possible(monkeypatch)
  for environ in ({}, {"PATH": "/bin"}, {hostmem.OPT_IN_ENV: "0"}, {hostmem.OPT_IN_ENV: ""},
                  {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}):
    assert hostmem.reexec_environment(False, environ) is None, environ
    assert hostmem.huge_pages_state(environ) == "off (not requested)", environ
  # use_huge_pages itself: without the request it never calls execve and leaves the environment alone
  calls = []
  monkeypatch.setattr(hostmem.os, "execve", lambda *a: calls.append(a))
  monkeypatch.setenv(hostmem.OPT_IN_ENV, "")  # setenv: restored afterwards, whatever use_huge_pages sets
  monkeypatch.setenv("GLIBC_TUNABLES", "")
  assert hostmem.use_huge_pages() == hostmem.use_huge_pages(False) == "off (not requested)"
  assert calls == [] and os.environ[hostmem.OPT_IN_ENV] == os.environ["GLIBC_TUNABLES"] == ""


def test_the_opt_in_builds_the_restart_environment(monkeypatch):
  _possible(monkeypatch)
  base = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  by_flag = hostmem.reexec_environment(True, base)
  by_env = hostmem.reexec_environment(False, {**base, hostmem.OPT_IN_ENV: "1"})
  assert by_flag == by_env
  assert by_flag["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"  # the user's kept
  assert by_flag["PATH"] == "/bin" and by_flag[hostmem.OPT_IN_ENV] == "1"
  assert hostmem.reexec_environment(True, by_flag) is None  # the restarted process never restarts again
  assert hostmem.huge_pages_state(by_flag) == "on"
  assert base == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}  # the input is not changed
  # use_huge_pages(True) hands that environment and the same command line to execve (mocked here)
  calls = []
  monkeypatch.setattr(hostmem.os, "execve", lambda *a: calls.append(a))
  monkeypatch.setattr(hostmem.sys, "orig_argv", ["python", "train.py", "--huge_pages"])
  monkeypatch.setenv(hostmem.OPT_IN_ENV, "")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  hostmem.use_huge_pages(True)
  [(exe, argv, env)] = calls
  assert exe == hostmem.sys.executable and argv == ["python", "train.py", "--huge_pages"]
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_no_restart_where_the_user_set_the_tunable_or_it_cannot_apply(monkeypatch):
  _possible(monkeypatch)
  for value, state in (("1", "on"), ("0", "off (glibc.malloc.hugetlb=0 in GLIBC_TUNABLES)")):
    environ = {"GLIBC_TUNABLES": f"glibc.malloc.hugetlb={value}"}
    assert hostmem.huge_pages_state(environ) == state  # with or without the request: the user's setting
    assert hostmem.reexec_environment(True, environ) is None
    assert hostmem.reexec_environment(False, {**environ, hostmem.OPT_IN_ENV: "1"}) is None
  _possible(monkeypatch, mode="never")
  assert hostmem.reexec_environment(True, {}) is None
  assert hostmem.huge_pages_state({hostmem.OPT_IN_ENV: "1"}) == "off (transparent huge pages: never)"
  _possible(monkeypatch, version=(2, 31))
  assert hostmem.reexec_environment(True, {}) is None
  assert hostmem.huge_pages_state({hostmem.OPT_IN_ENV: "1"}).startswith("off (needs glibc >= 2.35")


@pytest.mark.skipif(hostmem.unavailable() is not None, reason=f"huge pages cannot apply here: {hostmem.unavailable()}")
def test_restart_with_huge_pages_removes_the_page_faults_of_large_blocks():
  pages = BLOCK // 4096
  starts, on = _child("on")
  assert on["state"] == "on" and "glibc.malloc.hugetlb=1" in on["tunables"]
  assert len(starts) == 2 and starts[0] == starts[1] == f"start {on['pid']}"  # restarted once, same process
  starts, off = _child("off")  # the default: no restart, glibc's malloc
  assert off["state"] == "off (not requested)" and off["tunables"] is None and len(starts) == 1
  assert min(off["faults"]) >= 0.9 * pages  # 4 KiB pages: one fault each
  assert max(on["faults"]) < pages / 8  # 2 MiB pages (measured: 544 faults against 16,385)
  assert on["paused"] and on["paused_faults"] >= 0.9 * pages  # huge_pages_paused: 4 KiB pages again
  starts, env_on = _child("off", TFM_HUGE_PAGES="1")  # the environment opts in as well
  assert env_on["state"] == "on" and len(starts) == 2 and max(env_on["faults"]) < pages / 8
  starts, user = _child("off", GLIBC_TUNABLES="glibc.malloc.hugetlb=1")  # the user's own tunable: no restart
  assert user["state"] == "on" and len(starts) == 1 and max(user["faults"]) < pages / 8
  starts, user_off = _child("on", GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  assert user_off["state"] == "off (glibc.malloc.hugetlb=0 in GLIBC_TUNABLES)" and len(starts) == 1
