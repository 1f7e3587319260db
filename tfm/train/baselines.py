"""The classical baselines every classification run is measured against, fitted by scikit-learn.

`text_baselines(train, holdout, evaluation, label_names)` fits, on the run's own training split:
- the majority class (the most frequent training label, predicted for every example);
- TF-IDF over word unigrams and bigrams (sublinear term frequency) with multinomial logistic
  regression, its inverse regularisation C picked from `C_GRID` by accuracy on the holdout split (the
  same examples the run selects its best checkpoint on), then scored once on the evaluation split.
Pair tasks join the two texts with a separator token. Returns accuracy and macro-F1 of each.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

C_GRID = (1.0, 10.0, 100.0)  # logistic-regression inverse regularisation strengths tried on the holdout split
MAX_ITER = 1000              # L-BFGS iterations per fit (a fit that stops short is reported as not converged)
PAIR_SEPARATOR = " ||| "      # joins the two texts of a pair task into one document


def _docs(texts: Sequence[str], texts_b: Optional[Sequence[str]]) -> list[str]:
  """Returns one document per example (pair tasks: the two texts joined)."""
  if texts_b is None:
    return list(texts)
  return [a + PAIR_SEPARATOR + b for a, b in zip(texts, texts_b)]


def _scores(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> tuple[float, float]:
  """Returns (accuracy, macro-F1) of `predictions` against `labels`."""
  from sklearn import metrics as skm
  ids = list(range(num_labels))
  return (float(skm.accuracy_score(labels, predictions)),
          float(skm.f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)))


def majority_baseline(train_labels: np.ndarray, eval_labels: np.ndarray, num_labels: int) -> dict:
  """Returns the majority-class baseline: {"baseline_majority_accuracy", "baseline_majority_macro_f1", ...}."""
  majority = int(np.argmax(np.bincount(train_labels, minlength=num_labels)))
  acc, f1 = _scores(eval_labels, np.full_like(eval_labels, majority), num_labels)
  return {"baseline_majority_accuracy": acc, "baseline_majority_macro_f1": f1, "baseline_majority_label": majority}


def tfidf_baseline(train, holdout, evaluation, num_labels: int) -> dict:
  """Returns the TF-IDF + logistic-regression baseline: accuracy and macro-F1 on `evaluation`, C and the fit time.

  `train`, `holdout` and `evaluation` are (texts, texts_b or None, int labels); C is the one of C_GRID
  with the best holdout accuracy (the first on ties).
  """
  import warnings
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression
  t0 = time.time()
  vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
  x_train = vec.fit_transform(_docs(train[0], train[1]))
  x_hold = vec.transform(_docs(holdout[0], holdout[1]))
  best, converged = None, True
  for c in C_GRID:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", ConvergenceWarning)
      model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(x_train, train[2])
    converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    acc = float(np.mean(model.predict(x_hold) == holdout[2]))
    if best is None or acc > best[0]:
      best = (acc, c, model)
  _, c, model = best
  acc, f1 = _scores(evaluation[2], model.predict(vec.transform(_docs(evaluation[0], evaluation[1]))), num_labels)
  return {"baseline_tfidf_accuracy": acc, "baseline_tfidf_macro_f1": f1, "baseline_tfidf_C": c,
          "baseline_tfidf_converged": converged, "baseline_tfidf_seconds": time.time() - t0}


def text_baselines(train, holdout, evaluation, label_names: Sequence[str]) -> dict:
  """Returns the majority-class and TF-IDF + logistic-regression baselines of one classification split."""
  n = len(label_names)
  out = majority_baseline(np.asarray(train[2]), np.asarray(evaluation[2]), n)
  out.update(tfidf_baseline(train, holdout, evaluation, n))
  return out


def baseline_line(b: dict) -> str:
  """Returns the one-line printout of the baselines."""
  return (f"baselines on the evaluation split: majority class accuracy {b['baseline_majority_accuracy']:.4f} "
          f"(macro-F1 {b['baseline_majority_macro_f1']:.4f}); TF-IDF + logistic regression accuracy "
          f"{b['baseline_tfidf_accuracy']:.4f} (macro-F1 {b['baseline_tfidf_macro_f1']:.4f}, C="
          f"{b['baseline_tfidf_C']:g}, {b['baseline_tfidf_seconds']:.1f}s)")
