"""Hugging Face interop: checkpoints in and out (`from_pretrained`, `save_pretrained`) and tokenizers.

The conversion is a table of name rules per family (tfm/hf/families.py) run by one engine
(tfm/hf/rules.py) in both directions; weight files are read by tfm/hf/io.py.
"""

from tfm.hf.api import from_pretrained, save_pretrained
from tfm.hf.families import ARCHITECTURES
from tfm.hf.io import CheckpointError
from tfm.hf.tokenizer import load_tokenizer

__all__ = ["ARCHITECTURES", "CheckpointError", "from_pretrained", "load_tokenizer", "save_pretrained"]
