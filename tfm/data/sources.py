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
import io
import json
import os
import sys
import types
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tfm.errors import UserError, UserFileNotFoundError

FORMATS = ("text", "csv", "tsv", "jsonl")  # data.name of local files: one document per text file, one row per line


ENCODING_ERRORS = ("strict", "replace")  # data.encoding_errors: what a byte that is not UTF-8 does


class DataUnavailableError(UserError, RuntimeError):
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

  def __init__(self, *, files: dict, fmt: str, fields: Sequence[str], encoding_errors: str = "strict", **kw):
    self.files, self.fmt, self.fields, self.encoding_errors = files, fmt, tuple(fields), encoding_errors
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
      for i, rec in enumerate(read_records(path, cfg.fmt, cfg.fields, errors=cfg.encoding_errors)):
        yield f"{path}:{i}", rec


def read_text(path: str, errors: str = "strict") -> str:
  """Returns the text of file `path` decoded as UTF-8; a byte that is not UTF-8 is a UserError naming the offset.

  `errors` is data.encoding_errors: "strict" (the error) or "replace" (such bytes read as U+FFFD).
  """
  if errors not in ENCODING_ERRORS:
    raise UserError(f"config field 'data.encoding_errors' must be one of {list(ENCODING_ERRORS)}; got {errors!r}")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8", errors=errors)
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise UserError(f"{path}: byte offset {e.start} (line {line}) is not UTF-8 (byte {raw[e.start:e.start + 1]!r}: "
                    f"{e.reason}); convert the file to UTF-8, or read such bytes as U+FFFD with "
                    f"--config.data.encoding_errors=replace") from None


def read_records(path: str, fmt: str, fields: Sequence[str], field_names: Sequence[str] = (),
                 errors: str = "strict") -> Iterator[dict]:
  """Yields {field: str} records of one local file; text files give one record {fields[0]: whole file}.

  The checks (columns, field counts, UTF-8) are numbered_records'.
  """
  for _, rec in numbered_records(path, fmt, fields, field_names, errors):
    yield rec


def numbered_records(path: str, fmt: str, fields: Sequence[str], field_names: Sequence[str] = (),
                     errors: str = "strict") -> Iterator[tuple[int, dict]]:
  """Yields (line number, {field: str} record) of one local file; text files give (1, {fields[0]: whole file}).

  `field_names` names the config field of each of `fields` (e.g. "data.label_key"): a column that the
  file's header (CSV / TSV) or first row (JSONL) lacks is an error naming that field, the file and its
  columns; a CSV / TSV row with another number of fields than the header names its line. `errors`:
  data.encoding_errors (see read_text).
  """
  text = read_text(path, errors)
  if fmt == "text":  # universal newlines, as open() in text mode reads them
    yield 1, {fields[0]: text.replace("\r\n", "\n").replace("\r", "\n")}
    return
  names = dict(zip(fields, field_names))
  f = io.StringIO(text, newline="")
  if fmt == "jsonl":
    checked = False
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {line_no}: not a JSON object ({e.msg} at column {e.colno})") from None
      if not isinstance(row, dict):
        raise UserError(f"{path}, line {line_no}: expected a JSON object {{\"column\": value, ...}}; got "
                        f"{type(row).__name__}")
      if not checked:
        _check_columns(path, list(row), fields, names)
        checked = True
      missing = [k for k in fields if k not in row or row[k] is None]
      if missing:
        raise UserError(f"{path}, line {line_no}: missing field(s) {missing}; the row has {sorted(row)}")
      yield line_no, {k: str(row[k]) for k in fields}
    return
  rows = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",", quoting=csv.QUOTE_NONE if fmt == "tsv"
                        else csv.QUOTE_MINIMAL)
  if not rows.fieldnames:  # an empty file has no header: it yields no records
    return
  _check_columns(path, rows.fieldnames, fields, names)
  width = len(rows.fieldnames)
  sep = "tabs" if fmt == "tsv" else "commas"
  for row in rows:  # row (line) numbers are the file's lines: the header is line 1
    missing = [k for k, v in row.items() if k is not None and v is None]
    if missing:  # fewer fields than the header
      raise UserError(f"{path}, row {rows.line_num}: missing field(s) {missing}: the row has {width - len(missing)} "
                      f"field(s), the header {width} ({list(rows.fieldnames)})")
    if None in row:  # more fields than the header
      raise UserError(f"{path}, row {rows.line_num}: {width + len(row[None])} fields, but the header has {width} "
                      f"({list(rows.fieldnames)}); {sep} inside a value?")
    yield rows.line_num, {k: str(row[k]) for k in fields}


