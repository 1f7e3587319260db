"""Training: overfitting, gradient accumulation, one short run per family, resume, bad input."""

import json
import math
import os
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm
from tfm import hostmem
from tfm.data.batches import lm_batch
from tfm.data.tokenizers import ByteTokenizer
from tfm.train import objectives, train_and_evaluate
from tfm.train.defaults import base_config
from tfm.train.loop import NonFiniteLossError, init_params
from tfm.train.optim import make_optimizer
from tfm.train.state import create_train_state
from tfm.train.step import train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, task="lm", **train):
  """Returns a config for a few-second run of `task` on pydoc_topics with a tiny preset."""
  c = base_config()
  c.task = task
  c.model = {"lm": "gpt2-tiny", "mlm": "bert-tiny", "span": "t5-tiny", "seq2seq": "t5-tiny"}[task]
  c.model_overrides.num_layers = 1
  c.model_overrides.d_model = 32
  c.model_overrides.d_ff = 64
  c.model_overrides.num_heads = 2
  if task in ("span", "seq2seq"):
    c.model_overrides.head_dim = 16
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.seq_len = 32
  c.data.target_len = 16
  c.train.update(dict(steps=12, batch_size=4, eval_every=6, eval_batches=2, checkpoint_every=6, log_every=3,
                      sample_tokens=8, progress=False))
  c.train.update(train)
  c.optimizer.warmup_steps = 2
  c.lock()
  return c


# Steps ------------------------------------------------------------------------------------------

def _lm_setup(micro_batches=1, lr=3e-3):
  c = base_config()
  c.optimizer.learning_rate = lr
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = "constant"
  c.optimizer.weight_decay = 0.0
  model = tfm.build(tfm.get_config("gpt2-tiny", num_layers=1, d_model=64, d_ff=128))
  tok = ByteTokenizer()
  text = "It is a truth universally acknowledged, that a single man in possession of a good fortune "
  ids = tok.encode(text * 3)[: 4 * 33].reshape(4, 33)
  batch = lm_batch(ids, np.ones_like(ids), tok, None)
  tx = make_optimizer(c.optimizer, 1000)
  params = jax.tree_util.tree_map(jnp.asarray, tfm.models.nn.meta.unbox(init_params(model, batch, jax.random.PRNGKey(0))))
  state = create_train_state(params, tx, jax.random.PRNGKey(1))
  step = jax.jit(lambda s, b: train_step(s, b, jax.random.PRNGKey(2), model=model, tx=tx, task=objectives.TASKS["lm"],
                                         micro_batches=micro_batches))
  return state, batch, step


def test_overfits_one_batch():
  state, batch, step = _lm_setup()
  first = None
  for _ in range(150):
    state, m = step(state, batch)
    first = float(m["loss"]) if first is None else first
  assert first > 5.0            # ~ln(259) at initialisation
  assert float(m["loss"]) < 0.1  # 4 x 32 tokens memorised
  assert float(m["accuracy"]) > 0.98


def test_gradient_accumulation_equals_one_big_batch():
  from tfm.train.step import loss_and_grad_sums
  s, batch, _ = _lm_setup()
  model = tfm.build(tfm.get_config("gpt2-tiny", num_layers=1, d_model=64, d_ff=128))
  task = objectives.TASKS["lm"]
  batch = dict(batch, weights=batch["weights"] * np.array([1, 0, 1, 1], np.float32)[:, None])  # unequal counts
  g1, s1 = jax.jit(lambda p, b: loss_and_grad_sums(p, b, jax.random.PRNGKey(0), model=model, task=task,
                                                  micro_batches=1))(s.params, batch)
  g4, s4 = jax.jit(lambda p, b: loss_and_grad_sums(p, b, jax.random.PRNGKey(0), model=model, task=task,
                                                  micro_batches=4))(s.params, batch)
  assert float(s1["weight"]) == float(s4["weight"]) == 3 * 32
  np.testing.assert_allclose(float(s1["loss"]), float(s4["loss"]), rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(g1))
  for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g4)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6 * scale)


