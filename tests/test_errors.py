"""Bad input on every command: one line `error: <what, where, what is allowed>`, exit status 2, no traceback.

Most cases run a command's main (or train_and_evaluate under the same wrapper, tfm.errors.run_cli) in
this process; the command line of train.py runs in subprocesses, started together.
"""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

import tfm
from tfm import convert
from tfm.bench.__main__ import main as bench_main
from tfm.checkpoint import save_params
from tfm.data import sources
from tfm.data.tokenizers import ByteTokenizer, save_tokenizer
from tfm.errors import UserError, run_cli
from tfm.generate.__main__ import main as generate_main
from tfm.predict import main as predict_main
from tfm.train import defaults, loop, train_and_evaluate
from tfm.train.objectives import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error_line(capsys, status) -> str:
  """Returns the one `error: ...` line a failed command printed; checks exit status 2 and no traceback."""
  err = capsys.readouterr().err
  assert status == 2, err
  assert "Traceback" not in err, err
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, err
  return lines[0]


def train_fails(c, workdir, capsys) -> str:
  """Returns the error line of train_and_evaluate(c, workdir) run as the train command runs it."""
  return one_error_line(capsys, run_cli(lambda argv: train_and_evaluate(c, str(workdir), log=lambda *_: None), []))


def tiny(tmp_path, **fields):
  """Returns an unlocked 2-step gpt2-tiny config on local text files in tmp_path; `fields` {"data.x": v} set."""
  text = tmp_path / "notes.txt"
  if not text.exists():
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
  c = defaults.base_config()
  c.model = "gpt2-tiny"
  c.model_overrides.update(dict(num_layers=1, d_model=32, d_ff=64, num_heads=2))
  c.data.update(dict(name="text", train_files=str(text), data_dir=str(tmp_path / "tfds"), seq_len=32,
                     validation_fraction=0.2))
  c.train.update(dict(steps=2, batch_size=2, eval_every=2, eval_batches=1, checkpoint_every=2, log_every=1,
                      sample_tokens=0, progress=False))
  c.optimizer.warmup_steps = 1
  c.update_from_flattened_dict(fields)
  return c


# 1, 3: the command line of train.py -------------------------------------------------------------

TRAIN_CASES = [  # each a process (a few seconds each): the wiring of train.py; the messages are tested below
    (["--config.train.stepz=3"], "error: config field 'train.stepz' does not exist; did you mean 'train.steps'?"),
    (["--config.model=gpt9"], "config field 'model' must be a preset name; did you mean 'gpt-nano'?"),
    # data.train is data.train_files: the glob reaches the file check
    (["--config.data.name=csv", "--config.data.train=/nonexistent/*.csv", "--config.data.validation=/x.csv"],
     "error: data.train_files: no file matches '/nonexistent/*.csv'"),
    (["--config", "/nonexistent/config.py"], "error: --config: cannot load the config file: No such file"),
]


