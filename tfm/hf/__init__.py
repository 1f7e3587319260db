"""Hugging Face interop: checkpoints in and out (`from_pretrained`, `save_pretrained`).

The conversion is a table of name rules per family (tfm/hf/families.py) run by one engine
(tfm/hf/rules.py) in both directions; weight files are read by tfm/hf/io.py, the older tokenizer
layouts (vocab.txt, vocab.json + merges.txt) by tfm/hf/tokenizer.py for `tfm.load_tokenizer`.
"""

from tfm.hf.api import from_pretrained, save_pretrained
from tfm.hf.families import ARCHITECTURES
from tfm.hf.io import CheckpointError

__all__ = ["ARCHITECTURES", "CheckpointError", "from_pretrained", "save_pretrained"]
