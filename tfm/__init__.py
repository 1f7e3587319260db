"""tfm: a Transformer model zoo in JAX / Flax linen.

Public API (stable): `get_config`, `list_configs`, `build`, `count_params`, `ModelConfig`,
`init_cache`, `shift_right`, `generate`, `translate`, `from_pretrained`, `save_pretrained`, `load_tokenizer`,
plus the attention core in `tfm.attention`.
"""

from tfm.config import ModelConfig
from tfm.models import build, count_params, init_cache, shift_right
from tfm.presets import get_config, list_configs
from tfm.generate import generate  # the function; the CLI is `python -m tfm.generate`
from tfm.generate.translate import translate  # source texts -> translations (beam search or greedy)
from tfm.hf import from_pretrained, save_pretrained  # Hugging Face interop
from tfm.data.tokenizers import load_tokenizer  # tfm's tokenizer.json, a run, or a Hugging Face directory

__all__ = ["ModelConfig", "translate", "build", "count_params", "from_pretrained", "generate", "get_config", "init_cache",
           "list_configs", "load_tokenizer", "save_pretrained", "shift_right"]
