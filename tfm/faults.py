"""A fault-injection campaign: kill, stop and corrupt a short training run many times; check every resume.

    python -m tfm.faults --faults 30 --seed 0 --workdir runs/faults \
        [--config configs/gpt_shakespeare_char.py] [--manual_dir ../shared/data/tiny_shakespeare]

It trains the config once uninterrupted (the reference, CPU), then runs trials: each trial trains the
same command in a fresh workdir, injects `--faults_per_run` faults one after another (every fault ends
the process; the next run is the same command, resuming), then lets it finish. The faults:

  sigkill                SIGKILL at a random moment of training
  sigterm                SIGTERM at a random moment of training (the run saves and exits 143)
  kill_<point>           SIGKILL at a named point of a checkpoint save (tfm.checkpoint.FAULT_POINTS, through
                         the TFM_CHECKPOINT_FAULT hook): temporary directory made, arrays written, before and
                         after the final rename, while an old checkpoint is deleted, during the save to best/
  corrupt_<how>          the run is killed right after a save, then that newest checkpoint is damaged:
                         an array file truncated / overwritten with garbage / one byte flipped, its
                         manifest or _METADATA deleted, its meta JSON overwritten

After every fault it checks that a good checkpoint is on disk (one that reads back bitwise equal to the
reference's checkpoint of that step) and that the next run resumes from the newest good one (when the
only checkpoints are damaged ones: that the run stops with exit status 2 naming them, and that it starts
over with --config.train.restart_if_unreadable=True, as the message says); at the end
of each trial, that the final parameters equal the reference's bitwise, that metrics.jsonl has every
logged step exactly once with the reference's losses, and that best/ holds the reference's best step.
It prints a table (faults by kind, survived, lost work in steps: steps trained since the checkpoint the
run resumed from) and writes it with every fault's record to WORKDIR/faults.json. Each run's output is
in WORKDIR/trial_NNN/runs/K.log; what orbax printed while the checker read damaged checkpoints, in
WORKDIR/checker.log. Exit status 1 when a fault was not survived.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

from tfm.checkpoint import FAULT_ENV
from tfm.errors import ArgumentParser, UserError, run_cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train.py and configs/ live
DEFAULT_CONFIG = os.path.join(_REPO, "configs", "gpt_shakespeare_char.py")
DEFAULT_MANUAL_DIR = os.path.join(os.path.dirname(_REPO), "shared", "data", "tiny_shakespeare")

CHECKPOINT_EVERY = 10
RESTART = "--config.train.restart_if_unreadable=True"
# The config shrunk to a few seconds per run (most of it start-up): 1 block of width 32, 4 x 32 tokens.
# Every step is logged (each must appear once), dropout on (resume must restore the RNG as well).
OVERRIDES = ("--config.model_overrides.num_layers=1", "--config.model_overrides.d_model=32",
             "--config.model_overrides.num_heads=2", "--config.model_overrides.num_kv_heads=2",
             "--config.model_overrides.d_ff=64", "--config.model_overrides.dropout_rate=0.1",
             "--config.data.seq_len=32", "--config.train.batch_size=4", "--config.train.eval_batches=1",
             "--config.train.eval_at_start=False", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
             "--config.train.keep_checkpoints=3", "--config.train.log_every=1", "--config.train.progress=False",
             "--config.train.sample_tokens=0", "--config.optimizer.warmup_steps=10")

SAVE_POINTS = ("tmp_created", "items_written", "before_rename", "after_rename", "deleting_old", "best_save")
CORRUPTIONS = ("truncate", "garbage", "bitflip", "delete_manifest", "delete_metadata", "meta_garbage")
KINDS = ("sigkill", "sigterm") + tuple(f"kill_{p}" for p in SAVE_POINTS) + tuple(f"corrupt_{c}" for c in CORRUPTIONS)


# ------------------------------------------------------------------------------------------------
# Reading a workdir
# ------------------------------------------------------------------------------------------------


def checkpoint_steps(workdir: str, sub: str = "checkpoints") -> list:
  """Returns the steps of WORKDIR/<sub>/<step>/ directories (temporary ones excluded), ascending."""
  d = os.path.join(workdir, sub)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def read_state(step_dir: str, target=None):
  """Returns the TrainState arrays (nested dicts of numpy arrays) of one checkpoint step directory."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  try:
    return ckptr.restore(os.path.join(step_dir, "state"), target)
  finally:
    ckptr.close()


