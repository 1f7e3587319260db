"""Pretrain, then fine-tune: masked-LM on the task's texts, then classification from that run (every backbone weight)."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from test_classify_baselines import _sst2
from test_classify import _write_csv

from tfm.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = {f"model_overrides.{k}": v for k, v in dict(num_layers=1, d_model=32, num_heads=2, d_ff=64).items()}


def _config(name, **over):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.unlock()
  c.train.update(dict(progress=False, log_every=5))
  c.update_from_flattened_dict(over)
  return c


def test_pretrain_config_builds_the_classification_recipes_encoder():
  pre, fine = _config("classify_pretrain"), _config("classify_sst2")
  assert pre.model == fine.model
  for k in ("d_model", "num_layers", "num_heads", "d_ff", "max_len", "position", "norm_position", "dropout_rate",
            "type_vocab_size", "vocab_size"):
    assert pre.model_overrides[k] == fine.model_overrides[k], k
  assert (pre.data.tokenizer, pre.data.vocab_size) == (fine.data.tokenizer, fine.data.vocab_size)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
  d = tmp_path_factory.mktemp("tapt")
  tr, tr_y = _sst2("train.tsv", 240, 4)
  dev, dev_y = _sst2("dev.tsv", 60, 5)
  rows = lambda t, y: [{"text": a, "label": str(b)} for a, b in zip(t, y)]
  return _write_csv(d / "train.csv", rows(tr, tr_y), ["text", "label"]), _write_csv(d / "dev.csv", rows(dev, dev_y),
                                                                                   ["text", "label"])


@pytest.fixture(scope="module")
def pretrained(texts, tmp_path_factory):
  """A 10-step masked-LM run on the training texts (labels unused): (workdir, summary)."""
  tmp = tmp_path_factory.mktemp("mlm")
  pre = _config("classify_pretrain", **MODEL, **{
      "data.name": "csv", "data.train_files": texts[0], "data.text_key": "text", "data.vocab_size": 400,
      "data.seq_len": 32, "data.validation_fraction": 0.2, "data.data_dir": str(tmp / "tfds"), "train.steps": 10,
      "train.batch_size": 8, "train.eval_every": 10, "train.checkpoint_every": 10, "train.eval_batches": 2,
      "optimizer.warmup_steps": 2})
  return str(tmp / "mlm"), train_and_evaluate(pre, str(tmp / "mlm"), log=lambda *_: None)


def _fine(texts, tmp_path, init_from, **over):
  fields = {**MODEL, "init_from": init_from, "data.name": "csv", "data.train_files": texts[0],
            "data.validation_files": texts[1], "data.seq_len": 32, "data.data_dir": str(tmp_path / "tfds"),
            "train.steps": 2, "train.batch_size": 8, "train.eval_every": 2, "train.checkpoint_every": 2,
            "optimizer.warmup_steps": 1, "train.baselines": False}
  return _config("classify_sst2", **{**fields, **over})


def test_pretrain_then_fine_tune_loads_every_backbone_weight(tmp_path, texts, pretrained):
  workdir, pre_summary = pretrained
  logs = []
  # Learning rate 0: the fine-tuned backbone must equal the pretrained one exactly.
  fine = _fine(texts, tmp_path, workdir, **{"optimizer.learning_rate": 0.0})
  summary = train_and_evaluate(fine, str(tmp_path / "ft"), log=logs.append)
  line = next(x for x in logs if x.startswith("initialised params from"))
  assert "['classifier']" in line and "['encoder']" not in line  # only the head is new
  flat = lambda p: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(p)[0]}
  before, after = flat(pre_summary["params"]), flat(summary["params"])
  backbone = [k for k in after if "classifier" not in k and "pooler" not in k]
  assert len(backbone) >= 10
  for k in backbone:
    np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  assert os.path.exists(tmp_path / "ft" / "tokenizer.json")


def test_fine_tune_fails_when_the_backbone_does_not_match(tmp_path, texts, pretrained):
  fine = _fine(texts, tmp_path, pretrained[0], **{"model_overrides.num_layers": 2})
  with pytest.raises(ValueError, match="has no parameter"):
    train_and_evaluate(fine, str(tmp_path / "ft"), log=lambda *_: None)