def test_train_command_line_errors_are_one_line_and_traceback_shows_them(tmp_path):
  cmd = [sys.executable, os.path.join(ROOT, "train.py")]
  procs = [subprocess.Popen([*cmd, "--workdir", str(tmp_path / f"w{i}"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i, (args, _) in enumerate(TRAIN_CASES)]
  traced = subprocess.Popen([*cmd, "--workdir", str(tmp_path / "t"), "--config.train.stepz=3", "--traceback"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for i, ((args, want), p) in enumerate(zip(TRAIN_CASES, procs)):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, (args, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
    assert want in err, (args, err)
    if "data.train_files" not in want:  # a config error: nothing was started (data errors: an empty workdir)
      assert not (tmp_path / f"w{i}").exists(), args
  err = traced.communicate(timeout=300)[1]
  assert traced.returncode == 1 and "Traceback" in err and "tfm.errors.UserError: config field 'train.stepz'" in err


@pytest.mark.parametrize("path,value,want", [
    ("train.stepz", "3", "config field 'train.stepz' does not exist; did you mean 'train.steps'?"),
    ("train.steps", "abc", "config field 'train.steps' must be an integer; got 'abc'"),
    ("optimizer.learning_rate", "fast", "config field 'optimizer.learning_rate' must be a number; got 'fast'"),
    ("train.progress", "maybe", "config field 'train.progress' must be true or false; got 'maybe'"),
    ("model_overrides.num_layer", "3", "config field 'model_overrides.num_layer' does not exist; did you mean "
                                       "'model_overrides.num_layers'?"),
    ("data.text_column", "body", "config field 'data.text_column' was renamed to data.text_key"),
    ("trian.steps", "3", "config field 'trian' does not exist; did you mean 'train'?"),
    ("data.train", "a.csv", None),  # an alias of data.train_files
])
def test_a_bad_override_on_the_command_line_is_named(path, value, want):
  assert defaults.field_problem(path, value) == want
  from tfm.train.__main__ import flag_error
  if want:
    assert str(flag_error(AttributeError("x"), ["train.py", f"--config.{path}={value}"])) == want


def test_traceback_flag_and_variable_show_the_traceback(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="no such directory"):
    convert.main(["--from-hf", str(tmp_path / "none*"), "--out", str(tmp_path / "o"), "--traceback"])
  assert "TFM_TRACEBACK" not in os.environ  # set only while the command runs
  monkeypatch.setenv("TFM_TRACEBACK", "1")
  with pytest.raises(UserError):
    generate_main(["--model", str(tmp_path / "missing"), "--prompt", "x"])


def test_a_bug_keeps_its_traceback():
  with pytest.raises(ZeroDivisionError):
    run_cli(lambda argv: 1 // 0, [])


def test_data_train_and_validation_are_aliases_of_the_files_fields():
  c = defaults.lock(defaults.base_config())
  c.data.train, c.data.validation = "a.csv", "b.csv"
  assert (c.data.train_files, c.data.validation_files) == ("a.csv", "b.csv")
  c.data.train_files = "c.csv"
  assert c.data.train == "c.csv"
  assert "train" not in c.data.to_dict() and "validation" not in c.data.to_dict()  # one home for the value


# 2: every field of base_config() has a rule -------------------------------------------------------

def _wrong_types(default):
  """Returns values of another type than the field's default (a float field takes ints; None: any type)."""
  if isinstance(default, bool):
    return ["x", 1]
  if isinstance(default, int):
    return ["x", 1.5, True]
  if isinstance(default, float):
    return ["x", True]
  if isinstance(default, str):
    return [3, None]
  return ["x"]


def _with(path, value):
  """Returns base_config() as a plain ConfigDict (any value allowed) with field `path` set to `value`."""
  d = defaults.base_config().to_dict()
  node = d
  *parents, name = path.split(".")
  for p in parents:
    node = node[p]
  node[name] = value
  return ml_collections.ConfigDict(d)


def test_every_field_has_a_rule_and_a_bad_value_names_the_field():
  base = defaults.base_config()
  paths = [p for p in defaults.leaf_paths(base) if not p.startswith("model_overrides.")]
  missing = [p for p in paths if p not in defaults.RULES]
  assert not missing, f"fields of base_config() without a rule in tfm.train.defaults.RULES: {missing}"
  assert not set(defaults.RULES) - set(paths), "rules for fields that base_config() does not have"
  defaults.check_config(base)  # the defaults pass
  checked = 0
  for path in paths:
    default = base
    for key in path.split("."):
      default = default[key]
    for value in _wrong_types(default) + list(defaults.RULES[path].refused):
      with pytest.raises(UserError) as e:
        defaults.check_config(_with(path, value))
      assert f"'{path}'" in str(e.value) and "\n" not in str(e.value), (path, value, str(e.value))
      checked += 1
  assert checked > 2 * len(paths)


def test_every_model_override_of_the_wrong_type_names_the_field():
  names = {"int": "x", "float": "x", "bool": "x", "str": 3}
  for f in dataclasses.fields(tfm.ModelConfig):
    kind = str(f.type).replace("Optional[", "").rstrip("]")
    with pytest.raises(UserError) as e:
      defaults.check_config(_with(f"model_overrides.{f.name}", names[kind]))
    assert f"'model_overrides.{f.name}'" in str(e.value), str(e.value)
  with pytest.raises(UserError, match=r"'model_overrides\.num_kv_heads' \(3\) must divide 'num_heads'"):
    defaults.check_config(_with("model_overrides.num_kv_heads", 3))


# 4-6: data files ----------------------------------------------------------------------------------

def test_missing_empty_and_misread_files_name_the_file(tmp_path, capsys):
  line = train_fails(tiny(tmp_path, **{"data.train_files": str(tmp_path / "none" / "*.txt")}), tmp_path / "w", capsys)
  assert "data.train_files: no file matches" in line and "none" in line
  (tmp_path / "empty.txt").write_bytes(b"")
  line = train_fails(tiny(tmp_path, **{"data.train_files": str(tmp_path / "empty.txt")}), tmp_path / "w", capsys)
  assert "empty.txt is empty" in line
  (tmp_path / "latin1.txt").write_bytes(b"caf\xc3\xa9 ok\nna\xefve\n" * 3)
  line = train_fails(tiny(tmp_path, **{"data.train_files": str(tmp_path / "latin1.txt")}), tmp_path / "w", capsys)
  assert "latin1.txt: byte offset 11 (line 2) is not UTF-8" in line and "encoding_errors=replace" in line
  assert sources.read_text(str(tmp_path / "latin1.txt"), "replace").startswith("café ok\nna\ufffdve")
  (tmp_path / "posts.csv").write_text("title,content\na,b\n")
  line = train_fails(tiny(tmp_path, **{"data.name": "csv", "data.train_files": str(tmp_path / "posts.csv"),
                                       "data.text_key": "body"}), tmp_path / "w", capsys)
  assert "data.text_key='body' is not a column of" in line and "posts.csv; its columns are ['title', 'content']" in line
  (tmp_path / "pairs.tsv").write_text("input\ttarget\na\tb\nc\td\te\n")
  line = train_fails(tiny(tmp_path, **{"task": "seq2seq", "model": "t5-tiny", "data.name": "tsv",
                                       "data.train_files": str(tmp_path / "pairs.tsv")}), tmp_path / "w", capsys)
  assert "pairs.tsv, row 3: 3 fields, but the header has 2" in line
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_an_evaluation_label_not_seen_in_training_names_label_and_file(tmp_path, capsys):
  (tmp_path / "train.csv").write_text("text,label\n" + "good film,pos\nbad film,neg\n" * 4)
  (tmp_path / "dev.csv").write_text("text,label\nfine film,pos\nodd film,meh\n")
  c = tiny(tmp_path, **{"task": "classify", "model": "bert-tiny", "data.name": "csv", "train.baselines": False,
                        "data.train_files": str(tmp_path / "train.csv"), "data.validation_files": str(tmp_path / "dev.csv")})
  line = train_fails(c, tmp_path / "w", capsys)
  assert "dev.csv, row 3: label 'meh' does not occur in the training data" in line


# 8, 9, 12: the model against the data and the workdir -----------------------------------------------

def test_model_limits_and_special_ids_are_checked_before_training(tmp_path, capsys):
  line = train_fails(tiny(tmp_path, **{"data.seq_len": 200}), tmp_path / "w", capsys)  # gpt2-tiny: max_len 128
  assert "'data.seq_len' (200) exceeds the model's learned positions (max_len=128)" in line
  assert "model_overrides.max_len=200" in line
  line = train_fails(tiny(tmp_path, **{"model_overrides.pad_token_id": 50256}), tmp_path / "w2", capsys)
  assert "pad_token_id=50256 is not a token id" in line and "vocab_size 259" in line
  assert not (tmp_path / "w2" / "checkpoints").exists()
  # A preset's own special ids (GPT-2's 50256) give way to the data tokenizer's.
  c = defaults.base_config()
  c.model = "gpt2-small"
  mc = loop.model_config(c, get_task("lm"), ByteTokenizer())
  assert (mc.vocab_size, mc.pad_token_id) == (259, ByteTokenizer().pad_id)


def test_a_workdir_of_another_model_is_refused_before_anything_is_written(tmp_path, capsys):
  wd = tmp_path / "w"
  wd.mkdir()
  old = tiny(tmp_path, **{"model": "llama-test"})
  (wd / "config.json").write_text(json.dumps({"config": old.to_dict(), "model_config": {}}))
  line = train_fails(tiny(tmp_path), wd, capsys)
  assert f"--workdir {wd} holds a run of another model (model: 'llama-test' there, 'gpt2-tiny' here" in line
  assert "run the command that started it again" in line and "choose another --workdir" in line
  assert sorted(os.listdir(wd)) == ["config.json"]
  loop.check_workdir(old, str(wd))  # the same model: resumes


def test_a_failing_sample_or_plot_does_not_lose_the_run(tmp_path, monkeypatch):
  def broken(*a, **k):
    raise ValueError("broken on purpose")
  monkeypatch.setattr(loop, "sample_continuation", broken)
  monkeypatch.setattr(loop, "plot_losses", broken)
  out = []
  c = tiny(tmp_path, **{"train.sample_tokens": 4})
  summary = train_and_evaluate(c, str(tmp_path / "w"), log=out.append)
  assert summary["steps"] == 2 and (tmp_path / "w" / "summary.json").exists()
  text = "\n".join(out)
  assert "warning: no sample (ValueError: broken on purpose)" in text and "warning: loss.png not written" in text
  # The run's own command resumes there; another model is refused, naming the field that differs.
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  mc = tfm.ModelConfig(**saved["model_config"])
  loop.check_workdir(c, str(tmp_path / "w"), mc)
  with pytest.raises(UserError, match=r"model_config\.max_len: 128 there, 64 here"):
    loop.check_workdir(c, str(tmp_path / "w"), mc.replace(max_len=64))


# 10, 11: model directories and prompts ----------------------------------------------------------

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  """Returns (a Hugging Face directory, a params directory with a byte tokenizer) of a tiny GPT-2 (max_len 16)."""
  root = tmp_path_factory.mktemp("models")
  config = tfm.get_config("gpt2-tiny", vocab_size=259, max_len=16, num_layers=1, d_model=32, d_ff=64, num_heads=2)
  params = nn.meta.unbox(tfm.build(config).init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"])
  hf = tfm.save_pretrained(config, params, str(root / "hf"))
  tok = save_tokenizer(ByteTokenizer(), str(root / "tokenizer.json"))
  run = save_params(params, config, str(root / "params"), extra_files=[tok])
  return hf, run


def _copy_without(src, dst, drop):
  import shutil
  shutil.copytree(src, dst)
  os.remove(os.path.join(dst, drop))
  return str(dst)


def test_bad_model_directories_name_what_is_missing(model_dirs, tmp_path, capsys):
  hf, _ = model_dirs
  no_config = _copy_without(hf, tmp_path / "a", "config.json")
  line = one_error_line(capsys, convert.main(["--from-hf", no_config, "--out", str(tmp_path / "o")]))
  assert no_config in line and "config.json" in line
  line = one_error_line(capsys, generate_main(["--model", no_config, "--prompt", "x"]))
  assert "it has no config.json" in line
  no_weights = _copy_without(hf, tmp_path / "b", "model.safetensors")
  line = one_error_line(capsys, convert.main(["--from-hf", no_weights, "--out", str(tmp_path / "o")]))
  assert "no weights file" in line and "model.safetensors" in line
  import shutil
  cut = str(tmp_path / "c")
  shutil.copytree(hf, cut)
  path = os.path.join(cut, "model.safetensors")
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  line = one_error_line(capsys, convert.main(["--from-hf", cut, "--out", str(tmp_path / "o")]))
  assert "model.safetensors: truncated or corrupt safetensors file" in line
  assert not os.path.exists(tmp_path / "o")


def test_a_prompt_longer_than_the_context_is_named(model_dirs, capsys):
  _, run = model_dirs
  line = one_error_line(capsys, generate_main(["--model", run, "--prompt", "x" * 30, "--max-new-tokens", "4"]))
  assert "is 30 tokens" in line and "context of 16 tokens" in line and "at most 13 tokens" in line
  line = one_error_line(capsys, generate_main(["--model", run, "--prompt", "hi", "--top-k", "many"]))
  assert "--top-k" in line and "'many'" in line


# The other commands ----------------------------------------------------------------------------------

def test_predict_and_bench_report_bad_input_in_one_line(tmp_path, capsys):
  line = one_error_line(capsys, predict_main(["--workdir", str(tmp_path), "--input", str(tmp_path / "t.txt")]))
  assert "labels.json not found" in line
  line = one_error_line(capsys, bench_main(["speed", "--models", "gpt9", "--no-cpu-flags"]))
  assert "'gpt9'" in line and "gpt2-small" in line
  line = one_error_line(capsys, bench_main(["speed", "--batch", "two"]))
  assert "--batch" in line and "'two'" in line
  line = one_error_line(capsys, bench_main(["device-check", "--no-train", "--no-cpu-flags", "--cases", "causal,sideways"]))
  assert "--cases sideways" in line and "causal,padding" in line
