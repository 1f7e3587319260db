"""Data for training: sources (any TFDS name, pydoc_topics, local text / CSV / TSV / JSONL files), tokenizers,
packing and padding, the batches of every task (masking for MLM, span corruption, pairs, labelled examples).

The public names load their module on first use: `import tfm` (which needs the tokenizers) does not
import TensorFlow Datasets, which only the data sources need.
"""

import importlib

_HOMES = {
    "ClassifyData": "tfm.data.dataset", "RunData": "tfm.data.dataset",
    "DataUnavailableError": "tfm.data.sources", "load_split": "tfm.data.sources",
    "ByteTokenizer": "tfm.data.tokenizers", "CharTokenizer": "tfm.data.tokenizers", "HFTokenizer": "tfm.data.tokenizers",
    "build_tokenizer": "tfm.data.tokenizers", "load_tokenizer": "tfm.data.tokenizers",
    "save_tokenizer": "tfm.data.tokenizers",
}
__all__ = sorted(_HOMES)


def __getattr__(name):
  """Returns the public name `name` from its module (imported on first use)."""
  if name in _HOMES:
    return getattr(importlib.import_module(_HOMES[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
