"""Data: tokenizers, TFDS sources (pydoc_topics, local files, tiny_shakespeare offline), packing, batches."""

import json
import os
import socket
import time

import numpy as np
import pytest

from tfm.data import batches, pipeline, sources
from tfm.data.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer, load_tokenizer, save_tokenizer
from tfm.train.defaults import base_config

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tiny_shakespeare")
TEXTS = ["Hello, world! Ünïcödé ok.", "the quick brown fox jumps over the lazy dog " * 20,
         "def f(x):\n  return x * 2\n"]


def data_cfg(tmp_path, **kw):
  d = base_config().data
  d.data_dir = str(tmp_path / "tfds")
  for k, v in kw.items():
    d[k] = v
  return d


TEXT = {"data.text_key": "text"}
PAIRS = {"data.input_key": "input", "data.target_key": "target"}


# Tokenizers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["byte", "char", "bpe", "wordpiece", "unigram"])
def test_tokenizer_round_trip_and_reload(kind, tmp_path):
  tok = build_tokenizer(kind, TEXTS * 5, vocab_size=120, num_sentinels=4)
  assert [tok.pad_id, tok.eos_id, tok.mask_id] == [0, 1, 2]
  assert list(tok.sentinel_ids) == [3, 4, 5, 6]
  text = "the quick brown fox"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= tok.num_specials and ids.max() < tok.vocab_size
  if kind != "wordpiece":  # WordPiece drops spaces around punctuation by design; words survive
    assert tok.decode(ids) == text
  else:
    assert tok.decode(ids).split() == text.split()
  path = save_tokenizer(tok, str(tmp_path / "tokenizer.json"))
  again = load_tokenizer(path)
  assert again.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(again.encode(text), ids)
  np.testing.assert_array_equal(again.sentinel_ids, tok.sentinel_ids)


def test_byte_tokenizer_handles_any_text():
  tok = ByteTokenizer()
  s = "héllo 🌍"
  assert tok.vocab_size == 259
  assert tok.decode(tok.encode(s)) == s


def test_char_tokenizer_rejects_unknown_characters():
  tok = CharTokenizer.train(["abc"])
  with pytest.raises(ValueError, match="'z'"):
    tok.encode("abz")


def test_unknown_tokenizer_kind_names_allowed_values():
  with pytest.raises(ValueError, match="byte.*char.*bpe"):
    build_tokenizer("sentencepiece", TEXTS)


# Sources ----------------------------------------------------------------------------------------

def test_pydoc_topics_is_a_tfds_dataset(tmp_path):
  from pydoc_data.topics import topics
  d = data_cfg(tmp_path)
  train = sources.load_split(d, "train", TEXT)
  val = sources.load_split(d, "validation", TEXT)
  assert len(train) + len(val) == len(topics)
  assert len(val) == (len(topics) + 9) // 10
  assert sorted(r["text"] for r in train + val) == sorted(topics.values())
  assert os.path.isdir(tmp_path / "tfds" / "pydoc_topics" / "1.0.0")