def test_pmean_over_an_axis_matches_the_global_batch():
  # Two halves of the batch on a named axis (vmap stands in for pmap) give the one-device update.
  s, batch, _ = _lm_setup()
  model = tfm.build(tfm.get_config("gpt2-tiny", num_layers=1, d_model=64, d_ff=128))
  c = base_config().optimizer
  tx = make_optimizer(c, 1000)
  s = create_train_state(s.params, tx, s.rng)
  task = objectives.TASKS["lm"]
  batch = dict(batch, weights=batch["weights"] * np.array([1, 1, 0, 1], np.float32)[:, None])  # unequal counts
  one, m1 = jax.jit(lambda s, b: train_step(s, b, jax.random.PRNGKey(0), model=model, tx=tx, task=task))(s, batch)
  halves = jax.tree_util.tree_map(lambda x: x.reshape((2, 2) + x.shape[1:]), batch)
  two, m2 = jax.jit(jax.vmap(lambda b: train_step(s, b, jax.random.PRNGKey(0), model=model, tx=tx, task=task,
                                                  axis_name="d"), axis_name="d"))(halves)
  np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"][0]), rtol=1e-6)
  np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"][1]), rtol=1e-5)
  np.testing.assert_allclose(float(m1["tokens"]), float(m2["tokens"][1]))
  # Adam's first update is ~lr * sign(grad): compare where the gradient is not ~0.
  assert int(one.step) == int(two.step[0]) == 1
  moved = [np.mean(np.isclose(np.asarray(x), np.asarray(y[0]), rtol=1e-4, atol=1e-6))
           for x, y in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(two.params))]
  assert min(moved) > 0.95


# End to end, one per family ---------------------------------------------------------------------

