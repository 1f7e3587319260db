"""tfm: a Transformer model zoo in JAX / Flax linen.

Public API (stable): `get_config`, `list_configs`, `build`, `count_params`, `ModelConfig`,
`init_cache`, plus the attention core in `tfm.attention`.
"""

from tfm.config import ModelConfig
from tfm.models import build, count_params, init_cache, shift_right
from tfm.presets import get_config, list_configs
from tfm.generate import generate  # noqa: E402  (the function; the CLI is `python -m tfm.generate`)

__all__ = ["ModelConfig", "build", "count_params", "get_config", "init_cache", "list_configs", "shift_right"]
__all__ += ["generate"]
from tfm.hf import from_pretrained, load_tokenizer, save_pretrained  # noqa: E402  (Hugging Face interop)
__all__ += ["from_pretrained", "load_tokenizer", "save_pretrained"]
