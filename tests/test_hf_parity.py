"""tfm models loaded from Hugging Face checkpoints give the PyTorch reference's logits (<= 1e-4, float32).

Reference models are built by `transformers` from small configs (random weights), saved to a
temporary directory, loaded with `tfm.from_pretrained`, and run on padded batches; outputs are
compared at real (unmasked) positions. Each case then goes back through `tfm.save_pretrained`
and `transformers.AutoModel*.from_pretrained` and must give the original logits again.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import tfm  # noqa: E402

TOL = 1e-4


def _gpt2(d, layers, heads, **kw):
  return transformers.GPT2Config(n_embd=d, n_layer=layers, n_head=heads, vocab_size=97, n_positions=40,
                                 bos_token_id=96, eos_token_id=96, **kw)


def _bert(d, layers, heads, roberta=False, **kw):
  cls = transformers.RobertaConfig if roberta else transformers.BertConfig
  return cls(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * d,
             vocab_size=97, max_position_embeddings=40 + (2 if roberta else 0), layer_norm_eps=1e-7, **kw)


def _t5(d, layers, heads, buckets, max_distance, v1_1=False, **kw):
  extra = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if v1_1 else {}
  return transformers.T5Config(d_model=d, d_kv=d // heads // 2 * 2 + 4, d_ff=2 * d, num_layers=layers,
                               num_decoder_layers=layers + 1, num_heads=heads, vocab_size=97,
                               relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance,
                               layer_norm_epsilon=1e-5, **extra, **kw)


def _bart(d, layers, heads, **kw):
  return transformers.BartConfig(d_model=d, encoder_layers=layers, decoder_layers=layers + 1,
                                 encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d,
                                 decoder_ffn_dim=2 * d, vocab_size=97, max_position_embeddings=40, **kw)


def _llama(cls, d, layers, heads, kv, **kw):
  return cls(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers, num_attention_heads=heads,
             num_key_value_heads=kv, vocab_size=97, rms_norm_eps=1e-5, **kw)


T = transformers
# id -> (model class, config factory, input kind)
CASES = {
    "gpt2-lm-32": (T.GPT2LMHeadModel, lambda: _gpt2(32, 2, 4), "plain"),
    "gpt2-lm-64": (T.GPT2LMHeadModel, lambda: _gpt2(64, 3, 8, layer_norm_epsilon=1e-6), "plain"),
    "gpt2-base-48": (T.GPT2Model, lambda: _gpt2(48, 2, 4), "plain"),
    # decoder classifiers score the last non-padding token (HF finds it from pad_token_id)
    "gpt2-cls-32": (T.GPT2ForSequenceClassification, lambda: _gpt2(32, 2, 4, num_labels=3, pad_token_id=0), "plain"),
    "bert-mlm-32": (T.BertForMaskedLM, lambda: _bert(32, 2, 4), "types"),
    "bert-mlm-64": (T.BertForMaskedLM, lambda: _bert(64, 3, 8, type_vocab_size=3), "types"),
    "bert-base-48": (T.BertModel, lambda: _bert(48, 2, 4), "types"),
    "bert-cls-32": (T.BertForSequenceClassification, lambda: _bert(32, 2, 4, num_labels=3), "types"),
    "bert-cls-64": (T.BertForSequenceClassification, lambda: _bert(64, 3, 8, num_labels=2), "types"),
    "roberta-mlm-32": (T.RobertaForMaskedLM, lambda: _bert(32, 2, 4, roberta=True, type_vocab_size=1), "plain"),
    "roberta-mlm-64": (T.RobertaForMaskedLM, lambda: _bert(64, 3, 8, roberta=True, type_vocab_size=1), "plain"),
    "roberta-cls-48": (T.RobertaForSequenceClassification,
                       lambda: _bert(48, 2, 4, roberta=True, type_vocab_size=1, num_labels=3), "plain"),
    "roberta-model-32": (T.RobertaModel, lambda: _bert(32, 2, 4, roberta=True, type_vocab_size=1), "plain"),
    "t5-v1_0-32": (T.T5ForConditionalGeneration, lambda: _t5(32, 2, 4, 8, 16), "seq2seq"),
    "t5-v1_0-64": (T.T5ForConditionalGeneration, lambda: _t5(64, 2, 8, 16, 20), "seq2seq"),
    "t5-v1_1-32": (T.T5ForConditionalGeneration, lambda: _t5(32, 2, 4, 8, 16, v1_1=True), "seq2seq"),
    "t5-v1_1-64": (T.T5ForConditionalGeneration, lambda: _t5(64, 2, 8, 16, 20, v1_1=True), "seq2seq"),
    # v1.1 checkpoints on the Hub keep a separate lm_head.weight (transformers 5 ties T5 unless both differ)
    "t5-v1_1-untied-32": (T.T5ForConditionalGeneration, lambda: _t5(32, 2, 4, 8, 16, v1_1=True), "seq2seq-untied"),
    "t5-encoder-32": (T.T5EncoderModel, lambda: _t5(32, 2, 4, 8, 16), "plain"),
    "t5-encoder-v1_1-48": (T.T5EncoderModel, lambda: _t5(48, 2, 4, 8, 16, v1_1=True), "plain"),
    "t5-model-32": (T.T5Model, lambda: _t5(32, 2, 4, 8, 16), "seq2seq"),
    "bart-lm-32": (T.BartForConditionalGeneration, lambda: _bart(32, 2, 4), "seq2seq"),
    "bart-lm-64": (T.BartForConditionalGeneration, lambda: _bart(64, 2, 8, scale_embedding=True), "seq2seq"),
    "bart-cls-32": (T.BartForSequenceClassification, lambda: _bart(32, 2, 4, num_labels=3), "eos"),
    "bart-cls-48": (T.BartForSequenceClassification, lambda: _bart(48, 2, 4, num_labels=2), "eos"),
    "bart-model-32": (T.BartModel, lambda: _bart(32, 2, 4), "seq2seq"),
    "llama-gqa-32": (T.LlamaForCausalLM, lambda: _llama(T.LlamaConfig, 32, 2, 4, 2), "plain"),
    "llama-gqa-64": (T.LlamaForCausalLM,
                     lambda: _llama(T.LlamaConfig, 64, 3, 8, 2, head_dim=16, rope_theta=5e5, tie_word_embeddings=True),
                     "plain"),
    "llama-mha-bias-32": (T.LlamaForCausalLM,
                          lambda: _llama(T.LlamaConfig, 32, 2, 4, 4, attention_bias=True, mlp_bias=True), "plain"),
    "mistral-window-32": (T.MistralForCausalLM, lambda: _llama(T.MistralConfig, 32, 2, 4, 2, sliding_window=5), "plain"),
    "mistral-64": (T.MistralForCausalLM, lambda: _llama(T.MistralConfig, 64, 2, 8, 4, sliding_window=None), "plain"),
    "llama-cls-32": (T.LlamaForSequenceClassification,
                     lambda: _llama(T.LlamaConfig, 32, 2, 4, 2, num_labels=2, pad_token_id=0), "plain"),
    "llama-model-32": (T.LlamaModel, lambda: _llama(T.LlamaConfig, 32, 2, 4, 2), "plain"),
    "qwen2-32": (T.Qwen2ForCausalLM, lambda: _llama(T.Qwen2Config, 32, 2, 4, 2), "plain"),
    "qwen2-64": (T.Qwen2ForCausalLM, lambda: _llama(T.Qwen2Config, 64, 2, 8, 2, tie_word_embeddings=True), "plain"),
}


def _inputs(kind, pad_id, seed=0):
  """Returns (torch kwargs, tfm kwargs, mask of compared positions) for a padded batch of 2."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, 97, size=(2, 14))
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  if kind == "eos":  # BART classification pools the last EOS: every row ends with exactly one
    ids[0, -1] = ids[1, 8] = 2
  ids[mask == 0] = pad_id
  t = {"input_ids": ids, "attention_mask": mask}
  compare = mask
  if kind == "types":
    types = np.zeros_like(ids)
    types[:, 5:] = 1
    types[0, 11:] = 2 % 2
    t["token_type_ids"] = types
  if kind.startswith("seq2seq"):
    dec = rng.randint(3, 97, size=(2, 11))
    dmask = np.ones_like(dec)
    dmask[0, 7:] = 0
    t.update(decoder_input_ids=dec, decoder_attention_mask=dmask)
    compare = dmask
  return ({k: torch.tensor(v) for k, v in t.items()}, {k: jnp.asarray(v) for k, v in t.items()},
          compare.astype(bool))


