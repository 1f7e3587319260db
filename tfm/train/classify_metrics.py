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


def classification_eval(model, params, data, split: str = "eval", predict=None) -> dict:
  """Returns the metrics of a ClassifyData split (eval | holdout): loss, accuracy, macro_f1, mcc, per_class, ...

  `predict` is a compiled (params, batch) -> [batch, num_labels] logits function; pass the same one
  at every eval (a new one compiles again).
  """
  if predict is None:
    predict = make_predict(model)
  preds, labels, nll = [], [], []
  for batch in data.eval_batches(split):
    keep = batch["weights"] > 0
    logits = np.asarray(jax.device_get(predict(params, batch)), np.float64)[keep]  # [batch, num_labels]
    lab = batch["labels"][keep]
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    nll.append(logz - logits[np.arange(len(lab)), lab])
    preds.append(np.argmax(logits, -1))
    labels.append(lab)
  out = classification_metrics(np.concatenate(labels), np.concatenate(preds), data.label_names)
  out["loss"] = float(np.mean(np.concatenate(nll)))
  return out


def make_predict(model):
  """Returns the compiled (params, batch) -> [batch, num_labels] logits function of a classifier."""
  return jax.jit(lambda p, b: classify_logits(model, p, b))
