"""The analytic FLOP formulas (tfm.flops) against XLA's own count (`cost_analysis()`) of the compiled model.

XLA counts every floating-point op (2 per multiply-add in dots, plus norms, softmax, activations);
the analytic formula counts only matmuls. The shapes below (width 256, MLP 1024, vocab 512) make
the matmuls dominate: XLA counts 0.4-1.1 % more (the element-wise work), never less. TOLERANCE is tight
enough that a formula without its attention-score term (q kᵀ and probs·v, 4-5 % of these models, 2.1 %
of the deepest-decoder T5) fails.
"""

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import pytest

import tfm
from tfm.flops import model_flops

SMALL = dict(num_layers=2, d_model=256, num_heads=4, d_ff=1024, vocab_size=512, dropout_rate=0.0)
CASES = {
    "decoder": ("gpt2-small", SMALL, 64, None),
    "decoder_gqa_swiglu": ("llama-tiny", dict(SMALL, num_heads=8, num_kv_heads=2, d_ff=704), 64, None),
    "encoder_mlm": ("bert-base", dict(SMALL, attention_dropout_rate=0.0), 64, None),
    "encoder_classifier": ("bert-base", dict(SMALL, attention_dropout_rate=0.0, num_labels=3), 64, None),
    "encoder_decoder": ("t5-small", SMALL, 64, 32),
    "encoder_decoder_untied_gated": ("t5-v1_1-small", dict(SMALL, num_decoder_layers=3), 48, 16),
}
BATCH = 2
TOLERANCE = 0.015  # XLA / analytic - 1 must lie in [0, TOLERANCE)


def _inputs(config, seq_len, tgt_len):
  ids = jnp.ones((BATCH, seq_len), jnp.int32)
  kw = {}
  if config.family == "encoder_decoder":
    kw["decoder_input_ids"] = jnp.ones((BATCH, tgt_len), jnp.int32)
  return ids, kw


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def _abstract_params(model, ids, kw):
  return jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, **kw)["params"]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_flops_match_xla_cost_analysis(case):
  name, overrides, seq_len, tgt_len = CASES[case]
  config = tfm.get_config(name, **overrides)
  model = tfm.build(config)
  ids, kw = _inputs(config, seq_len, tgt_len)
  params = _abstract_params(model, ids, kw)
  xla = _xla_flops(lambda p, i, k: model.apply({"params": p}, i, **k), params, ids, kw)
  analytic = model_flops(config, BATCH, seq_len, tgt_len).forward
  assert abs(xla / analytic - 1) < TOLERANCE, (case, xla, analytic)
  # the analytic count is of matmuls only, so XLA (which also counts element-wise ops) is never below it
  assert xla >= analytic * 0.999, (case, xla, analytic)


def test_training_step_flops_are_three_forwards():
  """Forward + backward of the LM loss costs ~3 x forward in XLA's count too (the 6·N convention)."""
  name, overrides, seq_len, _ = CASES["decoder"]
  config = tfm.get_config(name, **overrides)
  model = tfm.build(config)
  ids, kw = _inputs(config, seq_len, None)
  params = _abstract_params(model, ids, kw)

  def loss(p, i):
    logits = model.apply({"params": p}, i)
    return optax.softmax_cross_entropy_with_integer_labels(logits, i).mean()
  xla = _xla_flops(jax.grad(loss), params, ids)
  analytic = model_flops(config, BATCH, seq_len).train
  assert analytic * 0.999 <= xla < analytic * (1 + TOLERANCE), (xla, analytic)


def test_known_shapes_match_the_pytorch_baseline_convention():
  """GPT-2 shapes give 6·N + 12·L·T·d per token (bench_common.py's formula), T5 counts per stream."""
  c = tfm.get_config("gpt-nano")
  n = 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 65
  assert model_flops(c, 8, 256).train_per_token == 6 * n + 12 * 6 * 256 * 384
  t5 = tfm.get_config("t5-small", num_layers=4, d_model=256, num_heads=4, d_ff=1024)
  f = model_flops(t5, 8, 128, 32)
  assert f.tokens == 8 * 128 + 8 * 32
  d, f_ff, enc_tok, dec_tok = 256, 1024, 8 * 128, 8 * 32
  enc = 6 * 4 * (4 * d * d + 2 * d * f_ff) * enc_tok + 12 * 4 * 128 * d * enc_tok
  dec = (6 * 4 * (4 * d * d + 2 * d * d + 2 * d * f_ff) * dec_tok + 6 * 4 * 2 * d * d * enc_tok
         + 12 * 4 * 32 * d * dec_tok + 12 * 4 * 128 * d * dec_tok)
  assert f.train == enc + dec + 6 * d * 32128 * dec_tok  # bench_common.t5_train_flops_per_step
  with pytest.raises(ValueError, match="tgt_len"):
    model_flops(t5, 8, 128)
