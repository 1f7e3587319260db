"""Text sources as TFDS datasets (array_record, read back without TensorFlow).

- Any registered TFDS dataset by name (`tiny_shakespeare`, `lm1b`, `wmt14_translate/de-en`, ...),
  prepared into `data_dir` (files already downloaded can be given as `manual_dir`).
- `pydoc_topics`: the text of the standard library's `pydoc_data.topics` (every Python has it),
  one document per help topic; the embedded default corpus, needs no network.
- `text` | `csv` | `tsv` | `jsonl`: local files (`data.train_files`, `data.validation_files`) turned
  into a TFDS dataset, so one pipeline serves every source.

`load_split(data_cfg, split, fields)` returns the records of a split as a list of {feature: str}
dicts. Without network, a dataset that needs a download fails within seconds with
`DataUnavailableError`. `read_records` reads one local file (classification reads its files
directly, in file order, so that a bad row is named by its line).
"""

from __future__ import annotations

import csv
import glob as globlib
import hashlib
import json
import os
import sys
import types
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

FORMATS = ("text", "csv", "tsv", "jsonl")  # data.name of local files: one document per text file, one row per line


class DataUnavailableError(RuntimeError):
  """A dataset is neither prepared nor downloadable (e.g. no network)."""


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------


class PydocTopics(tfds.core.GeneratorBasedBuilder):
  """The standard library's pydoc help topics: train = 90 % of the topics, validation = every 10th."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per pydoc_data.topics entry (sorted by topic name)."}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "topic": tfds.features.Text()}),
        description="Python's built-in help topics (pydoc_data.topics), shipped with every Python.")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(keep=lambda i: i % 10 != 0),
            "validation": self._generate_examples(keep=lambda i: i % 10 == 0)}

  def _generate_examples(self, keep):
    from pydoc_data.topics import topics
    for i, name in enumerate(sorted(topics)):
      if keep(i):
        yield name, {"text": topics[name], "topic": name}


class LocalFilesConfig(tfds.core.BuilderConfig):
  """Which local files make which split, their format and fields."""

  def __init__(self, *, files: dict, fmt: str, fields: Sequence[str], **kw):
    self.files, self.fmt, self.fields = files, fmt, tuple(fields)
    super().__init__(**kw)


class LocalFiles(tfds.core.GeneratorBasedBuilder):
  """Local text / CSV / TSV / JSONL files as a TFDS dataset (one config per set of files)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local files."}

  def _info(self):
    feats = {name: tfds.features.Text() for name in self.builder_config.fields}
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(feats),
                                          description=f"Local {self.builder_config.fmt} files")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(paths) for split, paths in self.builder_config.files.items()}

  def _generate_examples(self, paths):
    cfg = self.builder_config
    for path in paths:
      for i, rec in enumerate(read_records(path, cfg.fmt, cfg.fields)):
        yield f"{path}:{i}", rec


def read_records(path: str, fmt: str, fields: Sequence[str], field_names: Sequence[str] = ()) -> Iterator[dict]:
  """Yields {field: str} records of one local file; text files give one record {fields[0]: whole file}.

  `field_names` names the config field of each of `fields` (e.g. "data.label_key"): a column that the
  file's header (CSV / TSV) or first row (JSONL) lacks is an error naming that field and the columns.
  """
  if fmt == "text":
    with open(path, encoding="utf-8") as f:
      yield {fields[0]: f.read()}
    return
  names = dict(zip(fields, field_names))
  with open(path, encoding="utf-8", newline="") as f:
    if fmt == "jsonl":
      rows = (json.loads(line) for line in f if line.strip())
    else:
      rows = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=csv.QUOTE_NONE if fmt == "tsv"
                            else csv.QUOTE_MINIMAL)
      if rows.fieldnames:  # an empty file has no header: it yields no records
        _check_columns(path, rows.fieldnames, fields, names)
    for row_no, row in enumerate(rows, start=2 if fmt != "jsonl" else 1):
      if fmt == "jsonl" and row_no == 1:
        _check_columns(path, list(row), fields, names)
      missing = [k for k in fields if k not in row or row[k] is None]
      if missing:
        raise ValueError(f"{path}, row {row_no}: missing field(s) {missing}; the row has {sorted(row)}")
      yield {k: str(row[k]) for k in fields}


def _check_columns(path: str, columns: Sequence[str], fields: Sequence[str], names: dict) -> None:
  """Raises ValueError naming the config field of the first of `fields` that is not among `columns`."""
  for k in fields:
    if k not in columns and k in names:
      raise ValueError(f"{names[k]}={k!r} is not a column of {path}; its columns are {list(columns)}")


def expand_files(spec: str, what: str) -> list[str]:
  """Returns the absolute paths named by `spec` (comma-separated paths or globs); `what` names the field."""
  paths = []
  for pattern in [p.strip() for p in spec.split(",") if p.strip()]:
    found = sorted(globlib.glob(os.path.expanduser(pattern)))
    if not found:
      raise FileNotFoundError(f"{what}: no file matches {pattern!r}")
    paths.extend(os.path.abspath(p) for p in found)
  return paths


def split_files(d, split: str) -> list[str]:
  """Returns the paths of `split` of local files `d`: train -> data.train_files, validation -> data.validation_files."""
  field = {"train": "train_files", "validation": "validation_files"}[split]
  if not d[field]:
    raise ValueError(f"data.name={d.name!r} needs data.{field} (comma-separated paths or globs of {d.name} files)")
  return expand_files(d[field], f"data.{field}")