def _check_columns(path: str, columns: Sequence[str], fields: Sequence[str], names: dict) -> None:
  """Raises UserError naming the first of `fields` (and its config field) that is not among `columns`."""
  for k in fields:
    if k not in columns:
      what = f"{names[k]}={k!r}" if k in names else f"column {k!r}"
      raise UserError(f"{what} is not a column of {path}; its columns are {list(columns)}")


def expand_files(spec: str, what: str) -> list[str]:
  """Returns the absolute paths named by `spec` (comma-separated paths or globs); `what` names the field."""
  paths = []
  for pattern in [p.strip() for p in spec.split(",") if p.strip()]:
    found = sorted(globlib.glob(os.path.expanduser(pattern)))
    if not found:
      raise UserFileNotFoundError(f"{what}: no file matches {pattern!r}")
    for p in found:
      if os.path.isdir(p):
        raise UserError(f"{what}: {p} is a directory; name the files (a glob such as {os.path.join(p, '*.txt')})")
    paths.extend(os.path.abspath(p) for p in found)
  if not paths:
    raise UserError(f"{what} names no file; got {spec!r}")
  return paths


def split_files(d, split: str) -> list[str]:
  """Returns the paths of `split` of local files `d`: train -> data.train_files, validation -> data.validation_files."""
  field = {"train": "train_files", "validation": "validation_files"}[split]
  if not d[field]:
    raise UserError(f"data.name={d.name!r} needs data.{field} (comma-separated paths or globs of {d.name} files)")
  return expand_files(d[field], f"data.{field}")


def local_files_builder(d, fields: Sequence[str], field_names: Sequence[str] = ()) -> LocalFiles:
  """Returns the LocalFiles builder for data config `d` (name = the format, train_files, validation_files)."""
  files = {"train": split_files(d, "train")}
  if d.validation_files:
    files["validation"] = split_files(d, "validation")
  fmt, errors = d.name, d.get("encoding_errors", "strict")
  # The config name hashes the paths, sizes and modification times: changed files give a new dataset.
  h = hashlib.sha256()
  for split, paths in sorted(files.items()):
    for p in paths:
      st = os.stat(p)
      h.update(f"{split}|{p}|{st.st_size}|{st.st_mtime_ns}|".encode())
  h.update(f"{fmt}|{','.join(fields)}".encode())
  if errors != "strict":
    h.update(f"|{errors}".encode())
  config = LocalFilesConfig(name=h.hexdigest()[:16], files=files, fmt=fmt, fields=fields, encoding_errors=errors,
                            version=LocalFiles.VERSION)
  builder = LocalFiles(config=config, data_dir=d.data_dir or None, file_format="array_record")
  if not builder.is_prepared():  # an empty file, a missing column, a bad row or byte: named now, not inside TFDS
    for split, paths in files.items():
      for path in paths:
        n = sum(1 for _ in read_records(path, fmt, fields, field_names, errors))
        if not os.path.getsize(path) or not n:
          field = "data.train_files" if split == "train" else "data.validation_files"
          raise UserError(f"{field}: {path} is empty" + (" (0 bytes)" if not os.path.getsize(path) else
                                                         f"; it has no {fmt} rows after its header"))
  return builder


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
      raise UserError(f"data.name={name!r} is not a TFDS dataset; use a TFDS name (e.g. tiny_shakespeare, lm1b), "
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
    raise UserError(f"dataset {builder.info.full_name!r} has no split {split!r}; it has {list(builder.info.splits)}")
  feats = builder.info.features
  for name, f in keys.items():
    if f not in feats:
      raise UserError(f"{name}={f!r} is not a feature of dataset {builder.info.full_name!r}; it has {list(feats)}")
  source = builder.as_data_source(split=split)
  n = len(source)
  out = []
  for start in range(0, n, 4096):  # __getitems__ reads a batch of records far faster than one by one
    for rec in source.__getitems__(list(range(start, min(n, start + 4096)))):
      out.append({f: to_str(rec[f]) for f in fields})
  return out


def locate(d, split: str, keys: dict, predicate) -> Optional[str]:
  """Returns "FILE, line N" of the first record of local-file `split` for which predicate(record) holds (None if none).

  Local files only (TFDS shuffles records when it prepares them, so a record's index is not its line).
  """
  if d.name not in FORMATS:
    return None
  fields, names = list(keys.values()), list(keys)
  for path in split_files(d, "train" if split == d.train_split else "validation"):
    for line, rec in numbered_records(path, d.name, fields, names, d.get("encoding_errors", "strict")):
      if predicate(rec):
        return f"{path}, line {line}"
  return None


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
