"""The one model config: a frozen, validated dataclass that every model builder reads.

Variants are configs: the family, position scheme, norm kind and placement, MLP type, GQA and
tied embeddings are fields checked here, in one place. A bad value (of the wrong type too) raises
tfm.errors.UserError (a ValueError) naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any, Optional

from tfm.errors import UserError

FAMILIES = ("encoder", "decoder", "encoder_decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "relative", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("relu", "gelu", "gelu_tanh", "silu", "geglu", "geglu_tanh", "swiglu", "reglu")
GATED_MLPS = ("geglu", "geglu_tanh", "swiglu", "reglu")
POOLINGS = ("first", "last", "mean", "max")
CLASSIFIER_SOURCES = ("encoder", "decoder")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "pallas", "reference")
INITS = ("normal", "t5")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """All hyper-parameters of a tfm model (all three families)."""

  family: str = "decoder"              # encoder | decoder | encoder_decoder
  vocab_size: int = 256
  d_model: int = 128                   # model width
  num_layers: int = 2                  # layers (encoder layers for encoder_decoder)
  num_decoder_layers: Optional[int] = None  # decoder layers of encoder_decoder (None: num_layers)
  num_heads: int = 4
  num_kv_heads: Optional[int] = None   # GQA / MQA key-value heads (None: num_heads)
  head_dim: Optional[int] = None       # None: d_model // num_heads
  d_ff: int = 512                      # MLP hidden width
  max_len: int = 512                   # longest sequence for learned / sinusoidal positions
  # positions
  position: str = "learned"            # learned | sinusoidal | rope | relative | alibi | none
  position_offset: int = 0             # learned positions start at this row (BART: 2)
  rope_theta: float = 10000.0
  relative_buckets: int = 32           # T5 relative-position buckets
  relative_max_distance: int = 128
  # normalisation
  norm: str = "layernorm"              # layernorm | rmsnorm
  norm_eps: float = 1e-5
  norm_position: str = "pre"           # pre (GPT-2, T5, Llama) | post (BERT, BART, Vaswani)
  embed_norm: bool = False             # norm after the embeddings (BERT, BART)
  final_norm: Optional[bool] = None    # norm after the last layer (None: True for pre-norm)
  # blocks
  mlp: str = "gelu"                    # relu | gelu | gelu_tanh | silu | geglu | geglu_tanh | swiglu | reglu
  use_bias: bool = True                # biases in attention and MLP projections
  qkv_bias: Optional[bool] = None      # biases on q, k, v only (Qwen2); None: use_bias
  norm_bias: Optional[bool] = None     # LayerNorm bias; None: True for layernorm
  scale_attention: bool = True         # multiply q·k by head_dim**-0.5 (T5: False)
  sliding_window: Optional[int] = None  # decoder: attend to the last `sliding_window` positions (Mistral); encoder: to |q - k| < sliding_window
  # embeddings and output
  type_vocab_size: int = 0             # token-type rows (BERT: 2); 0 = none
  embed_scale: bool = False            # multiply token embeddings by sqrt(d_model) (Vaswani)
  tie_embeddings: bool = True          # LM head shares the token embedding
  scale_tied_logits: bool = False      # multiply hidden by d_model**-0.5 before a tied head (T5)
  lm_head: bool = True                 # return LM / MLM logits (False: final hidden states)
  lm_transform: bool = False           # dense + act + norm before the MLM output (BERT, RoBERTa)
  lm_bias: bool = False                # bias on the output logits (BERT, BART)
  pad_token_id: int = 0
  decoder_start_token_id: int = 0      # first decoder input of encoder_decoder models
  # classification
  num_labels: Optional[int] = None     # set: the model returns [batch, num_labels] logits
  pooler: bool = False                 # BERT pooler: dense + tanh on the pooled token ([CLS] by default)
  classifier_pooling: Optional[str] = None  # first | last | mean | max (None: family default); read by the pooler
  classifier_source: str = "encoder"   # encoder_decoder: pool the encoder or the decoder output
  classifier_hidden: bool = False      # dense + tanh before the label projection (RoBERTa, BART)
  classifier_bias: bool = True
  # regularisation and numerics
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: str = "float32"               # compute dtype
  param_dtype: str = "float32"
  attention_impl: str = "auto"         # auto | xla | blockwise | cudnn | pallas | reference (tfm.attention.dot_product_attention)
  scan_layers: bool = False            # lax.scan over layers (compile time flat in depth)
  remat: str = "none"                  # none | full | dots
  init: str = "normal"                 # normal | t5 (see `kernel_std`)
  init_std: float = 0.02               # std of every weight when init="normal"

  def __post_init__(self):
    validate(self)

  # Derived values -----------------------------------------------------------------------------
  @property
  def kv_heads(self) -> int:
    """Returns the number of key/value heads."""
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    """Returns the per-head feature size."""
    return self.head_dim or self.d_model // self.num_heads

  @property
  def decoder_layers(self) -> int:
    """Returns the number of decoder layers of an encoder_decoder model."""
    return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

  @property
  def has_final_norm(self) -> bool:
    """Returns whether a norm follows the last layer."""
    return self.norm_position == "pre" if self.final_norm is None else self.final_norm

  @property
  def gated_mlp(self) -> bool:
    """Returns whether the MLP is a gated linear unit."""
    return self.mlp in GATED_MLPS

  @property
  def pooling(self) -> str:
    """Returns the classification pooling of this family."""
    if self.classifier_pooling is not None:
      return self.classifier_pooling
    return {"encoder": "first", "decoder": "last", "encoder_decoder": "mean"}[self.family]

  @property
  def kernel_std(self) -> Optional[float]:
    """Returns the std of dense kernels: init_std ("normal"), or None = fan_in ** -0.5 ("t5").

    init="t5" is Mesh TensorFlow's / HF T5's scheme: kernels N(0, 1/fan_in) (the query also times
    head_dim ** -0.5 when scale_attention is False), token embedding and untied LM head N(0, 1),
    relative-position bias N(0, 1/d_model). Its logits are scaled by d_model ** -0.5, so T5 with
    "normal" 0.02 weights starts with vanishing logits and learns slowly.
    """
    return self.init_std if self.init == "normal" else None

  @property
  def embed_std(self) -> float:
    """Returns the std of the token embedding (and of an untied LM head)."""
    return self.init_std if self.init == "normal" else 1.0

  @property
  def relative_bias_std(self) -> float:
    """Returns the std of T5's relative-position bias table."""
    return self.init_std if self.init == "normal" else self.d_model ** -0.5

  def replace(self, **overrides: Any) -> "ModelConfig":
    """Returns a validated copy with fields replaced; unknown fields raise ValueError."""
    names = [f.name for f in dataclasses.fields(self)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
      near = difflib.get_close_matches(unknown[0], names, 1, 0.75)
      hint = f"did you mean {near[0]!r}? " if near else ""
      raise UserError(f"unknown model config field(s) {unknown}; {hint}known fields: {sorted(names)}")
    return dataclasses.replace(self, **overrides)

  def to_dict(self) -> dict:
    """Returns the config as a plain dict (JSON-serialisable)."""
    return dataclasses.asdict(self)


_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "True or False"}


