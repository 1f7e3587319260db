"""The same command twice gives the same run, bit for bit: metrics.jsonl (all but the wall-clock fields),
summary.json, parameters and optimizer state; for a language model and for a classifier whose WordPiece
tokenizer is trained in the run; and the tokenizer trained twice is the same file.

Each run is its own `python train.py` process with its own PYTHONHASHSEED: whatever a process draws
at start (Python's string hashing, the hash-map seeds of the `tokenizers` Rust library) changes between
the two, as it does between two invocations of the same command.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np

from parallel_worker import run_state  # tests/ is on the path under pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALL_CLOCK = ("elapsed_s", "tokens_per_sec", "wall_time_s", "_seconds")  # fields ending so may differ: clocks


def _timeless(record: dict) -> dict:
  return {k: v for k, v in record.items() if not k.endswith(WALL_CLOCK)}


def _run(workdir, hash_seed: int, *args) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONHASHSEED=str(hash_seed))
  env.pop("TFM_DISTRIBUTED", None)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(workdir), *args],
                        env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _records(workdir) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [_timeless(json.loads(line)) for line in f if line.strip()]


def _summary(workdir) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    return _timeless(json.load(f))


def assert_same_run(a, b) -> None:
  """Asserts that two workdirs hold bitwise-equal metrics, summaries, tokenizers, params and optimizer state."""
  import jax
  ra, rb = _records(a), _records(b)
  assert ra and ra == rb  # exact float equality, every logged value
  assert _summary(a) == _summary(b)
  with open(os.path.join(a, "tokenizer.json"), "rb") as f, open(os.path.join(b, "tokenizer.json"), "rb") as g:
    assert f.read() == g.read()
  sa, sb = run_state(a), run_state(b)
  assert jax.tree_util.tree_structure(sa) == jax.tree_util.tree_structure(sb)
  for x, y in zip(jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)):
    assert np.array_equal(np.asarray(x), np.asarray(y))  # bitwise: params, opt_state, step, rng


def test_wordpiece_tokenizer_trained_twice_is_the_same_file(tmp_path):
  """WordPiece (and byte-level BPE) trained in two processes: identical tokenizer.json bytes."""
  code = ("import sys\nfrom pydoc_data.topics import topics\nfrom tfm.data.tokenizers import build_tokenizer, "
          "save_tokenizer\ntexts = [topics[k] for k in sorted(topics)][:60]\nfor kind in ('wordpiece', 'bpe'):\n"
          "  save_tokenizer(build_tokenizer(kind, texts, vocab_size=600), f'{sys.argv[1]}/{kind}.json')\n")
  for i in (1, 2):
    os.makedirs(tmp_path / str(i))
    env = dict(os.environ, PYTHONHASHSEED=str(i))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(i))], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
  for kind in ("wordpiece", "bpe"):
    one, two = (tmp_path / "1" / f"{kind}.json").read_bytes(), (tmp_path / "2" / f"{kind}.json").read_bytes()
    assert one == two, kind
    assert len(json.loads(one)["model"]["vocab"]) == 600


def test_lm_run_twice_is_bitwise_equal(tmp_path):
  """A language-model run (pydoc_topics, byte tokens, dropout 0.1) repeated: the same run, bit for bit."""
  args = [f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.model=gpt2-tiny",
          "--config.model_overrides.num_layers=1", "--config.model_overrides.d_model=32",
          "--config.model_overrides.d_ff=64", "--config.model_overrides.dropout_rate=0.1",
          "--config.data.seq_len=32", "--config.train.batch_size=4", "--config.train.steps=8",
          "--config.train.eval_every=4", "--config.train.eval_batches=1", "--config.train.checkpoint_every=8",
          "--config.train.log_every=2", "--config.train.progress=False", "--config.train.sample_tokens=0"]
  _run(tmp_path / "a", 1, *args)
  _run(tmp_path / "b", 2, *args)
  assert_same_run(tmp_path / "a", tmp_path / "b")


def _csv(path, n, seed) -> str:
  """Writes n labelled sentences (the label shows in one of its words) as a CSV; returns its path."""
  r = random.Random(seed)
  words = {"cold": ["freezing", "icy", "snowy", "frosty"], "hot": ["scorching", "sunny", "sweltering", "baking"]}
  filler = "the day was really quite a bit at in on our town and then it got".split()
  with open(path, "w", encoding="utf-8") as f:
    f.write("text,label\n")
    for _ in range(n):
      label = r.choice(sorted(words))
      toks = r.sample(filler, 6) + [r.choice(words[label])]
      r.shuffle(toks)
      f.write(f"{' '.join(toks)},{label}\n")
  return str(path)


def test_classification_run_with_a_trained_wordpiece_tokenizer_twice_is_bitwise_equal(tmp_path):
  """A classifier on a tiny CSV with a WordPiece tokenizer trained in the run (dropout 0.1) repeated: the
  same tokenizer, the same metrics (accuracy, macro-F1, MCC), the same parameters."""
  train, dev = _csv(tmp_path / "train.csv", 200, 0), _csv(tmp_path / "dev.csv", 60, 1)
  args = ["--config", os.path.join(ROOT, "configs", "classify_sst2.py"), "--config.data.name=csv",
          f"--config.data.train_files={train}", f"--config.data.validation_files={dev}",
          "--config.data.vocab_size=200", "--config.data.seq_len=16", "--config.model_overrides.num_layers=1",
          "--config.model_overrides.d_model=32", "--config.model_overrides.num_heads=2",
          "--config.model_overrides.d_ff=64", "--config.model_overrides.attention_dropout_rate=0.1",
          "--config.train.steps=12", "--config.train.batch_size=8", "--config.train.eval_every=6",
          "--config.train.checkpoint_every=6", "--config.train.log_every=3", "--config.train.progress=False",
          "--config.optimizer.warmup_steps=2"]
  _run(tmp_path / "a", 1, *args)
  _run(tmp_path / "b", 2, *args)
  assert_same_run(tmp_path / "a", tmp_path / "b")
  with open(tmp_path / "a" / "eval_classification.json") as f, open(tmp_path / "b" / "eval_classification.json") as g:
    assert json.load(f) == json.load(g)
