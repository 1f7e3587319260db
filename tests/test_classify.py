"""Classification fine-tuning: SST-2 end to end, CSV with string labels, predict, start points, bad input."""

import csv
import importlib.util
import json
import os
import random

import numpy as np
import pytest

from tfm.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(ROOT, "..", "shared", "data", "sst2")


def sst2_config(tmp_path, **over):
  """Returns configs/classify_sst2.py's config cut down to a small, fast run."""
  spec = importlib.util.spec_from_file_location("classify_sst2", os.path.join(ROOT, "configs", "classify_sst2.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.unlock()
  c.model_overrides.update(dict(num_layers=1, d_model=64, num_heads=4, d_ff=128, dropout_rate=0.0))
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.vocab_size = 1000
  c.data.seq_len = 32
  c.train.update(dict(steps=40, batch_size=16, eval_every=20, checkpoint_every=20, log_every=10, progress=False))
  c.optimizer.warmup_steps = 5
  c.update_from_flattened_dict(over)
  c.lock()
  return c


def _read_tsv(name, n, seed):
  with open(os.path.join(SST2, name), encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  # Whole sentences (not SST's many short phrases), so a small sample carries signal.
  rows = [r for r in rows if len(r["sentence"].split()) >= 6]
  random.Random(seed).shuffle(rows)
  return rows[:n]


def _write_csv(path, rows, fields):
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
  return str(path)


@pytest.fixture(scope="module")
def sst2_small(tmp_path_factory):
  """Eight hundred SST-2 sentences as CSV files (train from train.tsv, 300 validation from dev.tsv)."""
  d = tmp_path_factory.mktemp("sst2_small")
  train = [{"text": r["sentence"], "label": r["label"]} for r in _read_tsv("train.tsv", 800, 0)]
  dev = [{"text": r["sentence"], "label": r["label"]} for r in _read_tsv("dev.tsv", 300, 1)]
  return _write_csv(d / "train.csv", train, ["text", "label"]), _write_csv(d / "dev.csv", dev, ["text", "label"])


@pytest.fixture(scope="module")
def sst2_run(sst2_small, tmp_path_factory):
  """A tiny encoder fine-tuned on 800 SST-2 sentences (dev accuracy 0.66-0.67 over seeds 0-2 here)."""
  tmp = tmp_path_factory.mktemp("sst2_run")
  train, dev = sst2_small
  c = sst2_config(tmp, **{"data.name": "csv", "data.train_files": train, "data.validation_files": dev,
                          "train.steps": 300, "train.eval_every": 100, "train.checkpoint_every": 100,
                          "optimizer.learning_rate": 1e-3})
  summary = train_and_evaluate(c, str(tmp / "w"), log=lambda *_: None)
  return summary, str(tmp / "w"), dev


def test_tiny_sst2_fine_tune_beats_majority_class(sst2_run):
  summary, workdir, dev = sst2_run
  with open(dev) as f:
    labels = [r["label"] for r in csv.DictReader(f)]
  majority = max(labels.count("0"), labels.count("1")) / len(labels)
  # 800 training sentences from scratch: well above the majority rate, far below a full run.
  assert summary["best_eval_accuracy"] >= majority + 0.08, (summary["best_eval_accuracy"], majority)
  for k in ("best_eval_macro_f1", "best_eval_mcc", "eval_accuracy", "labels"):
    assert k in summary
  with open(os.path.join(workdir, "best_eval_classification.json")) as f:
    details = json.load(f)
  cm = np.array(details["confusion_matrix"])
  assert cm.shape == (2, 2) and cm.sum() == len(labels)
  assert abs(np.trace(cm) / cm.sum() - summary["best_eval_accuracy"]) < 1e-9
  assert set(details["per_class"]) == {"0", "1"}


def test_predict_command(sst2_run, tmp_path):
  from tfm import predict
  _, workdir, dev = sst2_run
  texts = tmp_path / "texts.txt"
  texts.write_text("a gorgeous , witty , seductive movie .\nthe worst film of the year , dull and lifeless .\n")
  assert predict.main(["--workdir", workdir, "--input", str(texts)]) == 0
  rows = [json.loads(line) for line in open(tmp_path / "texts.predictions.jsonl")]
  assert len(rows) == 2 and all(r["label"] in ("0", "1") for r in rows)
  assert all(abs(r["p_0"] + r["p_1"] - 1) < 1e-5 for r in rows)
  out = tmp_path / "dev_preds.csv"
  assert predict.main(["--workdir", workdir, "--input", dev, "--output", str(out)]) == 0
  with open(out) as f:
    preds = list(csv.DictReader(f))
  with open(dev) as f:
    gold = [r["label"] for r in csv.DictReader(f)]
  acc = np.mean([p["label"] == g for p, g in zip(preds, gold)])
  # The best checkpoint's predictions reproduce the accuracy reported for it.
  with open(os.path.join(workdir, "summary.json")) as f:
    assert abs(acc - json.load(f)["best_eval_accuracy"]) < 1e-9


def _three_class_csv(path, n, seed, labels=("cold", "mild", "hot")):
  r = random.Random(seed)
  words = {"cold": ["freezing", "icy", "snow"], "mild": ["pleasant", "breezy", "calm"], "hot": ["scorching", "sunny",
                                                                                              "heatwave"]}
  filler = "the day was really quite a at in on".split()
  rows = []
  for _ in range(n):
    lab = r.choice(labels)
    toks = r.sample(filler, 4) + [r.choice(words[lab])]
    r.shuffle(toks)
    rows.append({"sentence": " ".join(toks), "weather": lab})
  return _write_csv(path, rows, ["sentence", "weather"])


@pytest.mark.parametrize("model", ["gpt2-tiny", "t5-tiny"])
def test_csv_string_labels_three_classes_other_families(tmp_path, model):
  train = _three_class_csv(tmp_path / "train.csv", 300, 0)
  dev = _three_class_csv(tmp_path / "dev.csv", 60, 1)
  over = {"model": model, "data.name": "csv", "data.train_files": train, "data.validation_files": dev,
          "data.text_key": "sentence", "data.label_key": "weather", "data.tokenizer": "byte",
          "train.steps": 60, "train.eval_every": 30, "train.checkpoint_every": 30, "optimizer.learning_rate": 3e-3}
  if model == "t5-tiny":
    over["model_overrides.head_dim"] = 16
  c = sst2_config(tmp_path, **over)
  summary = train_and_evaluate(c, str(tmp_path / "w"), log=lambda *_: None)
  assert summary["labels"] == ["cold", "hot", "mild"]  # string labels, sorted
  assert summary["best_eval_accuracy"] > 0.6, summary  # chance is 1/3


def test_init_from_hugging_face_bert_directory(tmp_path, sst2_small):
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
  # A random-weight BertForMaskedLM and a WordPiece tokenizer trained here: nothing is downloaded.
  train, dev = sst2_small
  with open(train) as f:
    texts = [r["text"] for r in csv.DictReader(f)]
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=500, special_tokens=[
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
  hf_dir = tmp_path / "hf_bert"
  cfg = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
  transformers.BertForMaskedLM(cfg).save_pretrained(hf_dir)
  tok.save(str(hf_dir / "tokenizer.json"))
  logs = []
  c = sst2_config(tmp_path, **{"data.name": "csv", "data.train_files": train, "data.validation_files": dev,
                               "init_from": str(hf_dir), "train.steps": 10, "train.eval_every": 10,
                               "model_overrides.num_layers": None, "model_overrides.d_model": None,
                               "model_overrides.num_heads": None, "model_overrides.d_ff": None,
                               "model_overrides.max_len": None})
  summary = train_and_evaluate(c, str(tmp_path / "w"), log=logs.append)
  assert summary["steps"] == 10 and np.isfinite(summary["eval_loss"])
  new_params = [line for line in logs if "new (randomly initialised) head parameters" in line]
  assert new_params and "classifier" in new_params[0] and "encoder" not in new_params[0]


@pytest.mark.parametrize("case", ["missing_label_key", "unseen_label", "empty_file"])
def test_bad_input_names_file_and_row(tmp_path, case):
  train = _write_csv(tmp_path / "train.csv", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}],
                     ["text", "label"])
  if case == "missing_label_key":
    train = _write_csv(tmp_path / "train.csv", [{"text": "good", "stars": "5"}], ["text", "stars"])
    dev, match = train, r"data\.label_key='label' is not a column of .*train\.csv; its columns are \['text', 'stars'\]"
  elif case == "unseen_label":
    dev = _write_csv(tmp_path / "dev.csv", [{"text": "ok", "label": "pos"}, {"text": "meh", "label": "neutral"}],
                     ["text", "label"])
    match = r"dev\.csv, row 3: label 'neutral' does not occur in the training data"
  else:
    dev = str(tmp_path / "dev.csv")
    open(dev, "w").close()
    match = r"dev\.csv' has no rows"
  c = sst2_config(tmp_path, **{"data.name": "csv", "data.train_files": train, "data.validation_files": dev})
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(c, str(tmp_path / "w"), log=lambda *_: None)