def _type_ok(kind: str, value) -> bool:
  """Returns whether `value` is of the annotated `kind` (int, float, str or bool; an int is a float too)."""
  if kind == "bool":
    return type(value).__name__ in ("bool", "bool_")
  if kind == "int":
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind == "float":
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  return isinstance(value, str) if kind == "str" else True


def _check_types(c: ModelConfig) -> None:
  """Raises UserError naming the first field of `c` whose value is not of its annotated type."""
  for f in dataclasses.fields(c):
    kind, optional = str(f.type), False
    if kind.startswith("Optional["):
      kind, optional = kind[len("Optional["):-1], True
    value = getattr(c, f.name)
    if (value is None and optional) or _type_ok(kind, value):
      continue
    words = _TYPE_WORDS.get(kind, kind) + (" or None" if optional else "")
    raise UserError(f"model config field {f.name!r} must be {words}; got {value!r}")


def _choice(name, value, allowed):
  if value not in allowed:
    raise UserError(f"model config field {name!r} must be one of {list(allowed)}; got {value!r}")


def _positive(name, value, allow_none=False, allow_zero=False):
  if value is None and allow_none:
    return
  ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
  if not ok:
    raise UserError(f"model config field {name!r} must be a {'non-negative' if allow_zero else 'positive'} "
                     f"integer{' or None' if allow_none else ''}; got {value!r}")


def validate(c: ModelConfig) -> None:
  """Raises UserError (a ValueError) naming the field if any value of `c` is not allowed; returns None."""
  _check_types(c)
  _choice("family", c.family, FAMILIES)
  _choice("position", c.position, POSITIONS)
  _choice("norm", c.norm, NORMS)
  _choice("norm_position", c.norm_position, NORM_POSITIONS)
  _choice("mlp", c.mlp, MLPS)
  _choice("classifier_source", c.classifier_source, CLASSIFIER_SOURCES)
  _choice("dtype", c.dtype, DTYPES)
  _choice("param_dtype", c.param_dtype, DTYPES)
  _choice("remat", c.remat, REMAT)
  _choice("attention_impl", c.attention_impl, ATTENTION_IMPLEMENTATIONS)
  _choice("init", c.init, INITS)
  if c.classifier_pooling is not None:
    _choice("classifier_pooling", c.classifier_pooling, POOLINGS)
  for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len",
               "relative_buckets", "relative_max_distance"):
    _positive(name, getattr(c, name))
  for name in ("num_decoder_layers", "num_kv_heads", "head_dim", "num_labels", "sliding_window"):
    _positive(name, getattr(c, name), allow_none=True)
  for name in ("type_vocab_size", "position_offset", "pad_token_id", "decoder_start_token_id"):
    _positive(name, getattr(c, name), allow_zero=True)
  if c.head_dim is None and c.d_model % c.num_heads:
    raise UserError(f"model config field 'num_heads' ({c.num_heads}) must divide 'd_model' "
                     f"({c.d_model}), or set 'head_dim' explicitly")
  if c.num_heads % c.kv_heads:
    raise UserError(f"model config field 'num_kv_heads' ({c.kv_heads}) must divide 'num_heads' "
                     f"({c.num_heads})")
  if c.position == "rope" and c.dim_per_head % 2:
    raise UserError(f"model config field 'head_dim' must be even for position='rope'; got {c.dim_per_head}")
  for name in ("dropout_rate", "attention_dropout_rate"):
    rate = getattr(c, name)
    if not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
      raise UserError(f"model config field {name!r} must be in [0, 1); got {rate!r}")
  if not c.norm_eps > 0:
    raise UserError(f"model config field 'norm_eps' must be > 0; got {c.norm_eps!r}")
  if c.sliding_window is not None and c.family == "encoder_decoder":
    raise UserError("model config field 'sliding_window' is supported for encoder and decoder families only")
