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