@pytest.mark.parametrize("task", ["lm", "mlm", "span"])
def test_short_run_per_family(task, tmp_path, capsys):
  c = tiny_config(tmp_path, task)
  wd = str(tmp_path / "run")
  summary = train_and_evaluate(c, wd)
  for key in ("train_loss", "eval_loss", "steps", "wall_time_s", "num_params", "tokens_seen", "eval_perplexity"):
    assert key in summary
  assert summary["steps"] == 12
  with open(os.path.join(wd, "summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk["eval_loss"] == summary["eval_loss"] and on_disk["num_params"] == summary["num_params"]
  vocab = summary["params"]  # noqa: F841 (params are returned for callers)
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  evals = [r for r in records if r["split"] == "eval"]
  trains = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in evals] == [6, 12] and [r["step"] for r in trains] == [3, 6, 9, 12]
  for r in trains:
    assert {"loss", "learning_rate", "tokens_per_sec", "accuracy", "perplexity"} <= set(r)
  assert summary["eval_loss"] < math.log(259)  # better than uniform over the byte vocabulary
  for name in ("config.json", "tokenizer.json", "loss.png", "summary.json"):
    assert os.path.getsize(os.path.join(wd, name)) > 0
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["12", "6"]
  assert os.listdir(os.path.join(wd, "tensorboard"))
  out = capsys.readouterr().out
  assert "eval loss" in out and wd in out
  if task == "lm":
    assert "sample:" in out


def test_seq2seq_run_on_local_tsv(tmp_path):
  rows = [(" ".join(w), " ".join(reversed(w))) for w in [("a", "b", "c"), ("dog", "cat"), ("x", "y", "z", "w")]] * 20
  path = tmp_path / "pairs.tsv"
  path.write_text("input\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
  c = tiny_config(tmp_path, "seq2seq")
  c.data.name = "tsv"
  c.data.train_files = str(path)
  c.data.validation_fraction = 0.2
  summary = train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["steps"] == 12 and math.isfinite(summary["eval_loss"])


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
  from tensorboardX.proto import event_pb2
  train_and_evaluate(tiny_config(tmp_path, steps=6, eval_every=6, log_every=3), str(tmp_path / "run"))
  tb = tmp_path / "run" / "tensorboard"
  (name,) = os.listdir(tb)
  data = (tb / name).read_bytes()
  pos, values = 0, {}
  while pos < len(data):  # TFRecord framing: length, crc, payload, crc
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
    for v in event.summary.value:
      values.setdefault(v.tag, []).append((event.step, v.simple_value))
    pos += 16 + n
  logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  train = [(r["step"], r["loss"]) for r in logged if r["split"] == "train"]
  assert [s for s, _ in values["train/loss"]] == [s for s, _ in train]
  assert np.allclose([v for _, v in values["train/loss"]], [v for _, v in train], rtol=1e-6)
  assert "eval/loss" in values


# Resume, signals, bad input ---------------------------------------------------------------------

def _cmd(wd, tmp_path, *extra):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(wd),
          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.model=gpt2-tiny",
          "--config.model_overrides.num_layers=1", "--config.model_overrides.d_model=32",
          "--config.model_overrides.d_ff=64", "--config.data.seq_len=32", "--config.train.batch_size=4",
          "--config.train.steps=24", "--config.train.eval_every=24", "--config.train.eval_batches=1",
          "--config.train.checkpoint_every=8", "--config.train.log_every=4", "--config.train.progress=False",
          "--config.train.sample_tokens=0", "--config.model_overrides.dropout_rate=0.1", *extra]


def _final_params(wd):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(os.path.join(wd, "checkpoints"), item_names=("state", "meta")) as m:
    out = m.restore(m.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return out["state"]["params"], m.latest_step()


def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  full = tmp_path / "full"  # also shows that malloc's huge pages (opted in here, where they apply) change no bit
  subprocess.run(_cmd(full, tmp_path, "--huge_pages"), check=True, env=env, capture_output=True)
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed, tmp_path), env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = killed / "checkpoints" / "16"
  deadline = time.time() + 240
  while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.kill()  # SIGKILL: no chance to save anything more
  proc.wait()
  assert ckpt.exists(), "the run never reached its step-16 checkpoint"
  assert not (killed / "summary.json").exists()
  on_disk = sorted(int(n) for n in os.listdir(killed / "checkpoints") if n.isdigit())  # complete ones only
  done = subprocess.run(_cmd(killed, tmp_path), env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  import re
  resumed = re.search(r"resumed from (\S+) \(step (\d+),", done.stdout)
  assert resumed, done.stdout[-3000:]
  assert int(resumed.group(2)) == max(on_disk) >= 16  # the newest checkpoint on disk, not an older one
  assert resumed.group(1) == str(killed / "checkpoints" / str(max(on_disk)))
  a, sa = _final_params(full)
  b, sb = _final_params(killed)
  assert sa == sb == 24
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()  # bitwise
  reason = hostmem.unavailable()  # None on Linux with glibc >= 2.35 and THP not "never"
  assert json.load(open(full / "summary.json"))["huge_pages"] == ("on" if reason is None else f"off ({reason})")
  assert json.load(open(killed / "summary.json"))["huge_pages"] == "off (not requested)"
  ma = [json.loads(l) for l in open(full / "metrics.jsonl")]
  mb = [json.loads(l) for l in open(killed / "metrics.jsonl")]
  keys = [(r["step"], r["split"]) for r in mb]
  assert len(keys) == len(set(keys))  # no step logged twice: what the killed run logged after step 16 was dropped
  assert [s for s, split in keys if split == "train"] == [4, 8, 12, 16, 20, 24]  # every log_every step, once
  assert [s for s, split in keys if split == "eval"] == [24]
  assert [r["step"] for r in ma] == [r["step"] for r in mb]
  assert [r["loss"] for r in ma] == [r["loss"] for r in mb]


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
  wd = tmp_path / "run"
  proc = subprocess.Popen(_cmd(wd, tmp_path, "--config.train.steps=100000", "--config.train.checkpoint_every=1000"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  metrics = wd / "metrics.jsonl"
  while (not metrics.exists() or metrics.stat().st_size == 0) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.terminate()  # SIGTERM
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, out[-3000:]
  steps = [int(s) for s in os.listdir(wd / "checkpoints")]
  assert len(steps) == 1 and 4 <= steps[0] < 1000
  assert f"stopping at step {steps[0]} (sigterm)" in out
  assert json.load(open(wd / "summary.json"))["stopped"] == "sigterm"


def test_unknown_config_field_is_an_error_naming_it(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(tmp_path / "w"),
                      "--config.train.stpes=3"], capture_output=True, text=True)
  assert r.returncode != 0
  assert "stpes" in r.stderr
  r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(tmp_path / "w"),
                      "--config.model_overrides.num_layer=3"], capture_output=True, text=True)
  assert r.returncode != 0 and "num_layer" in r.stderr
  assert not (tmp_path / "w").exists()  # nothing was started


def test_bad_values_name_the_field(tmp_path):
  c = tiny_config(tmp_path, task="mlm")
  c.model = "gpt2-tiny"
  with pytest.raises(ValueError, match="task.*'mlm'.*encoder.*decoder"):
    train_and_evaluate(c, str(tmp_path / "a"))
  c = tiny_config(tmp_path)
  c.task = "classify_things"
  with pytest.raises(ValueError, match="'task' must be one of"):
    train_and_evaluate(c, str(tmp_path / "b"))
  c = tiny_config(tmp_path, batch_size=6, micro_batches=4)
  with pytest.raises(ValueError, match="train.batch_size.*micro_batches"):
    train_and_evaluate(c, str(tmp_path / "c"))


def test_missing_dataset_fails_fast(tmp_path, monkeypatch):
  import socket
  from tfm.data.sources import DataUnavailableError
  monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
  c = tiny_config(tmp_path)
  c.data.name = "lm1b"
  t0 = time.time()
  with pytest.raises(DataUnavailableError, match="lm1b.*needs a download"):
    train_and_evaluate(c, str(tmp_path / "run"))
  assert time.time() - t0 < 30


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  wd = str(tmp_path / "run")
  train_and_evaluate(tiny_config(tmp_path, steps=12, checkpoint_every=6, eval_every=12), wd)
  latest = os.path.join(wd, "checkpoints", "12", "state")
  for root, _, files in os.walk(latest):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  capsys.readouterr()
  summary = train_and_evaluate(tiny_config(tmp_path, steps=18, checkpoint_every=6, eval_every=12), wd)
  out = capsys.readouterr().out
  assert "checkpoint at step 12 could not be read" in out
  assert "falling back to the previous checkpoint (step 6)" in out
  assert "resumed from" in out and "(step 6," in out
  assert summary["steps"] == 18
  assert os.listdir(os.path.join(wd, "corrupt_checkpoints"))
  assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints"))) == [6, 12, 18]


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config(tmp_path, steps=20, checkpoint_every=1, eval_every=20)
  c.optimizer.learning_rate = 1e30  # the first update blows the weights up; the next loss is not finite
  c.optimizer.warmup_steps = 0
  c.optimizer.grad_clip_norm = 0.0
  wd = tmp_path / "run"
  with pytest.raises(NonFiniteLossError, match=r"at step (\d+).*last good checkpoint is step") as e:
    train_and_evaluate(c, str(wd))
  import re
  bad = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  kept = sorted(int(s) for s in os.listdir(wd / "checkpoints"))
  assert kept and max(kept) == bad - 1  # nothing saved at or after the bad step


def test_init_from_a_params_directory(tmp_path):
  from tfm.checkpoint import save_params
  a = train_and_evaluate(tiny_config(tmp_path, steps=6, eval_every=6), str(tmp_path / "a"))
  with open(tmp_path / "a" / "config.json") as f:
    mc = tfm.ModelConfig(**json.load(f)["model_config"])
  ckpt = save_params(a["params"], mc, str(tmp_path / "params"), extra_files=[str(tmp_path / "a" / "tokenizer.json")])
  c = tiny_config(tmp_path, steps=1, eval_every=1)
  c.init_from = ckpt
  c.model = "llama-test"  # ignored: the architecture comes from the params directory
  c.optimizer.learning_rate = 0.0  # params stay as loaded
  b = train_and_evaluate(c, str(tmp_path / "b"))
  assert b["num_params"] == a["num_params"]
  assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  c = base_config()
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = "constant"
  model = tfm.build(tfm.get_config("gpt2-tiny", num_layers=1, d_model=64, d_ff=128, dtype="bfloat16"))
  tok = ByteTokenizer()
  ids = tok.encode("mixed precision: bfloat16 matmuls, float32 params, softmax and norms " * 2)[:2 * 33].reshape(2, 33)
  batch = lm_batch(ids, np.ones_like(ids), tok, None)
  tx = make_optimizer(c.optimizer, 100)
  params = tfm.models.nn.meta.unbox(init_params(model, batch, jax.random.PRNGKey(0)))
  state = create_train_state(params, tx, jax.random.PRNGKey(1))
  step = jax.jit(lambda s, b: train_step(s, b, jax.random.PRNGKey(2), model=model, tx=tx, task=objectives.TASKS["lm"]))
  losses = []
  for _ in range(10):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5


# Model average (optimizer.ema_decay) ------------------------------------------------------------

def test_ema_follows_the_warmed_up_decay_step_by_step():
  state, batch, _ = _lm_setup()
  tx = make_optimizer(base_config().optimizer, 1000)
  state = create_train_state(state.params, tx, state.rng, ema_decay=0.9)
  model = tfm.build(tfm.get_config("gpt2-tiny", num_layers=1, d_model=64, d_ff=128))
  jstep = jax.jit(lambda s, b: train_step(s, b, jax.random.PRNGKey(2), model=model, tx=tx, task=objectives.TASKS["lm"]))
  expect = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(state.params)]
  for t in range(30):  # the decay is (1 + t) / (10 + t) until that passes 0.9 (t > 80): numpy's own average
    state, _ = jstep(state, batch)
    d = min(0.9, (1 + t) / (10 + t))
    params = jax.tree_util.tree_leaves(state.params)
    expect = [d * e + (1 - d) * np.asarray(p, np.float64) for e, p in zip(expect, params)]
  got = jax.tree_util.tree_leaves(state.ema_params)
  assert max(float(np.max(np.abs(np.asarray(g) - e))) for g, e in zip(got, expect)) < 1e-6
  assert max(float(np.max(np.abs(np.asarray(g) - np.asarray(p)))) for g, p in
             zip(got, jax.tree_util.tree_leaves(state.params))) > 1e-4  # the average is not the params


def test_a_run_with_ema_evaluates_and_exports_the_average(tmp_path):
  from tfm.checkpoint import run_params
  c = tiny_config(tmp_path, steps=6, eval_every=6, sample_tokens=0)
  c.unlock()
  c.optimizer.ema_decay = 0.99
  c.lock()
  wd = str(tmp_path / "run")
  summary = train_and_evaluate(c, wd)
  raw, step = _final_params(tmp_path / "run")  # the checkpoint's raw (trained) params
  exported, _ = run_params(wd)
  assert step == 6
  leaves = lambda t: [np.asarray(x) for x in jax.tree_util.tree_leaves(t)]
  assert all(np.array_equal(a, b) for a, b in zip(leaves(exported), leaves(summary["params"])))
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(exported), leaves(raw))) > 1e-4
  assert summary["eval_loss"] < math.log(259)
  c2 = tiny_config(tmp_path, steps=8, eval_every=8)  # resuming without the average is refused, naming the field
  with pytest.raises(ValueError, match="optimizer.ema_decay"):
    train_and_evaluate(c2, wd)
