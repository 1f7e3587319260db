"""tfm.checkpoint: one resolver of "a model to start from", used by init_from for every task.

A run directory, a params directory and a Hugging Face directory each give (config, params,
tokenizer); anything else is one clear error naming the three kinds.
"""

import json

import jax
import numpy as np
import pytest

import tfm
from tfm.checkpoint import abstract_like, resolve_model, run_params, save_params
from tfm.train import train_and_evaluate
from tiny_runs import lm_config


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("a")
  summary = train_and_evaluate(lm_config(tmp), str(tmp / "run"), log=lambda *_: None)
  return str(tmp / "run"), summary, tmp


def _frozen(tmp_path, init_from):
  """Returns a one-step run config that starts from `init_from` and leaves the params as loaded."""
  c = lm_config(tmp_path, steps=1, eval_every=1)
  c.init_from = init_from
  c.model = "llama-test"  # ignored: the architecture comes from init_from
  for name in ("num_layers", "d_model", "d_ff", "num_heads"):
    c.model_overrides[name] = None  # keep init_from's sizes
  c.optimizer.learning_rate = 0.0
  return c


def test_resolve_model_reads_a_run_and_a_params_directory(run_a, tmp_path):
  wd, summary, _ = run_a
  run = resolve_model(wd)
  assert run.kind == "run" and run.config.family == "decoder" and run.tokenizer is not None
  jax.tree_util.tree_map(np.testing.assert_array_equal, run.params, summary["params"])
  params_dir = save_params(run.params, run.config, str(tmp_path / "params"), extra_files=[f"{wd}/tokenizer.json"])
  again = resolve_model(params_dir)
  assert again.kind == "params" and again.config == run.config
  assert again.tokenizer.encode("x = 1").tolist() == run.tokenizer.encode("x = 1").tolist()
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, run.params)


def test_resolve_model_names_the_path_and_the_kinds_it_accepts(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
  for path in (tmp_path, tmp_path / "nothing-here"):
    with pytest.raises(ValueError) as e:
      resolve_model(str(path))
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    assert all(kind in message for kind in ("run directory", "params directory", "Hugging Face"))


def test_lm_init_from_a_run_directory(run_a, tmp_path):
  wd, a, _ = run_a
  b = train_and_evaluate(_frozen(tmp_path, wd), str(tmp_path / "b"), log=lambda *_: None)
  assert b["num_params"] == a["num_params"]
  assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-6)
  with open(tmp_path / "b" / "tokenizer.json") as f, open(f"{wd}/tokenizer.json") as g:
    assert json.load(f) == json.load(g)  # the tokenizer of the run it starts from


def test_lm_init_from_a_hugging_face_directory(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(["def f(x): return x", "class A: pass"], trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  hf_dir = tmp_path / "hf"
  cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=tok.get_vocab_size(), n_positions=64,
                                bos_token_id=0, eos_token_id=0, pad_token_id=0)
  transformers.GPT2LMHeadModel(cfg).save_pretrained(str(hf_dir))
  tok.save(str(hf_dir / "tokenizer.json"))
  summary = train_and_evaluate(_frozen(tmp_path, str(hf_dir)), str(tmp_path / "run"), log=lambda *_: None)
  _, want = tfm.from_pretrained(str(hf_dir))
  jax.tree_util.tree_map(np.testing.assert_array_equal, summary["params"], want)
  assert resolve_model(str(hf_dir)).kind == "hf"
  params, step = run_params(str(tmp_path / "run"))
  assert step == 1


def test_abstract_like_keeps_shapes_dtypes_and_shardings():
  tree = {"a": jax.numpy.zeros((2, 3)), "b": jax.numpy.ones((4,), jax.numpy.int32)}
  out = abstract_like(tree)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(out))
  assert (out["a"].shape, out["a"].dtype, out["b"].dtype) == ((2, 3), np.float32, np.int32)
  assert out["a"].sharding == tree["a"].sharding
  other = jax.sharding.SingleDeviceSharding(jax.devices()[-1])
  assert abstract_like(tree, {"a": other, "b": other})["b"].sharding == other


