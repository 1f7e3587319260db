"""Labelled text for classification: TFDS datasets by name and local CSV / TSV / JSONL files.

`load_labelled(d, split, label_names)` returns a `LabelledSplit` (texts, optional second texts,
integer labels) and the label names. The fields are the data vocabulary of every task:
`data.name` (a TFDS name or csv | tsv | jsonl), `data.train_files` / `data.validation_files`,
`data.text_key`, `data.text_pair_key`, `data.label_key`. String labels are mapped to ids in sorted
order of the training split (integers in numeric order); an unseen label in another split is an
error naming the file and row. GLUE SST-2 can be prepared offline from its TSVs (`data.manual_dir`), through a
small TFDS builder with the features of `glue/sst2` (`sentence`, `label`, `idx`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tfm.data import sources
from tfm.errors import UserError

FILE_FORMATS = ("csv", "tsv", "jsonl")  # local files with columns (plain text files have no labels)

# TFDS text-classification datasets whose text features are not called "text".
TFDS_TEXT_FIELDS = {
    "glue/sst2": ("sentence", None),
    "glue/cola": ("sentence", None),
    "glue/mrpc": ("sentence1", "sentence2"),
    "glue/rte": ("sentence1", "sentence2"),
    "glue/wnli": ("sentence1", "sentence2"),
    "glue/stsb": ("sentence1", "sentence2"),
    "glue/qqp": ("question1", "question2"),
    "glue/qnli": ("question", "sentence"),
    "glue/mnli": ("premise", "hypothesis"),
    "ag_news_subset": ("description", None),
    "imdb_reviews": ("text", None),
}


@dataclasses.dataclass
class LabelledSplit:
  """One split of labelled text."""

  texts: list[str]
  texts_b: Optional[list[str]]   # second sentence of pair tasks (None for single-sentence tasks)
  labels: np.ndarray             # [num_examples] int32 ids into the label names
  source: str                    # file or dataset name, for messages


class Sst2Tsv(tfds.core.GeneratorBasedBuilder):
  """GLUE SST-2 from the GLUE TSV files (train.tsv, dev.tsv): the features of TFDS's `glue/sst2`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "SST-2 read from local GLUE TSVs (train.tsv -> train, dev.tsv -> validation)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the GLUE SST-2 files train.tsv and dev.tsv in manual_dir."

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["negative", "positive"]),
            "idx": tfds.features.Scalar(np.int32)}),
        description="GLUE SST-2 (Socher et al. 2013), from local TSV files.")

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {"train": self._generate_examples(os.path.join(root, "train.tsv")),
            "validation": self._generate_examples(os.path.join(root, "dev.tsv"))}

  def _generate_examples(self, path):
    with open(path, encoding="utf-8", newline="") as f:
      for i, row in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
        yield i, {"sentence": row["sentence"], "label": int(row["label"]), "idx": i}


def _tfds_builder(d):
  if d.name == "glue/sst2" and d.manual_dir:
    missing = [f for f in ("train.tsv", "dev.tsv") if not os.path.exists(os.path.join(d.manual_dir, f))]
    if missing:
      raise FileNotFoundError(f"data.manual_dir={d.manual_dir!r} lacks {missing} (the GLUE SST-2 TSV files)")
    return Sst2Tsv(data_dir=d.data_dir or None, file_format="array_record")
  return sources.tfds_builder(d.name, d.data_dir)


def _label_names_from_values(values: Sequence[str]) -> list[str]:
  uniq = sorted(set(values))
  try:
    return [str(v) for v in sorted(uniq, key=int)]
  except ValueError:
    return uniq


def _keys(d) -> dict:
  """Returns {config field: column} of the columns a classification run reads."""
  keys = {"data.text_key": d.text_key, "data.label_key": d.label_key}
  if d.text_pair_key:
    keys["data.text_pair_key"] = d.text_pair_key
  return keys


