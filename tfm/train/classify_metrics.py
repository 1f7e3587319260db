"""Classification metrics of one evaluation: the model's predictions on the validation examples, scored by sklearn."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from tfm.train.objectives import classify_logits


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, label_names: Sequence[str]) -> dict:
  """Returns accuracy, macro-F1, Matthews correlation, per-class precision / recall and the confusion matrix."""
  from sklearn import metrics as skm  # imported here: 1.4 s at every train.py start otherwise, for LM runs too
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


def classification_eval(model, params, data, predict=None) -> dict:
  """Returns the validation metrics of a ClassifyData: accuracy, macro_f1, mcc, per_class, confusion_matrix."""
  if predict is None:
    predict = jax.jit(lambda p, b: classify_logits(model, p, b))
  preds, labels = [], []
  for batch in data.eval_batches():
    keep = batch["weights"] > 0
    logits = np.asarray(jax.device_get(predict(params, batch)))  # [batch, num_labels]
    preds.append(np.argmax(logits, -1)[keep])
    labels.append(batch["labels"][keep])
  return classification_metrics(np.concatenate(labels), np.concatenate(preds), data.label_names)
