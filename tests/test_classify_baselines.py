"""Classification baselines and model selection: scikit-learn's own numbers, the holdout split, the summary."""

import csv
import json
import os
import random

import numpy as np
import pytest

from tfm.data.dataset import split_holdout
from tfm.data.labelled import LabelledSplit
from tfm.train import baselines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.join(ROOT, "..", "shared", "data", "sst2")


def _sst2(name, n, seed):
  with open(os.path.join(SST2, name), encoding="utf-8") as f:
    rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r["sentence"].split()) >= 6]
  random.Random(seed).shuffle(rows)
  return [r["sentence"] for r in rows[:n]], np.asarray([int(r["label"]) for r in rows[:n]])


def test_baselines_equal_scikit_learn_fitted_independently():
  from sklearn.dummy import DummyClassifier
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import accuracy_score, f1_score
  texts, labels = _sst2("train.tsv", 900, 0)
  ev_texts, ev_labels = _sst2("dev.tsv", 300, 1)
  train, hold = (texts[:700], None, labels[:700]), (texts[700:], None, labels[700:])
  got = baselines.text_baselines(train, hold, (ev_texts, None, ev_labels), ["0", "1"])

  dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((700, 1)), labels[:700])
  pred = dummy.predict(np.zeros((300, 1)))
  assert got["baseline_majority_accuracy"] == pytest.approx(accuracy_score(ev_labels, pred), abs=1e-12)
  assert got["baseline_majority_macro_f1"] == pytest.approx(f1_score(ev_labels, pred, average="macro"), abs=1e-12)

  # The same pipeline written out: word uni+bigram TF-IDF, cold-start fits, C chosen on the holdout.
  vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
  x = vec.fit_transform(texts[:700])
  fits = {c: LogisticRegression(C=c, max_iter=1000).fit(x, labels[:700]) for c in (1.0, 10.0, 100.0)}
  hold_acc = {c: accuracy_score(labels[700:], m.predict(vec.transform(texts[700:]))) for c, m in fits.items()}
  best_c = max(hold_acc, key=lambda c: (hold_acc[c], -c))
  pred = fits[best_c].predict(vec.transform(ev_texts))
  assert got["baseline_tfidf_C"] == best_c
  assert got["baseline_tfidf_converged"]
  assert got["baseline_tfidf_accuracy"] == pytest.approx(accuracy_score(ev_labels, pred), abs=1e-12)
  assert got["baseline_tfidf_macro_f1"] == pytest.approx(f1_score(ev_labels, pred, average="macro"), abs=1e-12)
  assert 0.55 < got["baseline_tfidf_accuracy"] < 0.95  # it learnt something, and is not perfect


def test_holdout_is_stratified_disjoint_and_keeps_rare_labels():
  labels = np.asarray([0] * 50 + [1] * 30 + [2] * 4)
  split = LabelledSplit([f"text {i}" for i in range(len(labels))], None, labels, "x.csv")
  train, hold = split_holdout(split, 0.1, 3)
  assert not set(train.texts) & set(hold.texts)
  assert sorted(train.texts + hold.texts) == sorted(split.texts)
  assert np.bincount(hold.labels, minlength=3).tolist() == [5, 3, 0]  # rare label 2 stays in training
  again, _ = split_holdout(split, 0.1, 3)
  assert again.texts == train.texts  # fixed, whatever the seed of the run
  with pytest.raises(ValueError, match="holdout_fraction"):
    split_holdout(LabelledSplit(["a", "b"], None, np.asarray([0, 1]), "y.csv"), 0.1, 2)


def test_run_selects_on_holdout_and_reports_baselines(tmp_path):
  from test_classify import _write_csv, sst2_config
  from tfm.train import train_and_evaluate
  texts, labels = _sst2("train.tsv", 300, 2)
  ev_texts, ev_labels = _sst2("dev.tsv", 100, 3)
  train = _write_csv(tmp_path / "train.csv", [{"text": t, "label": str(y)} for t, y in zip(texts, labels)],
                     ["text", "label"])
  dev = _write_csv(tmp_path / "dev.csv", [{"text": t, "label": str(y)} for t, y in zip(ev_texts, ev_labels)],
                   ["text", "label"])
  logs = []
  c = sst2_config(tmp_path, **{"data.name": "csv", "data.train_files": train, "data.validation_files": dev,
                               "train.steps": 40, "train.eval_every": 10, "train.checkpoint_every": 20,
                               "data.holdout_fraction": 0.2})
  summary = train_and_evaluate(c, str(tmp_path / "w"), log=logs.append)
  assert any(line.startswith("baselines on the evaluation split") for line in logs)
  assert any("points against TF-IDF" in line for line in logs)
  with open(tmp_path / "w" / "summary.json") as f:
    written = json.load(f)
  for k in ("baseline_majority_accuracy", "baseline_majority_macro_f1", "baseline_tfidf_accuracy",
            "baseline_tfidf_macro_f1"):
    assert 0 < written[k] <= 1, k
  # The majority label is the training part's (the holdout is stratified, so the full split's unless tied).
  counts = np.bincount(labels, minlength=2)
  assert counts[0] != counts[1]
  assert written["baseline_majority_label"] == int(np.argmax(counts))
  assert written["baseline_majority_accuracy"] == pytest.approx(np.mean(ev_labels == np.argmax(counts)))
  evals = [json.loads(line) for line in open(tmp_path / "w" / "metrics.jsonl")]
  evals = [r for r in evals if r["split"] == "eval"]
  assert len(evals) == 4 and all("holdout_accuracy" in r for r in evals)
  # The best step is the first with the highest holdout accuracy, whatever the evaluation split says.
  best = max(evals, key=lambda r: (r["holdout_accuracy"], -r["step"]))
  assert summary["best_step"] == best["step"]
  assert summary["best_eval_accuracy"] == pytest.approx(best["accuracy"])
  assert written["best_selected_on"] == "holdout"
