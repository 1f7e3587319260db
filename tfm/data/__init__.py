"""Data for training: TFDS sources (any TFDS name, pydoc_topics, local files), tokenizers, packing, batches."""

from tfm.data.dataset import RunData
from tfm.data.sources import DataUnavailableError, load_split
from tfm.data.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, build_tokenizer, load_tokenizer, save_tokenizer

__all__ = ["ByteTokenizer", "CharTokenizer", "DataUnavailableError", "HFTokenizer", "RunData", "build_tokenizer",
           "load_split", "load_tokenizer", "save_tokenizer"]