# Failures of a run's checkpoints: disk full, no permission, unreadable, silently flipped bits ----------------------

import errno
import os
import re

import orbax.checkpoint as ocp

from tfm.checkpoint import (CheckpointsUnreadableError, CheckpointWriteError, Checkpoints, state_checksums,
                            state_nbytes)
from tfm.errors import UserError


def _state(seed):
  k = jax.random.PRNGKey(seed)
  return {"w": jax.random.normal(k, (64, 32)), "b": jax.numpy.arange(5, dtype=jax.numpy.int32) + seed}


def _saved(tmp_path, steps=(1, 2)):
  """Returns a Checkpoints of `tmp_path` holding _state(s) at every step s of `steps`."""
  c = Checkpoints(str(tmp_path), 3)
  for s in steps:
    c.save(_state(s), {"step": s})
  return c


def _bitwise(a, b):
  return all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _array_files(step_dir):
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
                if os.path.basename(r) == "d")


async def _tensorstore_enospc(*args, **kwargs):
  # what tensorstore raises on a full disk (measured on a 1 MiB tmpfs)
  raise ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0.0\" in OCDBT database at local file \"/x/\": "
                   "Failed to write 967709 bytes to file 14: No space left on device [os_error_code='28']")


async def _json_permission_error(self, *args, **kwargs):
  raise PermissionError(errno.EACCES, "Permission denied", "meta/metadata")


@pytest.mark.parametrize("where, patch, why", [
    ("StandardCheckpointHandler", _tensorstore_enospc, "no space left on device"),
    ("JsonCheckpointHandler", _json_permission_error, "permission denied")])
def test_a_full_disk_or_no_permission_stops_naming_the_directory_and_the_bytes(tmp_path, monkeypatch, where, patch,
                                                                              why):
  c = _saved(tmp_path, steps=(1,))
  attr = "async_save" if where == "StandardCheckpointHandler" else "_save_fn"
  monkeypatch.setattr(getattr(ocp, where), attr, patch)
  big = _state(2)
  with pytest.raises(CheckpointWriteError) as e:
    c.save(big, {"step": 2})
  msg = str(e.value)
  assert isinstance(e.value, UserError) and "\n" not in msg
  assert c.dir in msg and why in msg and f"{state_nbytes(big):,} bytes" in msg
  assert "the previous checkpoint (step 1) is intact" in msg
  assert state_nbytes(big) == 64 * 32 * 4 + 5 * 4
  assert os.listdir(c.dir) == ["1"]  # the partial save is gone
  monkeypatch.undo()
  c.close()
  state, meta = Checkpoints(str(tmp_path), 3).restore(abstract_like(_state(1)))
  assert meta["step"] == 1 and _bitwise(state, _state(1))


def test_an_error_that_is_not_about_space_or_permission_propagates(tmp_path, monkeypatch):
  c = _saved(tmp_path, steps=(1,))
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save",
                      lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
  with pytest.raises(RuntimeError, match="a bug"):
    c.save(_state(2), {"step": 2})


def test_a_flipped_bit_in_an_array_file_is_caught_and_the_previous_checkpoint_used(tmp_path, capsys):
  c = _saved(tmp_path)
  c.close()
  path = max(_array_files(os.path.join(c.dir, "2")), key=os.path.getsize)
  with open(path, "r+b") as f:  # orbax alone reads this back as a different number, without an error
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, 1)
    f.write(bytes([byte ^ 0x10]))
  state, meta = Checkpoints(str(tmp_path), 3).restore(abstract_like(_state(2)))
  assert meta["step"] == 1 and _bitwise(state, _state(1))
  out = capsys.readouterr().out
  assert "checkpoint at step 2 could not be read" in out and "falling back to the previous checkpoint (step 1)" in out
  assert len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1


