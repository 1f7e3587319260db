"""The training config: one data vocabulary for every task, every field in defaults.py, checked before data is read."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from tfm.train import defaults, train_and_evaluate
from tfm.train.defaults import RENAMED, base_config, check_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _paths(c, prefix=""):
  """Returns the dotted paths of every leaf field of ConfigDict `c`."""
  out = set()
  for k in c.keys():
    if isinstance(c[k], ml_collections.ConfigDict):
      out |= _paths(c[k], f"{prefix}{k}.")
    else:
      out.add(f"{prefix}{k}")
  return out


def tiny(objective="lm", **fields):
  """Returns an unlocked few-step config of task `objective` with `fields` ({"train.steps": 3, ...}) set."""
  c = base_config()
  c.task = objective
  c.model = {"lm": "gpt2-tiny", "mlm": "bert-tiny", "span": "t5-tiny", "seq2seq": "t5-tiny",
             "classify": "bert-tiny"}[objective]
  c.model_overrides.update(dict(num_layers=1, d_model=32, d_ff=64, num_heads=2))
  c.data.seq_len = 32
  c.train.update(dict(steps=12, batch_size=4, eval_every=4, eval_batches=2, checkpoint_every=12, log_every=4,
                      sample_tokens=0, progress=False))
  c.optimizer.warmup_steps = 2
  c.update_from_flattened_dict(fields)
  return c


@pytest.fixture
def no_data(monkeypatch):
  """Makes reading any data an error, so a test shows that a bad field is reported before the data is read."""
  def read(*a, **k):
    raise AssertionError("the data was read before the config was checked")
  monkeypatch.setattr("tfm.train.loop.RunData", read)
  monkeypatch.setattr("tfm.train.loop.ClassifyData", read, raising=False)


# Every field in defaults.py ---------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_files_only_change_fields_of_the_defaults(path):
  assert _paths(_load(path)) == _paths(base_config())


def test_defaults_hold_every_task_field_each_with_a_comment():
  fields = _paths(base_config())
  # read by classification (they were added by its config file before)
  assert {"data.text_pair_key", "data.label_key", "data.balanced_sampling", "train.best_metric",
          "train.early_stopping_patience", "train.class_weights"} <= fields
  with open(defaults.__file__) as f:
    source = f.read()
  section = {"data": "d", "train": "t", "optimizer": "o", "mesh": "m", "generate": "g"}
  for path in fields:
    if path.startswith("model_overrides."):
      continue  # one placeholder per ModelConfig field, documented in tfm/config.py
    parent, _, name = path.rpartition(".")
    owner = section[parent] if parent else "c"
    line = re.search(rf"^  {owner}\.{name} = .*$", source, re.M)
    assert line and "#" in line.group(0), f"{path}: no commented default in defaults.py"


# Renamed fields ---------------------------------------------------------------------------------

@pytest.mark.parametrize("old", sorted(RENAMED))
def test_a_renamed_field_names_its_new_name(old):
  new = RENAMED[old].split()[0]
  section, name = old.split(".")
  c = defaults.lock(base_config())
  with pytest.raises(AttributeError, match=re.escape(f"'{old}' was renamed to {new}")):
    setattr(c[section], name, "x")
  assert new in _paths(c)


def test_a_renamed_field_in_an_unlocked_config_names_its_new_name():
  c = base_config()  # not locked: any other new name would be accepted here
  with pytest.raises(AttributeError, match=r"'data\.label_column' was renamed to data\.label_key"):
    c.data.label_column = "stars"


def test_a_renamed_field_on_the_command_line_names_its_new_name(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(tmp_path / "w"),
                      "--config", os.path.join(ROOT, "configs", "classify_sst2.py"),
                      "--config.data.text_column=review"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert "'data.text_column' was renamed to data.text_key" in r.stderr
  assert not (tmp_path / "w").exists()


def test_local_files_is_now_the_file_format(no_data, tmp_path):
  c = tiny(**{"data.name": "local_files", "data.train_files": "notes.txt"})
  with pytest.raises(ValueError, match=r"'data\.name'='local_files' was renamed.*\['text', 'csv', 'tsv', 'jsonl'\]"):
    train_and_evaluate(c, str(tmp_path / "w"))


def test_an_unknown_field_of_an_unlocked_config_is_an_error_with_a_suggestion(no_data, tmp_path):
  c = tiny()
  c.data.txt_key = "body"  # an unlocked ConfigDict accepts any new name
  with pytest.raises(ValueError, match=r"'data\.txt_key' does not exist; did you mean 'data\.text_key'\?"):
    train_and_evaluate(c, str(tmp_path / "w"))


# Choice fields, checked before the data is read --------------------------------------------------

@pytest.mark.parametrize("task,path,value,allowed", [
    ("lm", "task", "lmm", r"\['classify', 'lm', 'mlm', 'seq2seq', 'span'\]"),
    ("lm", "model", "gpt5", r"'gpt2-small'"),
    ("lm", "parallel", "jitt", r"\['jit', 'pmap'\]"),
    ("lm", "optimizer.name", "sgd", r"\['adamw'\]"),
    ("lm", "optimizer.schedule", "cosin", r"\['cosine', 'linear', 'constant'\]"),
    ("lm", "train.best_metric", "acuracy", r"loss \(lower is better\), accuracy \(higher is better\), perplexity"),
    ("lm", "train.best_metric", "macro_f1", r"task 'lm'"),
    ("classify", "train.best_metric", "f1", r"macro_f1 \(higher is better\), mcc \(higher is better\)"),
    ("classify", "train.class_weights", "balance", r"\['none', 'balanced'\]"),
    ("lm", "data.tokenizer", "sentencepiece", r"\['byte', 'char', 'bpe', 'wordpiece', 'unigram'\] or a path"),
    ("lm", "train.early_stopping_patience", -1, r"an integer >= 0"),
    ("lm", "data.validation_fraction", 1.5, r"\(0, 1\)"),
])
def test_a_bad_choice_names_the_field_and_the_allowed_values_before_the_data_is_read(no_data, tmp_path, task, path,
                                                                                     value, allowed):
  c = tiny(task, **{path: value})
  with pytest.raises(ValueError) as e:
    train_and_evaluate(c, str(tmp_path / "w"))
  assert f"'{path}'" in str(e.value) and repr(value) in str(e.value), str(e.value)
  assert re.search(allowed, str(e.value)), str(e.value)
  assert not (tmp_path / "w" / "tokenizer.json").exists()


def test_every_task_accepts_its_own_metrics():
  for task in ("lm", "mlm", "span", "seq2seq"):
    for metric in ("loss", "accuracy", "perplexity"):
      check_config(tiny(task, **{"train.best_metric": metric}))
  for metric in ("macro_f1", "mcc", "accuracy"):
    check_config(tiny("classify", **{"train.best_metric": metric}))


@pytest.mark.parametrize("fields,match", [
    ({"train.class_weights": "balanced"}, r"'train\.class_weights'='balanced' applies to task 'classify' only"),
    ({"data.balanced_sampling": True}, r"'data\.balanced_sampling' applies to task 'classify' only"),
    ({"data.name": "tiny_shakespeare", "data.train_files": "a.txt"}, r"'data\.train_files' applies to local files"),
    ({"data.name": "csv"}, r"'data\.train_files' must name the training files"),
    ({"data.name": "csv", "data.train_files": "a.csv", "data.eval_split": "test"},
     r"'data\.eval_split' must be 'validation' for local files"),
])
def test_a_field_that_would_be_ignored_is_an_error(no_data, tmp_path, fields, match):
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(tiny("lm", **fields), str(tmp_path / "w"))


@pytest.mark.parametrize("fields,match", [
    ({"data.name": "text", "data.train_files": "a.txt", "data.validation_files": "b.txt"},
     r"'data\.name'='text' has no labels"),
    ({"data.name": "csv", "data.train_files": "a.csv"}, r"'data\.validation_files' must name the files to evaluate on"),
])
def test_classification_reads_labelled_files(no_data, tmp_path, fields, match):
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(tiny("classify", **fields), str(tmp_path / "w"))


# Keys that are not in the data ------------------------------------------------------------------

def test_a_text_key_missing_from_the_files_is_named_before_training(tmp_path):
  path = tmp_path / "posts.jsonl"
  path.write_text("".join(json.dumps({"title": f"t{i}", "content": "words " * 40}) + "\n" for i in range(20)))
  c = tiny(**{"data.name": "jsonl", "data.train_files": str(path), "data.text_key": "body",
              "data.data_dir": str(tmp_path / "tfds")})
  with pytest.raises(ValueError, match=r"data\.text_key='body' is not a column of .*posts\.jsonl; its columns are "
                                       r"\['title', 'content'\]"):
    train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_jsonl_files_train_a_language_model_with_the_named_key(tmp_path):
  path = tmp_path / "posts.jsonl"
  path.write_text("".join(json.dumps({"title": f"t{i}", "body": f"post number {i} " * 20}) + "\n" for i in range(40)))
  c = tiny(**{"data.name": "jsonl", "data.train_files": str(path), "data.text_key": "body",
              "data.data_dir": str(tmp_path / "tfds"), "data.validation_fraction": 0.2, "train.steps": 2,
              "train.eval_every": 2})
  summary = train_and_evaluate(c, str(tmp_path / "w"), log=lambda *_: None)
  assert summary["steps"] == 2


# The best checkpoint ----------------------------------------------------------------------------

def test_best_perplexity_is_the_lowest(tmp_path):
  c = tiny(**{"train.best_metric": "perplexity", "data.data_dir": str(tmp_path / "tfds")})
  summary = train_and_evaluate(c, str(tmp_path / "w"), log=lambda *_: None)
  evals = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  evals = [r for r in evals if r["split"] == "eval"]
  assert len({r["perplexity"] for r in evals}) == 3  # three different values: the choice means something
  best = min(evals, key=lambda r: r["perplexity"])
  assert summary["best_eval_perplexity"] == best["perplexity"] and summary["best_step"] == best["step"]