def _read_file(d, path: str) -> list[tuple[int, dict]]:
  """Returns the (row number, record) pairs of one labelled file."""
  keys = _keys(d)
  first = 2 if d.name != "jsonl" else 1  # CSV / TSV rows start after the header line
  rows = list(enumerate(sources.read_records(path, d.name, list(keys.values()), list(keys),
                                             errors=d.get("encoding_errors", "strict")), start=first))
  if not rows:
    raise UserError(f"data file {path!r} has no rows (expected a header and labelled rows with columns "
                     f"{list(keys.values())})")
  for row_no, r in rows:
    if not r[d.label_key].strip():
      raise UserError(f"{path}, row {row_no}: empty label in column {d.label_key!r}")
  return rows


def _from_files(d, split: str, label_names: Optional[list[str]]) -> tuple[LabelledSplit, list[str]]:
  paths = sources.split_files(d, split)
  per_file = [(p, _read_file(d, p)) for p in paths]
  if label_names is None:
    label_names = _label_names_from_values([r[d.label_key].strip() for _, rows in per_file for _, r in rows])
  index = {name: i for i, name in enumerate(label_names)}
  texts, texts_b, labels = [], [], []
  for path, rows in per_file:
    for row_no, r in rows:
      v = r[d.label_key].strip()
      if v not in index:
        raise UserError(f"{path}, row {row_no}: label {v!r} does not occur in the training data (known labels: "
                        f"{label_names})")
      labels.append(index[v])
      texts.append(r[d.text_key])
      if d.text_pair_key:
        texts_b.append(r[d.text_pair_key])
  return LabelledSplit(texts, texts_b if d.text_pair_key else None, np.asarray(labels, np.int32),
                       ", ".join(paths)), label_names


def _from_tfds(d, split: str, label_names: Optional[list[str]]) -> tuple[LabelledSplit, list[str]]:
  builder = _tfds_builder(d)
  sources.prepare(builder, d.manual_dir)
  info = builder.info
  if split not in info.splits:
    raise ValueError(f"dataset {info.full_name!r} has no split {split!r}; it has {list(info.splits)}")
  feats = info.features
  text_a, text_b = d.text_key, d.text_pair_key or None
  if text_a not in feats and d.name in TFDS_TEXT_FIELDS:
    text_a, default_b = TFDS_TEXT_FIELDS[d.name]
    text_b = text_b or default_b
  for name, f in (("data.text_key", text_a), ("data.label_key", d.label_key), ("data.text_pair_key", text_b)):
    if f and f not in feats:
      raise ValueError(f"{name}={f!r} is not a feature of dataset {info.full_name!r}; it has {list(feats)}")
  label_feat = feats[d.label_key]
  names = list(label_feat.names) if isinstance(label_feat, tfds.features.ClassLabel) else None
  source = builder.as_data_source(split=split)
  n = len(source)
  recs = []
  for start in range(0, n, 4096):
    recs.extend(source.__getitems__(list(range(start, min(n, start + 4096)))))
  labels = np.asarray([int(r[d.label_key]) for r in recs], np.int32)
  if names is None:
    names = label_names or [str(i) for i in range(int(labels.max()) + 1)]
  if labels.min(initial=0) < 0:
    raise ValueError(f"dataset {info.full_name!r} split {split!r} has no labels (label -1); use another split")
  texts = [sources.to_str(r[text_a]) for r in recs]
  texts_b = [sources.to_str(r[text_b]) for r in recs] if text_b else None
  return LabelledSplit(texts, texts_b, labels, f"{info.full_name}:{split}"), names


def load_labelled(d, split: str, label_names: Optional[list[str]] = None) -> tuple[LabelledSplit, list[str]]:
  """Returns (the split's texts and label ids, the label names); files have splits train | validation."""
  if d.name in FILE_FORMATS:
    return _from_files(d, split, label_names)
  return _from_tfds(d, split, label_names)
