"""Classification metrics of one evaluation, computed by scikit-learn from labels and predictions."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm

# Metrics a run can select as `train.best_metric` (all: higher is better).
SELECTABLE = ("accuracy", "macro_f1", "mcc")


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]) -> dict:
  """Returns accuracy, macro-F1, Matthews correlation, per-class precision / recall and the confusion matrix."""
  labels = np.asarray(labels)
  predictions = np.asarray(predictions)
  ids = list(range(len(label_names)))
  precision, recall, _, support = skm.precision_recall_fscore_support(
      labels, predictions, labels=ids, zero_division=0)
  return {
      "accuracy": float(skm.accuracy_score(labels, predictions)),
      "macro_f1": float(skm.f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
      "mcc": float(skm.matthews_corrcoef(labels, predictions)),
      "per_class": {name: {"precision": float(p), "recall": float(r), "support": int(s)}
                    for name, p, r, s in zip(label_names, precision, recall, support)},
      # rows: true label, columns: predicted label, in the order of label_names
      "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=ids).tolist(),
  }
