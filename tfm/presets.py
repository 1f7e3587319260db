"""The preset table: named sizes and variants of the three families, as ModelConfig overrides."""

from __future__ import annotations

from typing import Any

from tfm.config import ModelConfig

# Family templates: the architectural choices of each well-known model; sizes come below.
_GPT2 = dict(family="decoder", vocab_size=50257, max_len=1024, position="learned", norm="layernorm",
             norm_eps=1e-5, norm_position="pre", mlp="gelu_tanh", use_bias=True, tie_embeddings=True,
             pad_token_id=50256)
_LLAMA = dict(family="decoder", vocab_size=32000, max_len=2048, position="rope", rope_theta=10000.0,
              norm="rmsnorm", norm_eps=1e-5, norm_position="pre", mlp="swiglu", use_bias=False,
              tie_embeddings=False, pad_token_id=0)
_BERT = dict(family="encoder", vocab_size=30522, max_len=512, position="learned", type_vocab_size=2,
             norm="layernorm", norm_eps=1e-12, norm_position="post", embed_norm=True, mlp="gelu",
             use_bias=True, tie_embeddings=True, lm_transform=True, lm_bias=True, pooler=True,
             pad_token_id=0, dropout_rate=0.1, attention_dropout_rate=0.1)
_T5 = dict(family="encoder_decoder", vocab_size=32128, position="relative", relative_buckets=32,
           relative_max_distance=128, norm="rmsnorm", norm_eps=1e-6, norm_position="pre", mlp="relu",
           use_bias=False, scale_attention=False, tie_embeddings=True, scale_tied_logits=True,
           head_dim=64, pad_token_id=0, decoder_start_token_id=0, dropout_rate=0.1, init="t5")
_T5_V1_1 = dict(_T5, mlp="geglu_tanh", tie_embeddings=False, scale_tied_logits=False)
_BART = dict(family="encoder_decoder", vocab_size=50265, max_len=1024, position="learned",
             position_offset=2, norm="layernorm", norm_eps=1e-5, norm_position="post", embed_norm=True,
             mlp="gelu", use_bias=True, tie_embeddings=True, lm_bias=True, pad_token_id=1,
             decoder_start_token_id=2, dropout_rate=0.1, classifier_source="decoder",
             classifier_pooling="last", classifier_hidden=True)
_VASWANI = dict(family="encoder_decoder", vocab_size=37000, max_len=1024, position="sinusoidal",
                norm="layernorm", norm_eps=1e-6, norm_position="post", mlp="relu", use_bias=True,
                tie_embeddings=True, embed_scale=True, dropout_rate=0.1, pad_token_id=0)

PRESETS: dict[str, dict[str, Any]] = {
    # decoder-only
    "gpt2-small": dict(_GPT2, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "gpt2-medium": dict(_GPT2, d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    "gpt2-large": dict(_GPT2, d_model=1280, num_layers=36, num_heads=20, d_ff=5120),
    "gpt-nano": dict(_GPT2, vocab_size=65, max_len=256, d_model=384, num_layers=6, num_heads=6,
                     d_ff=1536, pad_token_id=0),
    "llama-tiny": dict(_LLAMA, vocab_size=32000, d_model=256, num_layers=4, num_heads=8, num_kv_heads=2,
                       d_ff=688, max_len=1024),
    "llama-1b": dict(_LLAMA, vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                     d_ff=8192, max_len=8192, rope_theta=500000.0, tie_embeddings=True),
    # encoder-only
    "bert-base": dict(_BERT, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "bert-large": dict(_BERT, d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    # encoder-decoder
    "t5-small": dict(_T5, d_model=512, num_layers=6, num_heads=8, d_ff=2048),
    "t5-base": dict(_T5, d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "t5-v1_1-small": dict(_T5_V1_1, d_model=512, num_layers=8, num_heads=6, d_ff=1024),
    "t5-v1_1-base": dict(_T5_V1_1, d_model=768, num_layers=12, num_heads=12, d_ff=2048),
    "bart-base": dict(_BART, d_model=768, num_layers=6, num_heads=12, d_ff=3072),
    "bart-large": dict(_BART, d_model=1024, num_layers=12, num_heads=16, d_ff=4096),
    "transformer-base": dict(_VASWANI, d_model=512, num_layers=6, num_heads=8, d_ff=2048),
    "transformer-big": dict(_VASWANI, d_model=1024, num_layers=6, num_heads=16, d_ff=4096, dropout_rate=0.3),
    # tiny presets of each family, for tests and quick runs
    "gpt2-tiny": dict(_GPT2, vocab_size=256, max_len=128, d_model=64, num_layers=2, num_heads=4, d_ff=256,
                      pad_token_id=0),
    "llama-test": dict(_LLAMA, vocab_size=256, max_len=128, d_model=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, d_ff=128),
    "bert-tiny": dict(_BERT, vocab_size=256, max_len=128, d_model=64, num_layers=2, num_heads=4, d_ff=256,
                      dropout_rate=0.0, attention_dropout_rate=0.0),
    "t5-tiny": dict(_T5, vocab_size=256, d_model=64, num_layers=2, num_heads=4, head_dim=16, d_ff=128,
                    relative_buckets=8, relative_max_distance=16, dropout_rate=0.0),
    "t5-v1_1-tiny": dict(_T5_V1_1, vocab_size=256, d_model=64, num_layers=2, num_heads=4, head_dim=16,
                         d_ff=128, relative_buckets=8, relative_max_distance=16, dropout_rate=0.0),
    "bart-tiny": dict(_BART, vocab_size=256, max_len=128, d_model=64, num_layers=2, num_heads=4, d_ff=128,
                      dropout_rate=0.0),
    "transformer-tiny": dict(_VASWANI, vocab_size=256, max_len=128, d_model=64, num_layers=2, num_heads=4,
                             d_ff=128, dropout_rate=0.0),
}


def list_configs() -> list[str]:
  """Returns the sorted names of all presets."""
  return sorted(PRESETS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """Returns the validated ModelConfig of preset `name` with `overrides` applied."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; available presets: {list_configs()}")
  fields = dict(PRESETS[name])
  config = ModelConfig(**fields)
  return config.replace(**overrides) if overrides else config