def same_bits(a, b) -> bool:
  """Returns whether two trees of arrays have the same structure, dtypes, shapes and bytes."""
  import jax
  import numpy as np
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  if ta != tb:
    return False
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      return False
  return True


def metrics(workdir: str) -> list:
  """Returns the records of WORKDIR/metrics.jsonl (a torn last line left out)."""
  from tfm.train.writers import read_metrics
  return read_metrics(workdir)


def last_step(workdir: str) -> int:
  """Returns the newest train step logged in WORKDIR/metrics.jsonl (0 if none)."""
  steps = [r["step"] for r in metrics(workdir) if r["split"] == "train"]
  return max(steps) if steps else 0


class Reference:
  """The uninterrupted run: its checkpoint of every step, final params, metrics and best step."""

  def __init__(self, workdir: str):
    import jax
    self.workdir = workdir
    self.states = {s: read_state(os.path.join(workdir, "checkpoints", str(s))) for s in checkpoint_steps(workdir)}
    self.final_step = max(self.states)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    self.target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu),
                                         self.states[self.final_step])
    self.metrics = [_comparable(r) for r in metrics(workdir)]
    self.best = checkpoint_steps(workdir, "best")
    self.train_span_s = _train_span(metrics(workdir))

  def good(self, workdir: str) -> list:
    """Returns the steps of WORKDIR's checkpoints that read back bitwise equal to the reference's.

    Read as any reader of a run does (tfm.checkpoint.run_params): without a target, so a checkpoint
    whose _METADATA is gone is not good (the training run's restore refuses it as well).
    """
    out = []
    for s in checkpoint_steps(workdir):
      try:
        state = read_state(os.path.join(workdir, "checkpoints", str(s)))
        with open(os.path.join(workdir, "checkpoints", str(s), "meta", "metadata")) as f:
          if json.load(f)["step"] != s:
            continue
      except Exception:  # pylint: disable=broad-except
        continue
      if s in self.states and same_bits(state, self.states[s]):
        out.append(s)
    return out