def _perturbed(model):
  """Returns the model with every weight (biases, norm scales, BART's final_logits_bias too) moved by noise.

  HF initialises biases to 0 and norm scales to 1, which would hide a wrong bias or scale mapping.
  """
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
    for name, b in model.named_buffers():
      if name.endswith("final_logits_bias"):
        b.add_(0.05 * torch.randn_like(b))
  return model


def _torch_out(model, inputs):
  with torch.no_grad():
    out = model(**inputs)
  if hasattr(out, "logits"):
    return [out.logits.numpy()]
  extra = [out.pooler_output.numpy()] if getattr(out, "pooler_output", None) is not None else []
  return [out.last_hidden_state.numpy()] + extra


def _compare(got, ref, compare):
  """Returns max abs diff over real positions (all of a [batch, labels] / pooled output)."""
  got, ref = np.asarray(got), np.asarray(ref)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  if got.ndim == 3:
    return float(np.abs(got - ref)[compare].max())
  return float(np.abs(got - ref).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_and_round_trip(case, tmp_path):
  model_cls, make_config, kind = CASES[case]
  torch.manual_seed(sum(map(ord, case)))
  model = model_cls(make_config()).eval()
  if kind.endswith("-untied"):
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
  model = _perturbed(model)
  src = tmp_path / "hf"
  model.save_pretrained(src)
  pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
  t_in, j_in, compare = _inputs(kind, pad_id)
  ref = _torch_out(model, t_in)
  assert all(np.std(r) > 1e-2 for r in ref), "reference outputs are too flat to test anything"

  config, params = tfm.from_pretrained(str(src))
  if kind.endswith("-untied"):
    assert not config.tie_embeddings and params["lm_head"]["output"]["kernel"].shape == (config.d_model, 97)
  out = jax.jit(tfm.build(config).apply)({"params": params}, **j_in)  # one compile, not one per op
  got = list(out) if isinstance(out, tuple) else [out]
  got = [g for g in got if g is not None]
  assert len(got) == len(ref)
  for g, r in zip(got, ref):
    assert _compare(g, r, compare) <= TOL

  # Round trip: tfm -> save_pretrained -> transformers -> the original logits.
  dst = tmp_path / "back"
  tfm.save_pretrained(config, params, str(dst))
  back = model_cls.from_pretrained(dst).eval()
  for b, r in zip(_torch_out(back, t_in), ref):
    assert _compare(b, r, compare) <= 1e-6


def test_comparison_detects_a_wrong_weight(tmp_path):
  """Negative control: swapping two heads of one projection breaks the match by far more than TOL."""
  torch.manual_seed(0)
  model = _perturbed(T.LlamaForCausalLM(_llama(T.LlamaConfig, 32, 2, 4, 2)).eval())
  model.save_pretrained(tmp_path)
  t_in, j_in, compare = _inputs("plain", 0)
  ref = _torch_out(model, t_in)[0]
  config, params = tfm.from_pretrained(str(tmp_path))
  q = params["decoder"]["layers"]["layer_0"]["self_attention"]["query"]["kernel"]  # [embed, heads, head_dim]
  params["decoder"]["layers"]["layer_0"]["self_attention"]["query"]["kernel"] = q[:, ::-1]
  got = jax.jit(tfm.build(config).apply)({"params": params}, **j_in)
  assert _compare(got, ref, compare) > 100 * TOL


def test_t5_init_matches_transformers_t5_init():
  """init="t5" draws every weight with the std HF's T5PreTrainedModel._init_weights uses (within 5 %)."""
  import flax
  import transformers
  c = tfm.get_config("t5-small", num_layers=1, vocab_size=512)
  ids = jnp.ones((1, 4), jnp.int32)
  p = flax.linen.meta.unbox(tfm.build(c).init(jax.random.PRNGKey(0), ids, decoder_input_ids=ids)["params"])
  flat = flax.traverse_util.flatten_dict(p, sep="/")
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=512, d_model=c.d_model, d_kv=c.head_dim, d_ff=c.d_ff, num_layers=1, num_heads=c.num_heads))
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  pairs = {
      "token_embed/embedding": "shared.weight",
      "encoder/layers/layer_0/self_attention/query/kernel": "encoder.block.0.layer.0.SelfAttention.q.weight",
      "encoder/layers/layer_0/self_attention/key/kernel": "encoder.block.0.layer.0.SelfAttention.k.weight",
      "encoder/layers/layer_0/self_attention/value/kernel": "encoder.block.0.layer.0.SelfAttention.v.weight",
      "encoder/layers/layer_0/self_attention/out/kernel": "encoder.block.0.layer.0.SelfAttention.o.weight",
      "encoder/layers/layer_0/mlp/wi/kernel": "encoder.block.0.layer.1.DenseReluDense.wi.weight",
      "encoder/layers/layer_0/mlp/wo/kernel": "encoder.block.0.layer.1.DenseReluDense.wo.weight",
      "decoder/layers/layer_0/cross_attention/query/kernel": "decoder.block.0.layer.1.EncDecAttention.q.weight",
      "encoder/relative_bias/rel_embedding":
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
  }
  for ours, theirs in pairs.items():
    np.testing.assert_allclose(float(np.std(flat[ours])), float(np.std(sd[theirs])), rtol=0.05, err_msg=ours)