def local_files_builder(d, fields: Sequence[str], field_names: Sequence[str] = ()) -> LocalFiles:
  """Returns the LocalFiles builder for data config `d` (name = the format, train_files, validation_files)."""
  files = {"train": split_files(d, "train")}
  if d.validation_files:
    files["validation"] = split_files(d, "validation")
  fmt = d.name
  if fmt != "text":  # a missing column is named now, not from inside TFDS's preparation
    for paths in files.values():
      for path in paths:
        next(read_records(path, fmt, fields, field_names), None)
  # The config name hashes the paths, sizes and modification times: changed files give a new dataset.
  h = hashlib.sha256()
  for split, paths in sorted(files.items()):
    for p in paths:
      st = os.stat(p)
      h.update(f"{split}|{p}|{st.st_size}|{st.st_mtime_ns}|".encode())
  h.update(f"{fmt}|{','.join(fields)}".encode())
  config = LocalFilesConfig(name=h.hexdigest()[:16], files=files, fmt=fmt, fields=fields,
                            version=LocalFiles.VERSION)
  return LocalFiles(config=config, data_dir=d.data_dir or None, file_format="array_record")


# ------------------------------------------------------------------------------------------------
# Preparing without TensorFlow and without network
# ------------------------------------------------------------------------------------------------


def _local_gfile():
  """Returns a stand-in for `tf.io.gfile` that opens local files (used when TensorFlow is absent)."""
  gfile = types.SimpleNamespace(GFile=open, exists=os.path.exists, isdir=os.path.isdir, listdir=os.listdir,
                                glob=globlib.glob, makedirs=lambda p: os.makedirs(p, exist_ok=True))
  return types.SimpleNamespace(io=types.SimpleNamespace(gfile=gfile))


def _tensorflow_available() -> bool:
  import importlib.util
  return importlib.util.find_spec("tensorflow") is not None


def tfds_builder(name: str, data_dir: str):
  """Returns the TFDS builder of dataset `name` (array_record files in `data_dir`)."""
  try:
    return tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    # Without h5py, TFDS's registration of legacy builders stops early; import the families we use.
    import tensorflow_datasets.text  # noqa: F401
    import tensorflow_datasets.translate  # noqa: F401
    try:
      return tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f"data.name={name!r} is not a TFDS dataset; use a TFDS name (e.g. tiny_shakespeare, lm1b), "
                       f"'pydoc_topics', or a file format {' | '.join(FORMATS)} with data.train_files") from None


def prepare(builder, manual_dir: str = "") -> None:
  """Prepares `builder` unless already prepared; raises DataUnavailableError fast when a download fails."""
  if builder.is_prepared():
    return
  from tensorflow_datasets.core.download import downloader
  old_retries = downloader.MAX_RETRIES
  downloader.MAX_RETRIES = 0  # without network, requests would otherwise retry for ~200 s
  module = sys.modules[type(builder).__module__]
  old_tf = getattr(module, "tf", None)
  if old_tf is not None and not _tensorflow_available():
    module.tf = _local_gfile()  # TFDS builders read local files through tf.io.gfile
  try:
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    builder.download_and_prepare(download_config=config)
  except Exception as e:  # pylint: disable=broad-except
    name = builder.info.full_name
    text = f"{type(e).__name__}: {e}"
    if any(w in text for w in ("ConnectionError", "Max retries", "Name or service", "resolve", "NonMatchingChecksum",
                               "manual", "Manual", "NetworkError", "ssl", "SSL", "timed out")):
      raise DataUnavailableError(
          f"dataset {name!r} needs a download and it failed ({text[:300]}). Provide the data locally: "
          f"--config.data.manual_dir=DIR with the source files TFDS expects, or --config.data.data_dir=DIR "
          f"holding the prepared dataset, or train on your own files with --config.data.name={'|'.join(FORMATS)} "
          f"--config.data.train_files=PATH") from e
    raise
  finally:
    downloader.MAX_RETRIES = old_retries
    if old_tf is not None:
      module.tf = old_tf


def key_fields(d, source: str) -> dict:
  """Returns {config field: feature} a task of `source` kind reads: "stream" (text_key), "pairs" (input / target)."""
  names = ("input_key", "target_key") if source == "pairs" else ("text_key",)
  return {f"data.{n}": d[n] for n in names}


def load_split(d, split: str, keys: dict) -> list[dict]:
  """Returns the records of `split` of data config `d` as {feature: str} dicts; `keys` is {config field: feature}."""
  fields, names = list(keys.values()), list(keys)
  if d.name in FORMATS:
    builder = local_files_builder(d, fields, names)
  else:
    builder = tfds_builder(d.name, d.data_dir)
  prepare(builder, d.manual_dir)
  if split not in builder.info.splits:
    raise ValueError(f"dataset {builder.info.full_name!r} has no split {split!r}; it has {list(builder.info.splits)}")
  feats = builder.info.features
  for name, f in keys.items():
    if f not in feats:
      raise ValueError(f"{name}={f!r} is not a feature of dataset {builder.info.full_name!r}; it has {list(feats)}")
  source = builder.as_data_source(split=split)
  n = len(source)
  out = []
  for start in range(0, n, 4096):  # __getitems__ reads a batch of records far faster than one by one
    for rec in source.__getitems__(list(range(start, min(n, start + 4096)))):
      out.append({f: to_str(rec[f]) for f in fields})
  return out


def to_str(v) -> str:
  """Returns a TFDS text feature value (bytes, a 0-d array or a str) as a str."""
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if isinstance(v, np.ndarray):
    return to_str(v.item())
  return str(v)


def has_split(d, split: str) -> bool:
  """Returns whether the dataset of `d` has `split` (local files have validation only if given)."""
  if d.name in FORMATS:
    return split == "train" or bool(d.validation_files)
  builder = tfds_builder(d.name, d.data_dir)
  prepare(builder, d.manual_dir)
  return split in builder.info.splits
