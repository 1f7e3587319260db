"""tfm.generate: cached decoding == full recompute, strategy equivalences, padding, EOS, no retrace.

Compiling a generation loop is the slow part here, so the tests share models and prompt shapes:
a (model, settings, shape) compiles once for the whole file.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm
from tfm.generate import loop, sampling

NEW = 6  # new tokens per generation
SHAPE = (2, 5)  # [batch, prompt_len] of most prompts


@functools.lru_cache(maxsize=None)
def _model(name, **overrides):
  # N(0, 0.2) weights (init "normal", also for T5) give peaked next-token distributions, so argmax is
  # far from ties; T5's own fan-in init makes tiny random T5s repeat one token.
  c = tfm.get_config(name, **{"init": "normal", "init_std": 0.2, **overrides})
  m = tfm.build(c)
  ids = jnp.ones((1, 4), jnp.int32)
  if c.family == "decoder":
    variables = m.init(jax.random.PRNGKey(0), ids)
  else:
    variables = m.init(jax.random.PRNGKey(0), ids, decoder_input_ids=ids)
  return m, variables["params"]


def _prompts(shape=SHAPE, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 3, 250)


def _full_recompute_greedy(m, params, ids, n):
  """Greedy decoding that reruns the whole uncached forward pass at every step.

  The sequence lives in a fixed-size buffer (one compile): causality makes the logits at
  position i independent of the unfilled positions after it.
  """
  c = m.config
  batch, plen = ids.shape
  if c.family == "decoder":
    fwd = jax.jit(lambda p, seq: m.apply({"params": p}, seq))
    seq = jnp.concatenate([ids, jnp.zeros((batch, n), jnp.int32)], axis=1)
    for i in range(n):
      nxt = jnp.argmax(fwd(params, seq)[:, plen - 1 + i], axis=-1)
      seq = seq.at[:, plen + i].set(nxt)
    return np.asarray(seq[:, plen:])
  fwd = jax.jit(lambda p, dec: m.apply({"params": p}, ids, decoder_input_ids=dec))
  dec = jnp.zeros((batch, n + 1), jnp.int32).at[:, 0].set(c.decoder_start_token_id)
  for i in range(n):
    dec = dec.at[:, i + 1].set(jnp.argmax(fwd(params, dec)[:, i], axis=-1))
  return np.asarray(dec[:, 1:])


def _greedy(name, ids, **kw):
  m, p = _model(name)
  return np.asarray(tfm.generate(m, p, ids, max_new_tokens=NEW, **kw))


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-test", "t5-tiny"])
def test_cached_greedy_equals_full_recompute(name):
  m, p = _model(name)
  ids = _prompts()
  got = _greedy(name, ids)
  assert got.shape == (2, NEW) and got.dtype == np.int32
  np.testing.assert_array_equal(got, _full_recompute_greedy(m, p, ids, NEW))


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_top_k_1_and_one_beam_equal_greedy(name):
  m, p = _model(name)
  ids = _prompts()
  greedy = _greedy(name, ids)
  top1 = tfm.generate(m, p, ids, max_new_tokens=NEW, strategy="sample", top_k=1, temperature=0.7, seed=3)
  beam1 = tfm.generate(m, p, ids, max_new_tokens=NEW, strategy="beam", num_beams=1)
  np.testing.assert_array_equal(np.asarray(top1), greedy)
  np.testing.assert_array_equal(np.asarray(beam1), greedy)


def test_one_beam_equals_greedy_with_scanned_layers():
  # Scanned layers put the cache's batch axis second; the beam reorder must find it.
  m, p = _model("llama-test", scan_layers=True)
  ids = _prompts()
  beam1 = tfm.generate(m, p, ids, max_new_tokens=NEW, strategy="beam", num_beams=1)
  np.testing.assert_array_equal(np.asarray(beam1), _full_recompute_greedy(m, p, ids, NEW))


def test_sampling_seeds_reproducible_and_different():
  m, p = _model("gpt2-tiny", init_std=0.02)  # flat distributions: samples vary a lot
  ids = _prompts()
  kw = dict(max_new_tokens=NEW, strategy="sample", top_p=0.9)
  a = np.asarray(tfm.generate(m, p, ids, seed=0, **kw))
  b = np.asarray(tfm.generate(m, p, ids, seed=0, **kw))
  c = np.asarray(tfm.generate(m, p, ids, seed=1, **kw))
  np.testing.assert_array_equal(a, b)
  assert (a != c).mean() > 0.5
  # A tiny top_p keeps only the most likely token: greedy (same compiled loop, top_p is traced).
  tiny_p = tfm.generate(m, p, ids, seed=5, **{**kw, "top_p": 1e-6})
  np.testing.assert_array_equal(np.asarray(tiny_p), np.asarray(tfm.generate(m, p, ids, max_new_tokens=NEW)))


def test_top_k_and_top_p_filters_match_their_definitions():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 40)) * 3
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  kept_k = np.isfinite(np.asarray(sampling.top_k_filter(logits, 5)))
  kept_p = np.isfinite(np.asarray(sampling.top_p_filter(logits, jnp.float32(0.8))))
  for row in range(3):
    order = np.argsort(-probs[row])
    assert set(np.flatnonzero(kept_k[row])) == set(order[:5])
    # top-p keeps the fewest most likely tokens whose total probability reaches 0.8
    need = int(np.searchsorted(np.cumsum(probs[row][order]), 0.8) + 1)
    assert set(np.flatnonzero(kept_p[row])) == set(order[:need])
  # samples only ever come from the kept set
  draws = jax.jit(jax.vmap(lambda k: sampling.sample(logits, k, temperature=jnp.float32(1.0), top_k=5, top_p=None)))(
      jax.random.split(jax.random.PRNGKey(1), 64))  # [64, 3]
  assert all(kept_k[r, np.asarray(draws[:, r])].all() for r in range(3))


@pytest.mark.parametrize("name,strategies", [("gpt2-tiny", ("greedy", "beam")), ("llama-test", ("greedy",))])
def test_padded_prompts_continue_like_unpadded(name, strategies):
  m, p = _model(name)
  short = _prompts((2, 3), seed=2)
  pad = jnp.zeros((1, 2), jnp.int32)
  # Row 0 left-padded (as HF expects), row 1 right-padded: both must continue as if unpadded.
  ids = jnp.concatenate([jnp.concatenate([pad, short[:1]], 1), jnp.concatenate([short[1:], pad], 1)])
  mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
  for strategy in strategies:
    want = tfm.generate(m, p, short, max_new_tokens=NEW, strategy=strategy)
    got = tfm.generate(m, p, ids, attention_mask=mask, max_new_tokens=NEW, strategy=strategy)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_padded_encoder_inputs_decode_like_unpadded():
  short = _prompts((2, 3), seed=2)
  ids = jnp.concatenate([short, jnp.zeros((2, 2), jnp.int32)], axis=1)
  mask = jnp.array([[1, 1, 1, 0, 0]] * 2)
  np.testing.assert_array_equal(_greedy("t5-tiny", ids, attention_mask=mask), _greedy("t5-tiny", short))


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_eos_stops_one_sequence_while_others_go_on(name):
  ids = _prompts(seed=5)  # a prompt whose tiny random models do not repeat one token throughout
  free = _greedy(name, ids)
  # EOS := the first token of row 0 (after step 0) that appears nowhere earlier in row 0 nor in row 1.
  unique = [i for i in range(1, NEW) if free[0, i] not in free[0, :i] and free[0, i] not in free[1]]
  assert unique, f"the test needs a token only row 0 emits; got {free.tolist()}"
  k = unique[0]
  eos = int(free[0, k])
  got = _greedy(name, ids, eos_token_id=eos, pad_token_id=1)
  np.testing.assert_array_equal(got[0, :k + 1], free[0, :k + 1])
  assert (got[0, k + 1:] == 1).all()
  np.testing.assert_array_equal(got[1], free[1])
  # An EOS as the very first token leaves only padding after it.
  both = _greedy(name, ids, eos_token_id=int(free[0, 0]), pad_token_id=2)
  assert both[0, 0] == free[0, 0] and (both[0, 1:] == 2).all()


def test_beam_search_pads_after_eos():
  m, p = _model("gpt2-tiny")
  ids = _prompts(seed=6)
  free = np.asarray(tfm.generate(m, p, ids, max_new_tokens=NEW, strategy="beam"))
  eos = int(free[0, 1])
  for lp in (1.0, -2.0):  # length_penalty is traced: one compiled loop
    out = np.asarray(tfm.generate(m, p, ids, max_new_tokens=NEW, strategy="beam", eos_token_id=eos,
                                  pad_token_id=1, length_penalty=lp))
    for row in out:
      hit = np.flatnonzero(row == eos)
      assert hit.size == 0 or (row[hit[0] + 1:] == 1).all()
    if lp < 0:  # a negative penalty favours short hypotheses: row 0 ends at its EOS
      assert eos in out[0][:2]


def test_no_retrace_when_prompt_seed_temperature_or_eos_change():
  m, p = _model("gpt2-tiny")
  kw = dict(max_new_tokens=NEW, strategy="sample", top_k=1)
  tfm.generate(m, p, _prompts(seed=1), seed=0, temperature=0.8, **kw)
  before = loop._TRACES
  tfm.generate(m, p, _prompts(seed=2), seed=1, temperature=0.8, **kw)
  tfm.generate(m, p, _prompts(seed=3), seed=7, temperature=1.3, **kw)
  assert loop._TRACES == before
  tfm.generate(m, p, _prompts((1, 5)), seed=7, **kw)  # a new shape compiles once more
  assert loop._TRACES == before + 1


def test_bad_arguments_name_the_field():
  m, p = _model("gpt2-tiny")
  ids = _prompts()
  cases = [
      (dict(strategy="nucleus"), "strategy"),
      (dict(temperature=0.5), "strategy='sample'"),
      (dict(strategy="sample", top_k=0), "top_k"),
      (dict(strategy="sample", top_p=1.5), "top_p"),
      (dict(strategy="greedy", num_beams=3), "num_beams"),
      (dict(eos_token_id=999), "eos_token_id"),
      (dict(attention_mask=jnp.zeros(SHAPE, jnp.int32)), "at least one real token"),
      (dict(max_new_tokens=200), "max_len"),
  ]
  for kw, needle in cases:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
      tfm.generate(m, p, ids, **{"max_new_tokens": NEW, **kw})
  bert = tfm.build(tfm.get_config("bert-tiny"))
  with pytest.raises(ValueError, match="decoder"):
    tfm.generate(bert, {}, ids, max_new_tokens=NEW)