@contextlib.contextmanager
def _quiet(path: str):
  """Sends this process's stderr (file descriptor 2) to `path` inside the block; yields nothing.

  Orbax's reader threads print tracebacks (some long after the read failed) when an array file is
  damaged; they are expected here, and kept out of the campaign's output.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, "a") as f:
    os.dup2(f.fileno(), 2)
    try:
      yield
      gc.collect()  # the failed reads' coroutines report while being collected
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def _comparable(record: dict) -> dict:
  """Returns a metrics record without its wall-clock fields (the rest must match the reference bitwise)."""
  return {k: v for k, v in record.items() if k not in ("elapsed_s", "tokens_per_sec")}


def _train_span(records: list) -> float:
  """Returns the seconds between the first and the last train record of one run."""
  t = [r["elapsed_s"] for r in records if r["split"] == "train"]
  return max(t[-1] - t[0], 0.5) if t else 1.0


# ------------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------------


def _largest_array_file(step_dir: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.path.basename(r) == "d"]
  return max(sorted(files), key=os.path.getsize)


def corrupt(step_dir: str, how: str, rng: random.Random) -> str:
  """Damages the checkpoint in `step_dir` as `how` (one of CORRUPTIONS) says; returns what it did."""
  if how in ("truncate", "garbage", "bitflip"):
    path = _largest_array_file(step_dir)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if how == "truncate":
        f.truncate(size // 2)
      elif how == "garbage":
        f.write(bytes(rng.randrange(256) for _ in range(size)))
      else:
        at = rng.randrange(size)
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ (1 << rng.randrange(8))]))
        return f"flipped a bit of byte {at} of {os.path.relpath(path, step_dir)} ({size} bytes)"
    return f"{how} {os.path.relpath(path, step_dir)} ({size} bytes)"
  path = {"delete_manifest": "state/manifest.ocdbt", "delete_metadata": "state/_METADATA",
          "meta_garbage": "meta/metadata"}[how]
  if how == "meta_garbage":
    with open(os.path.join(step_dir, path), "w") as f:
      f.write("{not json")
  else:
    os.remove(os.path.join(step_dir, path))
  return f"{how.replace('_', ' ')} {path}"


class Job:
  """One invocation of the training command in a workdir, its log in WORKDIR/runs/<n>.log."""

  def __init__(self, cmd: Sequence[str], workdir: str, env: dict, fault_env: Optional[str] = None):
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
    self.log = os.path.join(workdir, "runs", f"{len(os.listdir(os.path.join(workdir, 'runs')))}.log")
    env = dict(env)
    env.pop(FAULT_ENV, None)
    if fault_env:
      env[FAULT_ENV] = fault_env
    self._out = open(self.log, "w")
    self.started_ns = time.time_ns()
    self.proc = subprocess.Popen(list(cmd), env=env, stdout=self._out, stderr=subprocess.STDOUT)

  def wait(self, timeout: float = 600) -> int:
    """Waits for the process; returns its exit status (negative: the signal that ended it)."""
    try:
      return self.proc.wait(timeout)
    except BaseException:  # interrupted (Ctrl-C) or timed out: leave no training process behind
      self.proc.kill()
      self.proc.wait()
      raise
    finally:
      self._out.close()

  def text(self) -> str:
    """Returns what the process printed."""
    with open(self.log, errors="replace") as f:
      return f.read()

  def resumed_from(self) -> Optional[int]:
    """Returns the step the run said it resumed from, or None if it started from scratch."""
    m = re.search(r"resumed from \S+ \(step (\d+),", self.text())
    return int(m.group(1)) if m else None


def _wait_for_training(job: Job, workdir: str, after: int, timeout: float = 300) -> bool:
  """Returns True once the run has logged a train step after `after` (False: it ended first)."""
  deadline = time.time() + timeout
  path = os.path.join(workdir, "metrics.jsonl")
  while time.time() < deadline:
    if job.proc.poll() is not None:
      return False
    try:  # a resumed run rewrites metrics.jsonl first (dropping what it will log again): only then count
      if os.stat(path).st_mtime_ns >= job.started_ns and last_step(workdir) > after:
        return True
    except (OSError, ValueError):
      pass
    time.sleep(0.02)
  return False


# ------------------------------------------------------------------------------------------------
# The campaign
# ------------------------------------------------------------------------------------------------


def train_command(config: str, workdir: str, data_dir: str, manual_dir: str, steps: int) -> list:
  """Returns the training command of the campaign (the same for the reference and every resume)."""
  return [sys.executable, os.path.join(_REPO, "train.py"), "--config", config, "--workdir", workdir,
          f"--config.data.manual_dir={manual_dir}", f"--config.data.data_dir={data_dir}", *OVERRIDES,
          f"--config.train.steps={steps}", f"--config.train.eval_every={steps // 2}"]


def _environment(workdir: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if not env.get("JAX_COMPILATION_CACHE_DIR"):  # every run compiles the same programs: compile them once
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(workdir, "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env.pop(FAULT_ENV, None)
  return env


def _inject(kind: str, cmd: list, wd: str, env: dict, ref: Reference, steps: int, resume: int,
            rng: random.Random, room: int = 0) -> tuple:
  """Runs the command once with fault `kind`; returns (Job, record) with what happened (record["injected"]).

  `room`: faults still to come in this run; this one is drawn early enough to leave saves for them.
  """
  rec = {"kind": kind, "from_step": resume}
  share = 1.0 / (room + 1)  # the part of the remaining run this fault is drawn from
  future = [s for s in range(CHECKPOINT_EVERY, steps + 1, CHECKPOINT_EVERY) if s > resume]
  future = future[:max(1, math.ceil(len(future) * share))]
  if kind in ("sigkill", "sigterm"):
    job = Job(cmd, wd, env)
    if not _wait_for_training(job, wd, resume):
      job.wait()
      return job, dict(rec, injected=False, note="the run ended before training started")
    delay = rng.uniform(0, 0.8 * share * ref.train_span_s * (steps - resume) / steps)
    time.sleep(delay)
    if job.proc.poll() is not None:
      job.wait()
      return job, dict(rec, injected=False, note=f"the run ended before the signal ({delay:.2f} s)")
    job.proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
    rc = job.wait()
    rec.update(delay_s=round(delay, 3), rc=rc)
  elif kind.startswith("kill_"):
    point = kind[len("kill_"):]
    if point == "best_save":  # evals are where best/ is written
      future = [s for s in range(steps // 2, steps + 1, steps // 2) if s > resume][:1 if room else None]
      spec = "before_rename@{}:best"
    elif point == "deleting_old":  # keep_checkpoints=3: the 4th save deletes
      future = [s for s in future if s > 3 * CHECKPOINT_EVERY] or [
          s for s in range(4 * CHECKPOINT_EVERY, steps + 1, CHECKPOINT_EVERY) if s > resume][:1]
      spec = "deleting_old@{}:latest"
    else:
      spec = point + "@{}:latest"
    if not future:
      return None, dict(rec, injected=False, note="no save of that kind left in this run")
    at = rng.choice(future)
    job = Job(cmd, wd, env, fault_env=spec.format(at))
    rc = job.wait()
    rec.update(at_step=at, rc=rc)
  else:
    if not future:
      return None, dict(rec, injected=False, note="no save left to corrupt")
    at = rng.choice(future)
    job = Job(cmd, wd, env, fault_env=f"save_end@{at}")
    rc = job.wait()
    rec.update(at_step=at, rc=rc)
    if rc == -signal.SIGKILL:
      rec["damage"] = corrupt(os.path.join(wd, "checkpoints", str(at)), kind[len("corrupt_"):], rng)
  expected = {"sigkill": (-signal.SIGKILL,), "sigterm": (143, -signal.SIGTERM)}.get(kind, (-signal.SIGKILL,))
  rec["injected"] = rc in expected
  if not rec["injected"]:
    rec["note"] = f"exit status {rc} (expected {expected}); see {job.log}"
  return job, rec


def run_trial(cmd: list, wd: str, env: dict, ref: Reference, steps: int, kinds: Sequence[str],
              rng: random.Random, log: Callable[[str], None]) -> list:
  """Injects `kinds` one after another into one fresh run, then finishes it; returns one record per fault."""
  shutil.rmtree(wd, ignore_errors=True)
  os.makedirs(wd)
  records, resume, rc = [], 0, None
  pending = None  # the last fault: the next run's resume is checked against it
  run_cmd = cmd   # the next run's command (with train.restart_if_unreadable after an unreadable-only workdir)
  for i, kind in enumerate(list(kinds) + [None]):
    if kind is None:
      job, rec = Job(run_cmd, wd, env), None
      job.wait()
    else:
      job, rec = _inject(kind, run_cmd, wd, env, ref, steps, resume, rng, room=len(kinds) - 1 - i)
    if job is None:  # nothing of that kind left to hit in this run
      records.append(rec)
      continue
    rc = job.proc.returncode
    if pending is not None:
      got = job.resumed_from() or 0
      pending.update(resumed_from=got, lost_steps=pending["reached"] - got,
                     resumed_right=got == pending["expected_resume"])
      if not pending["resumed_right"]:
        pending["note"] = f"resumed from step {got}, expected {pending['expected_resume']}; see {job.log}"
    if rc not in (0, -signal.SIGKILL, -signal.SIGTERM, 143):  # the run failed by itself
      note = f"the run failed (exit status {rc}); see {job.log}"
      if pending is not None:
        pending.update(resumed_right=False, note=note)
      if rec is not None:
        records.append(dict(rec, injected=False, note=note))
      break
    pending, run_cmd = None, cmd
    if rec is None:
      break
    records.append(rec)
    if not rec["injected"]:
      if rc == 0:
        break  # the run finished: the rest of this trial's faults have nothing to hit
      continue
    rec["reached"] = last_step(wd)
    good = ref.good(wd)
    saved_before = range(CHECKPOINT_EVERY, rec["reached"], CHECKPOINT_EVERY)  # saves completed before the fault
    rec.update(good_checkpoints=good, good_kept=bool(good) or not saved_before,
               expected_resume=max(good) if good else 0)
    resume = rec["expected_resume"]
    if not good and checkpoint_steps(wd):  # every checkpoint on disk is unreadable: the run must stop, naming them
      check = Job(cmd, wd, env)
      check.wait()
      rec["stops_when_unreadable"] = check.proc.returncode == 2 and "can be read" in check.text()
      run_cmd = cmd + [RESTART]  # what its message tells the user to do
    pending = rec
    log(f"  {kind:24s} " + json.dumps({k: v for k, v in rec.items() if k not in ("kind", "injected")}))
  final = _final_checks(wd, ref, rc)
  log(f"  final: {json.dumps(final)}")
  for r in records:
    r["final_ok"] = final["ok"]
    r["survived"] = bool(r["injected"] and r.get("good_kept") and r.get("resumed_right") and final["ok"]
                         and r.get("stops_when_unreadable", True))
  return records


def _final_checks(wd: str, ref: Reference, rc: int) -> dict:
  """Returns the end-of-trial checks: exit status, final params bitwise, each step logged once, best step."""
  out = {"rc": rc}
  steps = checkpoint_steps(wd)
  final = None
  if steps:
    try:
      final = read_state(os.path.join(wd, "checkpoints", str(max(steps))), ref.target)
    except Exception as e:  # pylint: disable=broad-except
      out["final_read_error"] = f"{type(e).__name__}: {str(e)[:200]}"
  out["params_bitwise"] = bool(final is not None and max(steps) == ref.final_step
                               and same_bits(final["params"], ref.states[ref.final_step]["params"]))
  records = [_comparable(r) for r in metrics(wd)]
  keys = [(r["step"], r["split"]) for r in records]
  want = sorted((r["step"], r["split"]) for r in ref.metrics)
  out["steps_once"] = len(keys) == len(set(keys)) and sorted(keys) == want
  out["metrics_equal"] = records == ref.metrics
  out["best_step"] = checkpoint_steps(wd, "best") == ref.best
  out["ok"] = rc == 0 and all(out[k] for k in ("params_bitwise", "steps_once", "metrics_equal", "best_step"))
  return out


def summarize(records: list) -> list:
  """Returns the table rows: per kind (and in total) faults injected, survived, good checkpoint kept, lost steps."""
  rows = []
  for kind in [k for k in KINDS if any(r["kind"] == k for r in records)] + ["total"]:
    rs = [r for r in records if r["injected"] and (kind == "total" or r["kind"] == kind)]
    lost = [r["lost_steps"] for r in rs if "lost_steps" in r]
    rows.append({"kind": kind, "injected": len(rs), "survived": sum(r["survived"] for r in rs),
                 "good_checkpoint_kept": sum(r["good_kept"] for r in rs),
                 "lost_steps_mean": round(sum(lost) / len(lost), 1) if lost else None,
                 "lost_steps_max": max(lost) if lost else None})
  return rows


def format_table(rows: list) -> str:
  """Returns the table as aligned text."""
  head = ("kind", "injected", "survived", "good ckpt kept", "lost steps mean", "lost steps max")
  body = [(r["kind"], r["injected"], r["survived"], r["good_checkpoint_kept"],
           "-" if r["lost_steps_mean"] is None else r["lost_steps_mean"],
           "-" if r["lost_steps_max"] is None else r["lost_steps_max"]) for r in rows]
  widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
  line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                                 enumerate(zip(cells, widths)))
  return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _trials(records: list, order: list, faults: int, faults_per_run: int, kinds: list, config: str, data_dir: str,
            manual_dir: str, steps: int, env: dict, ref: Reference, rng: random.Random, workdir: str,
            log: Callable[[str], None]) -> None:
  """Runs trials (WORKDIR/trial_NNN) until `faults` faults were injected, appending their records to `records`."""
  trial = 0
  while sum(r["injected"] for r in records) < faults:
    want = faults - sum(r["injected"] for r in records)
    todo, order = order[:min(faults_per_run, want)], order[min(faults_per_run, want):]
    if not todo:
      todo = [rng.choice(kinds)]  # faults that missed are drawn again
    wd = os.path.join(workdir, f"trial_{trial:03d}")
    log(f"trial {trial}: {todo}")
    records += run_trial(train_command(config, wd, data_dir, manual_dir, steps), wd, env, ref, steps, todo, rng, log)
    trial += 1


def campaign(workdir: str, faults: int = 30, seed: int = 0, config: str = DEFAULT_CONFIG,
             manual_dir: str = DEFAULT_MANUAL_DIR, steps: int = 80, faults_per_run: int = 3,
             kinds: Optional[Sequence[str]] = None, log: Callable[[str], None] = print) -> dict:
  """Runs the reference and the faulted trials in `workdir`; returns {"table", "faults", ...} (also faults.json).

  `kinds` (default: all KINDS) are drawn in a seeded order that cycles through every kind.
  """
  if steps % (2 * CHECKPOINT_EVERY) or steps < 4 * CHECKPOINT_EVERY:
    raise UserError(f"--steps must be a multiple of {2 * CHECKPOINT_EVERY} and >= {4 * CHECKPOINT_EVERY}; got {steps}")
  kinds = list(KINDS if kinds is None else kinds)
  unknown = [k for k in kinds if k not in KINDS]
  if unknown:
    raise UserError(f"unknown fault kind(s) {unknown}; known: {list(KINDS)}")
  if not os.path.isfile(os.path.join(manual_dir, "input.txt")) and "shakespeare" in os.path.basename(config):
    raise UserError(f"--manual_dir {manual_dir} has no input.txt (the tiny Shakespeare text)")
  t0 = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  env, data_dir = _environment(workdir), os.path.join(workdir, "tfds")
  rng = random.Random(seed)
  ref_wd = os.path.join(workdir, "reference")
  shutil.rmtree(ref_wd, ignore_errors=True)
  # The same command with a checkpoint at every step, all kept (saving changes no bit): any checkpoint a
  # faulted run leaves (a SIGTERM one at any step too) is compared with the reference's of that step.
  ref_cmd = train_command(config, ref_wd, data_dir, manual_dir, steps) + [
      "--config.train.checkpoint_every=1", f"--config.train.keep_checkpoints={steps}"]
  log(f"reference: {' '.join(ref_cmd[1:])}")
  job = Job(ref_cmd, ref_wd, env)
  if job.wait() != 0:
    raise RuntimeError(f"the reference run failed; see {job.log}")
  ref = Reference(ref_wd)
  log(f"reference: {ref.final_step} steps, checkpoints {sorted(ref.states)}, training {ref.train_span_s:.1f} s")
  order = []
  while len(order) < faults:
    cycle = kinds[:]
    rng.shuffle(cycle)
    order += cycle
  records = []
  with _quiet(os.path.join(workdir, "checker.log")):
    _trials(records, order, faults, faults_per_run, kinds, config, data_dir, manual_dir, steps, env, ref, rng,
            workdir, log)
  rows = summarize(records)
  out = {"command": f"python -m tfm.faults --faults {faults} --seed {seed} --workdir {workdir} --config {config} "
                    f"--steps {steps} --faults_per_run {faults_per_run}" + (f" --kinds {','.join(kinds)}" if
                                                                          kinds != list(KINDS) else ""),
         "train_command": " ".join(train_command(config, "WORKDIR", data_dir, manual_dir, steps)[1:]),
         "seed": seed, "steps": steps, "faults_per_run": faults_per_run, "wall_s": round(time.time() - t0, 1),
         "table": rows, "faults": records}
  with open(os.path.join(workdir, "faults.json"), "w") as f:
    json.dump(out, f, indent=2)
  return out


def _main(argv=None) -> int:
  """Runs the command line; returns the exit status (1 if a fault was not survived)."""
  ap = ArgumentParser(prog="python -m tfm.faults", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--faults", type=int, default=30, help="faults to inject in all (default 30)")
  ap.add_argument("--seed", type=int, default=0, help="seeds the kinds, moments and damage (default 0)")
  ap.add_argument("--workdir", default="runs/faults", help="where the reference, the trials and faults.json go")
  ap.add_argument("--config", default=DEFAULT_CONFIG, help="training config (default configs/gpt_shakespeare_char.py)")
  ap.add_argument("--manual_dir", default=DEFAULT_MANUAL_DIR, help="data.manual_dir (tiny Shakespeare's input.txt)")
  ap.add_argument("--steps", type=int, default=80, help=f"steps per run (a multiple of {2 * CHECKPOINT_EVERY})")
  ap.add_argument("--faults_per_run", type=int, default=3, help="faults injected into one run before it may finish")
  ap.add_argument("--kinds", default="", help=f"comma-separated kinds (default all: {','.join(KINDS)})")
  args = ap.parse_args(argv)
  if args.faults < 1 or args.faults_per_run < 1:
    raise UserError("--faults and --faults_per_run must be positive")
  kinds = [k for k in args.kinds.split(",") if k] or None
  out = campaign(args.workdir, args.faults, args.seed, os.path.abspath(args.config), os.path.abspath(args.manual_dir),
                 args.steps, args.faults_per_run, kinds)
  print(format_table(out["table"]))
  print(f"{out['wall_s']:.0f} s; every fault in {os.path.join(os.path.abspath(args.workdir), 'faults.json')}")
  total = out["table"][-1]
  return 0 if total["survived"] == total["injected"] else 1


def main(argv=None) -> int:
  """Runs the command line under run_cli; returns the exit status (2 with one line for bad input)."""
  return run_cli(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
