"""Per-family conversion tables: parameter-name rules and config.json <-> ModelConfig mappings.

Each `Family` holds the name rules of one Hugging Face model type (base-model names without the
base prefix, head names absolute), the regexes of known non-parameters, and two config functions:
`to_tfm(hf_config, head, tied, has)` -> ModelConfig fields and `to_hf(config, head)` -> config.json
fields. `ARCHITECTURES` maps each supported HF class name to (family, head), where head is one of
"lm" (LM / MLM / seq2seq logits), "base" (hidden states), "cls" (sequence classification) or
"encoder" (the encoder stack of an encoder-decoder, as T5EncoderModel).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from tfm.config import ModelConfig
from tfm.hf.rules import CONV1D, CONV1D_OUT, FLAT, LINEAR, LINEAR_OUT, ROW, head, rule

# HF activation names <-> tfm MLP names.
HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
          "silu": "silu", "swish": "silu"}
TFM_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
GATED = {"gelu": "geglu", "gelu_tanh": "geglu_tanh", "silu": "swiglu", "relu": "reglu"}
UNGATED = {v: k for k, v in GATED.items()}


def _act(name: str, field: str, gated: bool = False) -> str:
  if name not in HF_ACT:
    raise ValueError(f"config.json field {field!r} = {name!r} is not supported; supported: {sorted(HF_ACT)}")
  return GATED[HF_ACT[name]] if gated else HF_ACT[name]


def _hf_act(mlp: str, gated: bool = False) -> str:
  base = UNGATED.get(mlp) if gated else mlp
  if base not in TFM_ACT or (mlp in UNGATED) != gated:
    raise ValueError(f"tfm config field 'mlp' = {mlp!r} has no Hugging Face equivalent in this architecture")
  return TFM_ACT[base]


def _require(hf: dict, field: str, allowed, default=None):
  value = hf.get(field, default)
  if value not in allowed:
    raise ValueError(f"config.json field {field!r} = {value!r} is not supported by tfm; supported: {list(allowed)}")
  return value


def _pad(hf: dict, default: int = 0) -> int:
  pad = hf.get("pad_token_id")
  return pad if isinstance(pad, int) and pad >= 0 else default


def _labels(hf: dict) -> int:
  if "id2label" in hf:
    return len(hf["id2label"])
  return int(hf.get("num_labels", 2))


def _label_fields(c: ModelConfig) -> dict:
  n = c.num_labels
  return {"id2label": {str(i): f"LABEL_{i}" for i in range(n)}, "label2id": {f"LABEL_{i}": i for i in range(n)}}


def _with_labels(c: ModelConfig, fields: dict) -> dict:
  """Returns config.json fields with id2label / label2id added for a classifier."""
  return {**fields, **_label_fields(c)} if c.num_labels else fields


@dataclasses.dataclass(frozen=True)
class Family:
  """One Hugging Face model type: name rules, non-parameters, base prefix and config mappings."""

  name: str
  prefix: str                    # base-model prefix in head architectures, e.g. "transformer."
  rules: tuple
  to_tfm: Callable               # (hf_config, head, tied, has) -> ModelConfig fields
  to_hf: Callable                # (config, head) -> config.json fields
  embed_key: str                 # base name of the token embedding (for tie detection)
  lm_key: str                    # head name of the output projection
  ignore: tuple = ()             # regexes of known non-parameters (buffers)
  head_keys: tuple = ()          # regexes of head tensors (ignored when loading the base model)
  unused: dict = dataclasses.field(default_factory=dict)  # head -> regexes of tensors that head does not use


# ------------------------------------------------------------------------------------------------
# GPT-2
# ------------------------------------------------------------------------------------------------
_G = "decoder/layers/layer_{i}"
GPT2_RULES = (
    rule("wte.weight", "token_embed/embedding"),
    rule("wpe.weight", "decoder/embed/position_embed/embedding"),
    rule("h.{i}.ln_1.weight", f"{_G}/attention_norm/scale"),
    rule("h.{i}.ln_1.bias", f"{_G}/attention_norm/bias"),
    rule("h.{i}.attn.c_attn.weight", tuple(f"{_G}/self_attention/{n}/kernel" for n in ("query", "key", "value")), CONV1D),
    rule("h.{i}.attn.c_attn.bias", tuple(f"{_G}/self_attention/{n}/bias" for n in ("query", "key", "value")), FLAT),
    rule("h.{i}.attn.c_proj.weight", f"{_G}/self_attention/out/kernel", CONV1D_OUT),
    rule("h.{i}.attn.c_proj.bias", f"{_G}/self_attention/out/bias", FLAT),
    rule("h.{i}.ln_2.weight", f"{_G}/mlp_norm/scale"),
    rule("h.{i}.ln_2.bias", f"{_G}/mlp_norm/bias"),
    rule("h.{i}.mlp.c_fc.weight", f"{_G}/mlp/wi/kernel", CONV1D),
    rule("h.{i}.mlp.c_fc.bias", f"{_G}/mlp/wi/bias", FLAT),
    rule("h.{i}.mlp.c_proj.weight", f"{_G}/mlp/wo/kernel", CONV1D),
    rule("h.{i}.mlp.c_proj.bias", f"{_G}/mlp/wo/bias", FLAT),
    rule("ln_f.weight", "decoder/layers/final_norm/scale"),
    rule("ln_f.bias", "decoder/layers/final_norm/bias"),
    head("lm_head.weight", "token_embed/embedding", alias=True),
    head("lm_head.weight", "lm_head/output/kernel", LINEAR),
    head("score.weight", "classifier/out/kernel", LINEAR),
)


def _decoder_head(hf: dict, head_kind: str) -> dict:
  """Returns the head fields of a decoder: LM, hidden states, or a score on the last real token."""
  return dict(lm_head=head_kind == "lm", num_labels=_labels(hf) if head_kind == "cls" else None,
              classifier_pooling="last", classifier_bias=False, classifier_hidden=False)


def _gpt2_to_tfm(hf, head_kind, tied, has):
  for field, ok in (("scale_attn_weights", (True, None)), ("scale_attn_by_inverse_layer_idx", (False, None)),
                    ("add_cross_attention", (False, None))):
    _require(hf, field, ok)
  eos = hf.get("eos_token_id")
  return dict(
      family="decoder", vocab_size=hf["vocab_size"], d_model=hf["n_embd"], num_layers=hf["n_layer"],
      num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"], max_len=hf["n_positions"],
      position="learned", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_position="pre",
      mlp=_act(hf.get("activation_function", "gelu_new"), "activation_function"), use_bias=True,
      tie_embeddings=tied, **_decoder_head(hf, head_kind),
      pad_token_id=_pad(hf, eos if isinstance(eos, int) and eos < hf["vocab_size"] else 0),
      dropout_rate=hf.get("resid_pdrop", 0.1), attention_dropout_rate=hf.get("attn_pdrop", 0.1))


def _gpt2_to_hf(c, head_kind):
  return _with_labels(c, dict(
      model_type="gpt2", vocab_size=c.vocab_size, n_embd=c.d_model, n_layer=c.num_layers, n_head=c.num_heads,
      n_inner=c.d_ff, n_positions=c.max_len, layer_norm_epsilon=c.norm_eps, activation_function=_hf_act(c.mlp),
      tie_word_embeddings=c.tie_embeddings, pad_token_id=c.pad_token_id, bos_token_id=c.pad_token_id,
      eos_token_id=c.pad_token_id, resid_pdrop=c.dropout_rate, embd_pdrop=c.dropout_rate,
      attn_pdrop=c.attention_dropout_rate, scale_attn_weights=True))


GPT2 = Family("gpt2", "transformer.", GPT2_RULES, _gpt2_to_tfm, _gpt2_to_hf, "wte.weight", "lm_head.weight",
              ignore=(r"(^|\.)attn\.bias$", r"(^|\.)attn\.masked_bias$"), head_keys=(r"^lm_head\.", r"^score\."))


# ------------------------------------------------------------------------------------------------
# BERT and RoBERTa
# ------------------------------------------------------------------------------------------------
_E = "encoder/layers/layer_{i}"


def _linear(hf: str, tfm: str, transform=LINEAR, make=rule) -> tuple:
  """Returns the rules of a torch nn.Linear (weight and bias)."""
  return (make(f"{hf}.weight", f"{tfm}/kernel", transform), make(f"{hf}.bias", f"{tfm}/bias", FLAT))


def _norm(hf: str, tfm: str, make=rule, legacy: bool = False) -> tuple:
  """Returns the rules of a LayerNorm / RMSNorm (scale and, when the tfm tree has one, bias).

  `legacy`: also read the TF-era names gamma / beta (original BERT checkpoints), never written.
  """
  out = (make(f"{hf}.weight", f"{tfm}/scale"), make(f"{hf}.bias", f"{tfm}/bias"))
  if legacy:
    out += (make(f"{hf}.gamma", f"{tfm}/scale", alias=True), make(f"{hf}.beta", f"{tfm}/bias", alias=True))
  return out


BERT_BASE_RULES = (
    rule("embeddings.word_embeddings.weight", "token_embed/embedding"),
    rule("embeddings.position_embeddings.weight", "encoder/embed/position_embed/embedding"),
    rule("embeddings.token_type_embeddings.weight", "encoder/embed/token_type_embed/embedding"),
    *_norm("embeddings.LayerNorm", "encoder/embed/embed_norm", legacy=True),
    *_linear("encoder.layer.{i}.attention.self.query", f"{_E}/self_attention/query"),
    *_linear("encoder.layer.{i}.attention.self.key", f"{_E}/self_attention/key"),
    *_linear("encoder.layer.{i}.attention.self.value", f"{_E}/self_attention/value"),
    *_linear("encoder.layer.{i}.attention.output.dense", f"{_E}/self_attention/out", LINEAR_OUT),
    *_norm("encoder.layer.{i}.attention.output.LayerNorm", f"{_E}/attention_norm", legacy=True),
    *_linear("encoder.layer.{i}.intermediate.dense", f"{_E}/mlp/wi"),
    *_linear("encoder.layer.{i}.output.dense", f"{_E}/mlp/wo"),
    *_norm("encoder.layer.{i}.output.LayerNorm", f"{_E}/mlp_norm", legacy=True),
    *_linear("pooler.dense", "pooler/dense"),
)
BERT_RULES = BERT_BASE_RULES + (
    *_linear("cls.predictions.transform.dense", "lm_head/transform", make=head),
    *_norm("cls.predictions.transform.LayerNorm", "lm_head/transform_norm", make=head, legacy=True),
    head("cls.predictions.bias", "lm_head/bias", FLAT),
    head("cls.predictions.decoder.bias", "lm_head/bias", FLAT, alias=True),
    head("cls.predictions.decoder.weight", "token_embed/embedding", alias=True),
    head("cls.predictions.decoder.weight", "lm_head/output/kernel", LINEAR),
    *_linear("classifier", "classifier/out", make=head),
)
ROBERTA_RULES = BERT_BASE_RULES + (
    *_linear("lm_head.dense", "lm_head/transform", make=head),
    *_norm("lm_head.layer_norm", "lm_head/transform_norm", make=head),
    head("lm_head.bias", "lm_head/bias", FLAT),
    head("lm_head.decoder.bias", "lm_head/bias", FLAT, alias=True),
    head("lm_head.decoder.weight", "token_embed/embedding", alias=True),
    head("lm_head.decoder.weight", "lm_head/output/kernel", LINEAR),
    *_linear("classifier.dense", "classifier/dense", make=head),
    *_linear("classifier.out_proj", "classifier/out", make=head),
)


def _bert_to_tfm(hf, head_kind, tied, has, roberta=False):
  _require(hf, "position_embedding_type", ("absolute", None))
  _require(hf, "is_decoder", (False, None))
  _require(hf, "add_cross_attention", (False, None))
  pad = _pad(hf, 1 if roberta else 0)
  offset = pad + 1 if roberta else 0  # RoBERTa numbers positions from padding_idx + 1
  act = _act(hf.get("hidden_act", "gelu"), "hidden_act")
  if roberta and head_kind == "lm" and act != "gelu":
    raise ValueError(f"RoBERTa's MLM head always uses exact gelu; config.json hidden_act={hf['hidden_act']!r} "
                     f"would differ in tfm")
  return dict(
      family="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
      max_len=hf["max_position_embeddings"] - offset, position="learned", position_offset=offset,
      type_vocab_size=hf.get("type_vocab_size", 2), norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12),
      norm_position="post", embed_norm=True, mlp=act, use_bias=True, tie_embeddings=tied,
      lm_head=head_kind == "lm", lm_transform=True, lm_bias=True, pad_token_id=pad,
      num_labels=_labels(hf) if head_kind == "cls" else None,
      pooler=has("pooler.dense.weight") and not (roberta and head_kind == "cls"),
      classifier_hidden=roberta, classifier_pooling="first",
      dropout_rate=hf.get("hidden_dropout_prob", 0.1), attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1))


def _bert_to_hf(c, head_kind, roberta=False):
  out = dict(
      model_type="roberta" if roberta else "bert", vocab_size=c.vocab_size, hidden_size=c.d_model,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, intermediate_size=c.d_ff,
      max_position_embeddings=c.max_len + c.position_offset, type_vocab_size=c.type_vocab_size,
      layer_norm_eps=c.norm_eps, hidden_act=_hf_act(c.mlp), pad_token_id=c.pad_token_id,
      tie_word_embeddings=c.tie_embeddings, hidden_dropout_prob=c.dropout_rate,
      attention_probs_dropout_prob=c.attention_dropout_rate, position_embedding_type="absolute")
  if roberta:
    out.update(bos_token_id=0, eos_token_id=2)
  if c.num_labels:
    out.update(_label_fields(c))
  return out


_BERT_HEADS = (r"^cls\.", r"^classifier\.")
BERT = Family("bert", "bert.", BERT_RULES, _bert_to_tfm, _bert_to_hf, "embeddings.word_embeddings.weight",
              "cls.predictions.decoder.weight", ignore=(r"position_ids$", r"embeddings\.token_type_ids$"),
              head_keys=_BERT_HEADS,
              # Pretraining checkpoints (BertForPreTraining) also hold the pooler and the NSP head.
              unused={"lm": (r"^(bert\.)?pooler\.", r"^cls\.seq_relationship\.")})
ROBERTA = Family("roberta", "roberta.", ROBERTA_RULES, lambda *a: _bert_to_tfm(*a, roberta=True),
                 lambda *a: _bert_to_hf(*a, roberta=True), "embeddings.word_embeddings.weight",
                 "lm_head.decoder.weight", ignore=(r"position_ids$", r"embeddings\.token_type_ids$"),
                 head_keys=(r"^lm_head\.", r"^classifier\."),
                 unused={"lm": (r"^(roberta\.)?pooler\.",), "cls": (r"^(roberta\.)?pooler\.",)})


# ------------------------------------------------------------------------------------------------
# T5 (v1.0 and v1.1)
# ------------------------------------------------------------------------------------------------
def _t5_attention(hf: str, tfm: str) -> tuple:
  names = (("q", "query", LINEAR), ("k", "key", LINEAR), ("v", "value", LINEAR), ("o", "out", LINEAR_OUT))
  return tuple(rule(f"{hf}.{a}.weight", f"{tfm}/{b}/kernel", t) for a, b, t in names)


def _t5_mlp(hf: str, tfm: str) -> tuple:
  return tuple(rule(f"{hf}.{n}.weight", f"{tfm}/{n}/kernel", LINEAR) for n in ("wi", "wi_0", "wi_1", "wo"))


T5_RULES = (
    rule("shared.weight", "token_embed/embedding"),
    rule("encoder.embed_tokens.weight", "token_embed/embedding", alias=True),
    rule("decoder.embed_tokens.weight", "token_embed/embedding", alias=True),
    rule("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder/relative_bias/rel_embedding"),
    rule("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "decoder/relative_bias/rel_embedding"),
    *_t5_attention("encoder.block.{i}.layer.0.SelfAttention", "encoder/layers/layer_{i}/self_attention"),
    rule("encoder.block.{i}.layer.0.layer_norm.weight", "encoder/layers/layer_{i}/attention_norm/scale"),
    *_t5_mlp("encoder.block.{i}.layer.1.DenseReluDense", "encoder/layers/layer_{i}/mlp"),
    rule("encoder.block.{i}.layer.1.layer_norm.weight", "encoder/layers/layer_{i}/mlp_norm/scale"),
    rule("encoder.final_layer_norm.weight", "encoder/layers/final_norm/scale"),
    *_t5_attention("decoder.block.{i}.layer.0.SelfAttention", "decoder/layers/layer_{i}/self_attention"),
    rule("decoder.block.{i}.layer.0.layer_norm.weight", "decoder/layers/layer_{i}/attention_norm/scale"),
    *_t5_attention("decoder.block.{i}.layer.1.EncDecAttention", "decoder/layers/layer_{i}/cross_attention"),
    rule("decoder.block.{i}.layer.1.layer_norm.weight", "decoder/layers/layer_{i}/cross_attention_norm/scale"),
    *_t5_mlp("decoder.block.{i}.layer.2.DenseReluDense", "decoder/layers/layer_{i}/mlp"),
    rule("decoder.block.{i}.layer.2.layer_norm.weight", "decoder/layers/layer_{i}/mlp_norm/scale"),
    rule("decoder.final_layer_norm.weight", "decoder/layers/final_norm/scale"),
    head("lm_head.weight", "token_embed/embedding", alias=True),
    head("lm_head.weight", "lm_head/output/kernel", LINEAR),
)


def _t5_to_tfm(hf, head_kind, tied, has):
  ff = hf.get("feed_forward_proj", "relu")
  parts = ff.split("-")
  if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
    raise ValueError(f"config.json field 'feed_forward_proj' = {ff!r} is not supported")
  act = "gelu_new" if ff == "gated-gelu" else parts[-1]  # HF reads gated-gelu as gelu_new (tanh)
  # Original T5 scales the decoder output by d_model**-0.5 before the tied head; v1.1 does not.
  scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  if head_kind == "lm" and scale and not tied:
    raise ValueError("T5 checkpoint with scale_decoder_outputs=True and an untied lm_head is not supported "
                     "(tfm scales logits only for a tied head)")
  pad = _pad(hf, 0)
  start = hf.get("decoder_start_token_id")
  return dict(
      family="encoder" if head_kind == "encoder" else "encoder_decoder", vocab_size=hf["vocab_size"],
      d_model=hf["d_model"], head_dim=hf.get("d_kv", 64), d_ff=hf["d_ff"], num_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"], num_heads=hf["num_heads"],
      position="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rmsnorm",
      norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_position="pre",
      mlp=_act(act, "feed_forward_proj", gated=len(parts) == 2), use_bias=False, scale_attention=False,
      tie_embeddings=tied, scale_tied_logits=bool(scale), lm_head=head_kind == "lm", pad_token_id=pad,
      decoder_start_token_id=start if isinstance(start, int) else pad, dropout_rate=hf.get("dropout_rate", 0.1),
      attention_dropout_rate=hf.get("dropout_rate", 0.1), init="t5")


def _t5_to_hf(c, head_kind):
  act = _hf_act(c.mlp, c.gated_mlp)
  if c.gated_mlp and act == "gelu":
    raise ValueError("tfm config mlp='geglu' (exact gelu, gated) has no T5 equivalent: T5's 'gated-gelu' is "
                     "the tanh approximation (mlp='geglu_tanh')")
  ff = ("gated-gelu" if act == "gelu_new" else f"gated-{act}") if c.gated_mlp else act
  return dict(
      model_type="t5", vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.dim_per_head, d_ff=c.d_ff,
      num_layers=c.num_layers, num_decoder_layers=c.decoder_layers, num_heads=c.num_heads,
      relative_attention_num_buckets=c.relative_buckets, relative_attention_max_distance=c.relative_max_distance,
      layer_norm_epsilon=c.norm_eps, feed_forward_proj=ff, tie_word_embeddings=c.tie_embeddings,
      scale_decoder_outputs=bool(c.scale_tied_logits and c.tie_embeddings), pad_token_id=c.pad_token_id,
      eos_token_id=1, decoder_start_token_id=c.decoder_start_token_id, dropout_rate=c.dropout_rate,
      is_encoder_decoder=c.family == "encoder_decoder", use_cache=c.family == "encoder_decoder")


T5 = Family("t5", "", T5_RULES, _t5_to_tfm, _t5_to_hf, "shared.weight", "lm_head.weight",
            ignore=(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",),
            head_keys=(r"^lm_head\.",), unused={"encoder": (r"^decoder\.",)})


# ------------------------------------------------------------------------------------------------
# BART
# ------------------------------------------------------------------------------------------------
def _bart_attention(hf: str, tfm: str) -> tuple:
  names = (("q_proj", "query", LINEAR), ("k_proj", "key", LINEAR), ("v_proj", "value", LINEAR),
           ("out_proj", "out", LINEAR_OUT))
  return tuple(r for a, b, t in names for r in _linear(f"{hf}.{a}", f"{tfm}/{b}", t))


def _bart_stack(s: str) -> tuple:
  L = f"{s}/layers/layer_{{i}}"
  out = (
      rule(f"{s}.embed_tokens.weight", "token_embed/embedding", alias=True),
      rule(f"{s}.embed_positions.weight", f"{s}/embed/position_embed/embedding"),
      *_norm(f"{s}.layernorm_embedding", f"{s}/embed/embed_norm"),
      *_bart_attention(f"{s}.layers.{{i}}.self_attn", f"{L}/self_attention"),
      *_norm(f"{s}.layers.{{i}}.self_attn_layer_norm", f"{L}/attention_norm"),
      *_linear(f"{s}.layers.{{i}}.fc1", f"{L}/mlp/wi"),
      *_linear(f"{s}.layers.{{i}}.fc2", f"{L}/mlp/wo"),
      *_norm(f"{s}.layers.{{i}}.final_layer_norm", f"{L}/mlp_norm"),
      *_norm(f"{s}.layer_norm", f"{s}/layers/final_norm"),
  )
  if s == "decoder":
    out += (*_bart_attention(f"{s}.layers.{{i}}.encoder_attn", f"{L}/cross_attention"),
            *_norm(f"{s}.layers.{{i}}.encoder_attn_layer_norm", f"{L}/cross_attention_norm"))
  return out


BART_RULES = (
    rule("shared.weight", "token_embed/embedding"),
    *_bart_stack("encoder"),
    *_bart_stack("decoder"),
    head("final_logits_bias", "lm_head/bias", ROW),
    head("lm_head.weight", "token_embed/embedding", alias=True),
    head("lm_head.weight", "lm_head/output/kernel", LINEAR),
    *_linear("classification_head.dense", "classifier/dense", make=head),
    *_linear("classification_head.out_proj", "classifier/out", make=head),
)


def _bart_to_tfm(hf, head_kind, tied, has):
  for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
    if hf.get(a) != hf.get(b):
      raise ValueError(f"config.json fields {a!r} ({hf.get(a)}) and {b!r} ({hf.get(b)}) differ; tfm uses one value")
  pad = _pad(hf, 1)
  return dict(
      family="encoder_decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_layers=hf["encoder_layers"],
      num_decoder_layers=hf["decoder_layers"], num_heads=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"],
      max_len=hf["max_position_embeddings"], position="learned", position_offset=2, norm="layernorm",
      norm_eps=1e-5, norm_position="post", embed_norm=True, embed_scale=bool(hf.get("scale_embedding", False)),
      final_norm=has("encoder.layer_norm.weight"),
      mlp=_act(hf.get("activation_function", "gelu"), "activation_function"), use_bias=True,
      tie_embeddings=tied, lm_head=head_kind == "lm", lm_bias=True, pad_token_id=pad,
      decoder_start_token_id=hf.get("decoder_start_token_id", 2),
      num_labels=_labels(hf) if head_kind == "cls" else None, classifier_source="decoder",
      classifier_pooling="last", classifier_hidden=True,
      dropout_rate=hf.get("dropout", 0.1), attention_dropout_rate=hf.get("attention_dropout", 0.0))


def _bart_to_hf(c, head_kind):
  out = dict(
      model_type="bart", vocab_size=c.vocab_size, d_model=c.d_model, encoder_layers=c.num_layers,
      decoder_layers=c.decoder_layers, encoder_attention_heads=c.num_heads, decoder_attention_heads=c.num_heads,
      encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff, max_position_embeddings=c.max_len,
      scale_embedding=c.embed_scale, activation_function=_hf_act(c.mlp), tie_word_embeddings=c.tie_embeddings,
      pad_token_id=c.pad_token_id, bos_token_id=0, eos_token_id=2, decoder_start_token_id=c.decoder_start_token_id,
      forced_eos_token_id=2, dropout=c.dropout_rate, attention_dropout=c.attention_dropout_rate,
      is_encoder_decoder=True)
  if c.num_labels:
    out.update(_label_fields(c))
  return out


BART = Family("bart", "model.", BART_RULES, _bart_to_tfm, _bart_to_hf, "shared.weight", "lm_head.weight",
              head_keys=(r"^lm_head\.", r"^final_logits_bias$", r"^classification_head\."))


# ------------------------------------------------------------------------------------------------
# Llama, Mistral, Qwen2 (one table; biases and sliding windows differ by config)
# ------------------------------------------------------------------------------------------------
_L = "decoder/layers/layer_{i}"
LLAMA_RULES = (
    rule("embed_tokens.weight", "token_embed/embedding"),
    *_linear("layers.{i}.self_attn.q_proj", f"{_L}/self_attention/query"),
    *_linear("layers.{i}.self_attn.k_proj", f"{_L}/self_attention/key"),
    *_linear("layers.{i}.self_attn.v_proj", f"{_L}/self_attention/value"),
    *_linear("layers.{i}.self_attn.o_proj", f"{_L}/self_attention/out", LINEAR_OUT),
    *_linear("layers.{i}.mlp.gate_proj", f"{_L}/mlp/wi_0"),
    *_linear("layers.{i}.mlp.up_proj", f"{_L}/mlp/wi_1"),
    *_linear("layers.{i}.mlp.down_proj", f"{_L}/mlp/wo"),
    rule("layers.{i}.input_layernorm.weight", f"{_L}/attention_norm/scale"),
    rule("layers.{i}.post_attention_layernorm.weight", f"{_L}/mlp_norm/scale"),
    rule("norm.weight", "decoder/layers/final_norm/scale"),
    head("lm_head.weight", "token_embed/embedding", alias=True),
    head("lm_head.weight", "lm_head/output/kernel", LINEAR),
    head("score.weight", "classifier/out/kernel", LINEAR),
)


def _rope(hf: dict) -> float:
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if kind != "default":
    raise ValueError(f"config.json rope scaling type {kind!r} is not supported by tfm; supported: ['default']")
  return float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _llama_to_tfm(hf, head_kind, tied, has, kind="llama"):
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  window = None
  if kind == "llama":
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
      raise ValueError(f"config.json attention_bias={attn_bias} with mlp_bias={mlp_bias} is not supported: tfm's "
                       f"use_bias covers the attention output and the MLP together")
    use_bias, qkv_bias = attn_bias, None
  elif kind == "qwen2":
    use_bias, qkv_bias = False, True  # Qwen2: q, k, v biases; none on o_proj or the MLP
    layer_types = set(hf.get("layer_types") or ["full_attention"])
    if hf.get("use_sliding_window") or layer_types != {"full_attention"}:
      raise ValueError("Qwen2 checkpoints with use_sliding_window=True (per-layer windows) are not supported")
  else:  # mistral
    use_bias, qkv_bias = False, None
    window = hf.get("sliding_window")
  return dict(
      family="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=None if head_dim * heads == hf["hidden_size"] else head_dim, d_ff=hf["intermediate_size"],
      max_len=hf.get("max_position_embeddings", 2048), position="rope", rope_theta=_rope(hf), norm="rmsnorm",
      norm_eps=hf.get("rms_norm_eps", 1e-6), norm_position="pre",
      mlp=_act(hf.get("hidden_act", "silu"), "hidden_act", gated=True), use_bias=use_bias, qkv_bias=qkv_bias,
      sliding_window=window, tie_embeddings=tied, **_decoder_head(hf, head_kind), pad_token_id=_pad(hf, 0),
      dropout_rate=0.0, attention_dropout_rate=hf.get("attention_dropout", 0.0))


def _llama_to_hf(c, head_kind, kind="llama"):
  out = dict(
      model_type=kind, vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads, num_key_value_heads=c.kv_heads, head_dim=c.dim_per_head,
      intermediate_size=c.d_ff, max_position_embeddings=c.max_len, rope_theta=c.rope_theta,
      rms_norm_eps=c.norm_eps, hidden_act=_hf_act(c.mlp, gated=True), tie_word_embeddings=c.tie_embeddings,
      pad_token_id=c.pad_token_id, attention_dropout=c.attention_dropout_rate)
  if kind == "llama":
    out.update(attention_bias=c.use_bias, mlp_bias=c.use_bias)
  elif kind == "mistral":
    out.update(sliding_window=c.sliding_window)
  else:
    out.update(use_sliding_window=False, sliding_window=None)
  return _with_labels(c, out)


def _llama_family(kind: str) -> Family:
  return Family(kind, "model.", LLAMA_RULES, lambda *a: _llama_to_tfm(*a, kind=kind),
                lambda *a: _llama_to_hf(*a, kind=kind), "embed_tokens.weight", "lm_head.weight",
                ignore=(r"rotary_emb\.inv_freq$",), head_keys=(r"^lm_head\.", r"^score\."))


LLAMA, MISTRAL, QWEN2 = _llama_family("llama"), _llama_family("mistral"), _llama_family("qwen2")

FAMILIES = {f.name: f for f in (GPT2, BERT, ROBERTA, T5, BART, LLAMA, MISTRAL, QWEN2)}

# HF class name -> (family, head)
ARCHITECTURES = {
    "GPT2LMHeadModel": ("gpt2", "lm"), "GPT2Model": ("gpt2", "base"),
    "GPT2ForSequenceClassification": ("gpt2", "cls"),
    "BertForMaskedLM": ("bert", "lm"), "BertModel": ("bert", "base"),
    "BertForSequenceClassification": ("bert", "cls"),
    "RobertaForMaskedLM": ("roberta", "lm"), "RobertaModel": ("roberta", "base"),
    "RobertaForSequenceClassification": ("roberta", "cls"),
    "T5ForConditionalGeneration": ("t5", "lm"), "T5Model": ("t5", "base"), "T5EncoderModel": ("t5", "encoder"),
    "BartForConditionalGeneration": ("bart", "lm"), "BartModel": ("bart", "base"),
    "BartForSequenceClassification": ("bart", "cls"),
    "LlamaForCausalLM": ("llama", "lm"), "LlamaModel": ("llama", "base"),
    "LlamaForSequenceClassification": ("llama", "cls"),
    "MistralForCausalLM": ("mistral", "lm"), "MistralModel": ("mistral", "base"),
    "MistralForSequenceClassification": ("mistral", "cls"),
    "Qwen2ForCausalLM": ("qwen2", "lm"), "Qwen2Model": ("qwen2", "base"),
    "Qwen2ForSequenceClassification": ("qwen2", "cls"),
}
# Base classes name their tensors without the family prefix.
BASE_CLASSES = {"GPT2Model", "BertModel", "RobertaModel", "T5Model", "T5EncoderModel", "BartModel", "LlamaModel",
                "MistralModel", "Qwen2Model"}


def resolve(architecture: Optional[str]) -> tuple[Family, str]:
  """Returns (family, head) for an HF architecture name, or raises ValueError listing the supported ones."""
  if architecture not in ARCHITECTURES:
    raise ValueError(f"unsupported architecture {architecture!r}; supported architectures: {sorted(ARCHITECTURES)}")
  name, head_kind = ARCHITECTURES[architecture]
  return FAMILIES[name], head_kind


def architecture_of(c: ModelConfig, family: Optional[str] = None) -> str:
  """Returns the HF architecture name that matches a tfm config (by its position scheme and heads)."""
  if family is None:
    if c.position not in ("learned", "relative", "rope"):
      raise ValueError(f"no Hugging Face architecture in tfm's tables uses position={c.position!r}; supported "
                       f"architectures: {sorted(ARCHITECTURES)}")
    if c.position == "relative":
      family = "t5"
    elif c.position == "rope":
      family = "qwen2" if (c.qkv_bias and not c.use_bias) else ("mistral" if c.sliding_window else "llama")
    elif c.family == "decoder":
      family = "gpt2"
    elif c.family == "encoder":
      family = "roberta" if c.position_offset else "bert"
    else:
      family = "bart"
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
  if c.sliding_window and (family != "mistral" or c.family != "decoder"):
    raise ValueError(f"tfm config field 'sliding_window' ({c.sliding_window}) has no equivalent in Hugging Face's "
                     f"{family!r} models of family {c.family!r}; only Mistral (a decoder) exports a window")
  head_kind = "cls" if c.num_labels else ("lm" if c.lm_head else "base")
  if family == "t5" and c.family == "encoder" and not c.num_labels:
    head_kind = "encoder"
  for arch, (fam, kind) in ARCHITECTURES.items():
    if fam == family and kind == head_kind:
      return arch
  raise ValueError(f"no supported Hugging Face architecture for family {family!r} with head {head_kind!r}; "
                   f"supported: {sorted(ARCHITECTURES)}")