def test_checksums_cover_every_array_and_are_stable():
  a = state_checksums(_state(1))
  assert set(a) == {"['b']", "['w']"} and a == state_checksums(_state(1)) and a != state_checksums(_state(2))


def test_every_checkpoint_unreadable_is_an_error_listing_them_unless_told_to_restart(tmp_path, capsys):
  c = _saved(tmp_path)
  c.close()
  os.remove(os.path.join(c.dir, "2", "state", "manifest.ocdbt"))
  with open(os.path.join(c.dir, "1", "meta", "metadata"), "w") as f:
    f.write("{not json")
  with pytest.raises(CheckpointsUnreadableError) as e:
    Checkpoints(str(tmp_path), 3).restore(abstract_like(_state(1)))
  msg = str(e.value)
  assert "\n" not in msg and isinstance(e.value, UserError)
  for step, why in ((2, "ValueError"), (1, "JSONDecodeError")):
    assert re.search(re.escape(os.path.join(c.dir, str(step))) + ": " + why, msg)
  assert "nothing was moved" in msg and "train.restart_if_unreadable=True" in msg
  assert sorted(os.listdir(c.dir)) == ["1", "2"] and not (tmp_path / "corrupt_checkpoints").exists()
  assert Checkpoints(str(tmp_path), 3).restore(abstract_like(_state(1)), restart_if_unreadable=True) is None
  assert os.listdir(c.dir) == [] and len(os.listdir(tmp_path / "corrupt_checkpoints")) == 2
  assert "starting from scratch" in capsys.readouterr().out


def test_a_run_whose_checkpoints_are_all_unreadable_stops_or_restarts_as_configured(tmp_path):
  cfg = lambda **kw: lm_config(tmp_path, steps=4, checkpoint_every=2, eval_every=4, **kw)
  first = train_and_evaluate(cfg(), str(tmp_path / "run"), log=lambda *_: None)
  for step in (2, 4):
    for path in _array_files(str(tmp_path / "run" / "checkpoints" / str(step))):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(CheckpointsUnreadableError, match=r"none of the 2 checkpoint\(s\)"):
    train_and_evaluate(cfg(), str(tmp_path / "run"), log=lambda *_: None)
  again = train_and_evaluate(cfg(restart_if_unreadable=True), str(tmp_path / "run"), log=lambda *_: None)
  assert again["steps"] == 4 and _bitwise(again["params"], first["params"])  # from scratch: the same run
  assert len(os.listdir(tmp_path / "run" / "corrupt_checkpoints")) == 2


def test_a_run_that_cannot_write_a_checkpoint_stops_and_resumes_from_the_previous_one(tmp_path, monkeypatch):
  cfg = lm_config(tmp_path, steps=4, checkpoint_every=2, eval_every=4)
  full = train_and_evaluate(cfg, str(tmp_path / "full"), log=lambda *_: None)
  real, calls = ocp.StandardCheckpointHandler.async_save, []

  async def full_disk_after_one_save(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
      await _tensorstore_enospc()
    return await real(self, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full_disk_after_one_save)
  wd = tmp_path / "run"
  with pytest.raises(CheckpointWriteError, match=r"step 4 to .*run/.*no space left on device; the state needs [\d,]+ "
                                                 r"bytes .*the previous checkpoint \(step 2\) is intact"):
    train_and_evaluate(cfg, str(wd), log=lambda *_: None)
  assert os.listdir(wd / "checkpoints") == ["2"] and os.listdir(wd / "best") == []  # the partial best/ 4 removed
  monkeypatch.undo()
  lines = []
  done = train_and_evaluate(cfg, str(wd), log=lines.append)
  assert any("resumed from" in l and "(step 2," in l for l in lines)
  assert done["steps"] == 4 and _bitwise(done["params"], full["params"])
