"""Data for training: sources (any TFDS name, pydoc_topics, local text / CSV / TSV / JSONL files), tokenizers,
packing and padding, the batches of every task (masking for MLM, span corruption, pairs, labelled examples)."""

from tfm.data.dataset import ClassifyData, RunData
from tfm.data.sources import DataUnavailableError, load_split
from tfm.data.tokenizers import (ByteTokenizer, CharTokenizer, HFTokenizer, build_tokenizer, load_tokenizer,
                                 save_tokenizer)

__all__ = ["ByteTokenizer", "CharTokenizer", "ClassifyData", "DataUnavailableError", "HFTokenizer", "RunData",
           "build_tokenizer", "load_split", "load_tokenizer", "save_tokenizer"]