def test_tiny_shakespeare_prepares_offline_from_manual_dir(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  d = data_cfg(tmp_path, name="tiny_shakespeare", manual_dir=SHAKESPEARE)
  train = sources.load_split(d, "train", TEXT)
  val = sources.load_split(d, "validation", TEXT)
  assert len(train) == 1 and len(train[0]["text"]) == 1_003_854  # TFDS's 90 / 5 / 5 split (DATA.md)
  assert len(val[0]["text"]) == 55_770
  with open(os.path.join(SHAKESPEARE, "input.txt")) as f:
    assert f.read().startswith(train[0]["text"][:1000])


def _no_network(monkeypatch):
  def refuse(*a, **k):
    raise OSError("network disabled in this test")
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_missing_dataset_fails_fast_with_instructions(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  d = data_cfg(tmp_path, name="lm1b")
  t0 = time.time()
  match = r"needs a download.*manual_dir.*data\.name=text\|csv\|tsv\|jsonl"
  with pytest.raises(sources.DataUnavailableError, match=match):
    sources.load_split(d, "train", TEXT)
  assert time.time() - t0 < 30  # not the ~200 s of retries


def test_unknown_dataset_name_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="not a TFDS dataset"):
    sources.load_split(data_cfg(tmp_path, name="no_such_dataset_xyz"), "train", TEXT)


@pytest.mark.parametrize("fmt", ["text", "csv", "tsv", "jsonl"])
def test_local_files_become_a_tfds_dataset(fmt, tmp_path):
  rows = [{"input": f"question {i}, with comma", "target": f"answer {i}"} for i in range(5)]
  path = tmp_path / f"data.{ 'txt' if fmt == 'text' else fmt}"
  if fmt == "text":
    path.write_text("line one\nline two\n")
  elif fmt == "jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  elif fmt == "tsv":
    path.write_text("input\ttarget\n" + "".join(f"{r['input']}\t{r['target']}\n" for r in rows))
  else:
    path.write_text("input,target\n" + "".join(f"\"{r['input']}\",{r['target']}\n" for r in rows))
  d = data_cfg(tmp_path, name=fmt, train_files=str(path))
  keys = sources.key_fields(d, "stream" if fmt == "text" else "pairs")
  got = sources.load_split(d, "train", keys)
  if fmt == "text":
    assert got == [{"text": "line one\nline two\n"}]
  else:
    assert sorted(got, key=lambda r: r["input"]) == rows
  assert not sources.has_split(d, "validation")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_local_file_without_the_named_column_names_the_field_and_the_columns(fmt, tmp_path):
  path = tmp_path / f"data.{fmt}"
  if fmt == "csv":
    path.write_text("question,answer\nq,a\n")
  else:
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
  d = data_cfg(tmp_path, name=fmt, train_files=str(path), input_key="question")
  with pytest.raises(ValueError, match=r"data\.target_key='target' is not a column of .*data\.%s; its columns are "
                                       r"\['question', 'answer'\]" % fmt):
    sources.load_split(d, "train", sources.key_fields(d, "pairs"))


def test_local_file_with_missing_column_names_file_and_row(tmp_path):
  path = tmp_path / "bad.tsv"
  path.write_text("input\ttarget\na\tb\nonly_one_field\n")
  d = data_cfg(tmp_path, name="tsv", train_files=str(path))
  with pytest.raises(Exception, match=r"bad.tsv, row 3: missing field"):
    sources.load_split(d, "train", PAIRS)


def test_local_files_glob_without_match_is_an_error(tmp_path):
  d = data_cfg(tmp_path, name="text", train_files=str(tmp_path / "nothing*.txt"))
  with pytest.raises(FileNotFoundError, match="data.train_files: no file matches .*nothing"):
    sources.load_split(d, "train", TEXT)


# Packing and batches ----------------------------------------------------------------------------

def test_stream_packs_documents_with_eos_and_segments():
  tok = ByteTokenizer()
  s = pipeline.make_stream(tok, ["ab", "cde"])
  np.testing.assert_array_equal(s.ids, [tok.encode("a")[0], tok.encode("b")[0], 1] + list(tok.encode("cde")) + [1])
  np.testing.assert_array_equal(s.segments, [0, 0, 0, 1, 1, 1, 1])
  ids, segs = pipeline.windows(s, np.array([1, 0]), 4)
  np.testing.assert_array_equal(segs, [[1, 1, 2, 2], [1, 1, 1, 2]])
  batch = batches.lm_batch(ids, segs, tok, None)
  np.testing.assert_array_equal(batch["weights"], [[1, 0, 1], [1, 1, 0]])  # no prediction across documents


def test_train_windows_are_a_function_of_seed_and_step():
  s = pipeline.TokenStream(np.arange(1000, dtype=np.int32), np.zeros(1000, np.int32))
  a = pipeline.train_starts(s, 17, 8, seed=3, step=5)
  np.testing.assert_array_equal(a, pipeline.train_starts(s, 17, 8, seed=3, step=5))
  assert not np.array_equal(a, pipeline.train_starts(s, 17, 8, seed=3, step=6))
  assert not np.array_equal(a, pipeline.train_starts(s, 17, 8, seed=4, step=5))
  assert a.max() <= 1000 - 17


def test_pair_indices_cover_each_epoch_once():
  idx = np.concatenate([pipeline.pair_indices(10, 5, seed=0, step=s) for s in range(4)])  # two epochs
  assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
  assert not np.array_equal(idx[:10], idx[10:])


def test_mlm_masking_rates():
  tok = ByteTokenizer()
  rng = np.random.default_rng(0)
  ids = rng.integers(tok.num_specials, tok.vocab_size, size=(64, 256)).astype(np.int32)
  segs = np.ones_like(ids)
  b = batches.mlm_batch(ids, segs, tok, np.random.default_rng(1))
  chosen = b["weights"] > 0
  assert chosen.sum(axis=1).tolist() == [round(0.15 * 256)] * 64  # exactly 15 % per row
  masked = (b["inputs"] == tok.mask_id) & chosen
  kept = (b["inputs"] == ids) & chosen
  random = chosen & ~masked & ~kept
  n = chosen.sum()
  assert 0.77 < masked.sum() / n < 0.83
  assert 0.08 < kept.sum() / n < 0.12    # 10 % kept (+ random draws that hit the same token: ~0.04 %)
  assert 0.08 < random.sum() / n < 0.12
  assert np.array_equal(b["inputs"][~chosen], ids[~chosen])
  np.testing.assert_array_equal(b["targets"], ids)


def test_span_corruption_is_invertible_and_has_t5_statistics():
  tok = ByteTokenizer(num_sentinels=batches.span_lengths(128)[1])
  rng = np.random.default_rng(0)
  ids = rng.integers(tok.num_specials, tok.vocab_size, size=(32, 128)).astype(np.int32)
  b = batches.span_batch(ids, np.ones_like(ids), tok, np.random.default_rng(1))
  in_len, tgt_len = batches.span_shapes(128)
  assert b["inputs"].shape == (32, in_len) and b["targets"].shape == (32, tgt_len)
  sent = set(tok.sentinel_ids.tolist())
  for row in range(32):
    # Rebuild the original text by replacing each sentinel in the inputs with its span from the targets.
    spans, cur = {}, None
    for t in b["targets"][row][:-1].tolist():
      if t in sent:
        cur = t
        spans[cur] = []
      else:
        spans[cur].append(t)
    assert b["targets"][row][-1] == tok.eos_id
    rebuilt = []
    for t in b["inputs"][row].tolist():
      rebuilt.extend(spans[t] if t in sent else [t])
    np.testing.assert_array_equal(rebuilt, ids[row])
    lengths = [len(v) for v in spans.values()]
    assert sum(lengths) == round(0.15 * 128) and len(lengths) == round(sum(lengths) / 3)
    assert min(lengths) >= 1
