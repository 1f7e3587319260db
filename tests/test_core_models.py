"""Equivalences of the three model families: causality, padding, packing, GQA, cached decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm
from tfm import attention as core
from tfm.attention import blockwise
from tfm import axes
from tfm.layers import embeddings as E
from tfm.layers.block import apply_rope
from tfm.layers.primitives import Dense, Norm
from tfm.models import CROSS_CACHE_KEYS

RNG = jax.random.PRNGKey(0)
DECODERS = ["gpt2-tiny", "llama-test"]
ENC_DECS = ["t5-tiny", "t5-v1_1-tiny", "bart-tiny", "transformer-tiny"]
ALL = DECODERS + ["bert-tiny"] + ENC_DECS


def _ids(shape, vocab=256, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 3, vocab)


_CACHE = {}
_JIT = {}


def init(name, **overrides):
  """Returns (model, params) for a preset, cached per (name, overrides)."""
  key = (name, tuple(sorted(overrides.items())))
  if key not in _CACHE:
    c = tfm.get_config(name, **overrides)
    m = tfm.build(c)
    ids = _ids((2, 8))
    kw = {"decoder_input_ids": ids} if c.family == "encoder_decoder" else {}
    _CACHE[key] = (m, nn.meta.unbox(m.init(RNG, ids, **kw)["params"]))
  return _CACHE[key]


VARIANTS = {"alibi": dict(position="alibi"), "window": dict(sliding_window=3), "scan": dict(scan_layers=True),
            "blockwise": dict(attention_impl="blockwise")}
BLOCKWISE = ["gpt2-tiny:blockwise", "llama-test:window+blockwise", "gpt2-tiny:alibi+blockwise", "bert-tiny:blockwise",
             "t5-tiny:blockwise", "bart-tiny:blockwise"]


def variant(name, monkeypatch):
  """Returns (model, params) of "preset:variant+variant" (VARIANTS); blockwise runs with blocks of 4 tokens,
  so that the test lengths (5 to 10) span several blocks with a ragged last one."""
  base, _, variants = name.partition(":")
  over = {}
  for v in filter(None, variants.split("+")):
    over.update(VARIANTS[v])
  if over.get("attention_impl") == "blockwise":
    monkeypatch.setattr(blockwise, "BLOCK_Q", 4)
    monkeypatch.setattr(blockwise, "BLOCK_K", 4)
  return init(base, **over)


def jitted_apply(m):
  """Returns jax.jit(m.apply), one per model: it runs as one compiled program, not op by op (faster)."""
  if id(m) not in _JIT:  # Linen modules are not hashable; the cached jit keeps m alive, so its id stays unique
    _JIT[id(m)] = jax.jit(m.apply)
  return _JIT[id(m)]


def run(name, ids, dec_ids=None, **kw):
  m, p = init(name)
  if m.config.family == "encoder_decoder":
    return m.apply({"params": p}, ids, decoder_input_ids=dec_ids, **kw)
  return m.apply({"params": p}, ids, **kw)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DECODERS + ["gpt2-tiny:alibi", "gpt2-tiny:window"] + ENC_DECS
                         + [b for b in BLOCKWISE if not b.startswith("bert")])
def test_causality(name, monkeypatch):
  """Changing tokens after t never changes decoder logits at positions <= t."""
  m, p = variant(name, monkeypatch)
  ids = _ids((2, 10))
  t = 5
  changed = ids.at[:, t + 1:].set((ids[:, t + 1:] + 7) % 250 + 3)
  if m.config.family == "encoder_decoder":
    src = _ids((2, 9), seed=1)
    a = jitted_apply(m)({"params": p}, src, decoder_input_ids=ids)
    b = jitted_apply(m)({"params": p}, src, decoder_input_ids=changed)
  else:
    a = jitted_apply(m)({"params": p}, ids)
    b = jitted_apply(m)({"params": p}, changed)
  np.testing.assert_allclose(np.asarray(a[:, : t + 1]), np.asarray(b[:, : t + 1]), atol=1e-6)
  assert np.max(np.abs(np.asarray(a[:, t + 1:]) - np.asarray(b[:, t + 1:]))) > 1e-4  # the test can fail


@pytest.mark.parametrize("name", ALL + BLOCKWISE)
def test_padding_equals_unpadded(name, monkeypatch):
  """A right-padded batch gives the same logits on real tokens as each example alone."""
  m, p = variant(name, monkeypatch)
  lengths = [7, 4]
  ids = _ids((2, 7))
  mask = (jnp.arange(7)[None] < jnp.array(lengths)[:, None]).astype(jnp.int32)
  padded_ids = jnp.where(mask == 1, ids, 0)
  if m.config.family == "encoder_decoder":
    dec = _ids((2, 6), seed=2)
    dec_lengths = [6, 3]
    dmask = (jnp.arange(6)[None] < jnp.array(dec_lengths)[:, None]).astype(jnp.int32)
    out = jitted_apply(m)({"params": p}, padded_ids, mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
    for i in range(2):
      alone = jitted_apply(m)({"params": p}, padded_ids[i:i + 1, :lengths[i]],
                              decoder_input_ids=dec[i:i + 1, :dec_lengths[i]])
      np.testing.assert_allclose(np.asarray(out[i, :dec_lengths[i]]), np.asarray(alone[0]), atol=2e-5)
  else:
    out = jitted_apply(m)({"params": p}, padded_ids, mask)
    for i in range(2):
      alone = jitted_apply(m)({"params": p}, padded_ids[i:i + 1, :lengths[i]])
      np.testing.assert_allclose(np.asarray(out[i, :lengths[i]]), np.asarray(alone[0]), atol=2e-5)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-test", "bert-tiny", "t5-tiny", "bart-tiny",
                                  "transformer-tiny"] + BLOCKWISE)
def test_packing_equals_separate(name, monkeypatch):
  """Two sequences packed with segment ids give the same outputs as each run alone."""
  m, p = variant(name, monkeypatch)
  a, b = _ids((1, 5), seed=3), _ids((1, 6), seed=4)
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 6])
  if m.config.family == "encoder_decoder":
    da, db = _ids((1, 3), seed=5), _ids((1, 4), seed=6)
    dpacked = jnp.concatenate([da, db], axis=1)
    dseg = jnp.array([[1] * 3 + [2] * 4])
    out = jitted_apply(m)({"params": p}, packed, decoder_input_ids=dpacked, segment_ids=seg, decoder_segment_ids=dseg)
    ra = jitted_apply(m)({"params": p}, a, decoder_input_ids=da)
    rb = jitted_apply(m)({"params": p}, b, decoder_input_ids=db)
    np.testing.assert_allclose(np.asarray(out[0, :3]), np.asarray(ra[0]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(out[0, 3:]), np.asarray(rb[0]), atol=2e-5)
  else:
    out = jitted_apply(m)({"params": p}, packed, segment_ids=seg)
    ra, rb = jitted_apply(m)({"params": p}, a), jitted_apply(m)({"params": p}, b)
    np.testing.assert_allclose(np.asarray(out[0, :5]), np.asarray(ra[0]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(out[0, 5:]), np.asarray(rb[0]), atol=2e-5)


@pytest.mark.parametrize("name,kv_heads", [("llama-test", 2), ("gpt2-tiny", 2), ("gpt2-tiny", 1), ("bart-tiny", 2)])
def test_gqa_equals_mha_with_repeated_kv_weights(name, kv_heads):
  """GQA / MQA (kv_heads < heads) equals MHA whose key / value kernels and biases repeat each kv head
  over the query heads of its group (query head h reads kv head h // group): self- and cross-attention,
  rotary and learned positions, with and without biases."""
  m_gqa, p_gqa = init(name, num_kv_heads=kv_heads)
  c = m_gqa.config
  assert c.kv_heads == kv_heads < c.num_heads
  m_mha = tfm.build(c.replace(num_kv_heads=None))
  g = c.num_heads // kv_heads
  # Random biases (they start at zero), so that repeating them is tested too.
  leaves, treedef = jax.tree_util.tree_flatten_with_path(p_gqa)
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  p_gqa = jax.tree_util.tree_unflatten(treedef, [
      x + 0.1 * jax.random.normal(k, x.shape) if path[-1].key == "bias" else x
      for (path, x), k in zip(leaves, keys)])

  def widen(repeat):
    """Returns p_gqa with every key / value kernel [embed, kv_heads, head_dim] and bias [kv_heads, head_dim]
    widened to `heads` on its kv_heads axis by `repeat`."""
    def one(path, x):
      if [getattr(k, "key", None) for k in path][-2] in ("key", "value"):
        return repeat(x, x.ndim - 2)
      return x
    return jax.tree_util.tree_map_with_path(one, p_gqa)

  ids = _ids((2, 9))
  kw = {"decoder_input_ids": _ids((2, 7), seed=1)} if c.family == "encoder_decoder" else {}
  out = np.asarray(jitted_apply(m_gqa)({"params": p_gqa}, ids, **kw))
  grouped = widen(lambda x, axis: jnp.repeat(x, g, axis=axis))  # kv heads [a, b] -> [a, a, b, b]
  np.testing.assert_allclose(out, np.asarray(jitted_apply(m_mha)({"params": grouped}, ids, **kw)), atol=1e-5)
  if kv_heads > 1:  # the test can fail: another grouping (query head h reads kv head h % kv_heads) differs
    interleaved = widen(lambda x, axis: jnp.concatenate([x] * g, axis=axis))  # [a, b] -> [a, b, a, b]
    assert np.max(np.abs(out - np.asarray(jitted_apply(m_mha)({"params": interleaved}, ids, **kw)))) > 1e-3


@pytest.mark.parametrize("name", DECODERS + ["gpt2-tiny:alibi", "gpt2-tiny:window", "gpt2-tiny:scan"] + ENC_DECS
                         + ["t5-tiny:scan"] + [b for b in BLOCKWISE if not b.startswith("bert")])
def test_cached_decoding_matches_full_forward(name, monkeypatch):
  """Prefill of a prompt chunk then one token at a time reproduces the full forward logits."""
  m, p = variant(name, monkeypatch)
  T, prompt = 9, 4
  ids = _ids((2, T), seed=7)
  if m.config.family == "encoder_decoder":
    src = _ids((2, 7), seed=8)
    src_mask = jnp.ones((2, 7), jnp.int32).at[1, 5:].set(0)
    enc = jax.jit(lambda src, mask: m.apply({"params": p}, src, mask, method=m.encode))(src, src_mask)
    full = jax.jit(lambda enc, ids, mask: m.apply({"params": p}, enc, ids, mask, method=m.decode))(enc, ids, src_mask)
    cache = tfm.init_cache(m, 2, T)
    # The prompt chunk stores the cross-attention keys / values; later steps read them (encoded=None).
    step = jax.jit(lambda chunk, cache: m.apply({"params": p, "cache": cache}, enc if chunk.shape[1] > 1 else None,
                                                chunk, src_mask, decode=True, mutable=["cache"], method=m.decode))
  else:
    full = jitted_apply(m)({"params": p}, ids)
    cache = tfm.init_cache(m, 2, T)
    step = jax.jit(lambda chunk, cache: m.apply({"params": p, "cache": cache}, chunk, decode=True, mutable=["cache"]))
  outs = []  # step is jitted: compiled once for the prompt chunk and once for single tokens
  out, mut = step(ids[:, :prompt], cache)
  outs.append(out)
  for t in range(prompt, T):
    out, mut = step(ids[:, t:t + 1], mut["cache"])
    outs.append(out)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), atol=2e-5)


def test_cross_attention_cache_needs_a_first_step_with_the_encoder_output():
  """Decoding with encoded=None from a fresh init_cache (no cross keys / values yet) is a clear error."""
  m, p = init("t5-tiny")
  cache = tfm.init_cache(m, 1, 4)
  assert not set(CROSS_CACHE_KEYS) & set(_keys(cache))
  with pytest.raises(ValueError, match="call decode with `encoded` first"):
    m.apply({"params": p, "cache": cache}, None, _ids((1, 1)), decode=True, mutable=["cache"], method=m.decode)
  enc = m.apply({"params": p}, _ids((1, 3)), method=m.encode)
  _, mut = m.apply({"params": p, "cache": cache}, enc, _ids((1, 1)), decode=True, mutable=["cache"], method=m.decode)
  assert set(CROSS_CACHE_KEYS) <= set(_keys(mut["cache"]))  # the first step with the encoder output stores them
  # the next step reads them: the same logits as projecting the encoder output again
  step = lambda e: m.apply({"params": p, "cache": mut["cache"]}, e, _ids((1, 1), seed=2), decode=True,
                           mutable=["cache"], method=m.decode)[0]
  np.testing.assert_allclose(np.asarray(step(None)), np.asarray(step(enc)), atol=1e-6)


def _keys(tree):
  """Returns every key of a nested dict."""
  return [k for key, v in tree.items() for k in [key] + (_keys(v) if isinstance(v, dict) else [])]


def test_rope_scores_depend_only_on_relative_offset():
  r = np.random.RandomState(0)
  q = jnp.asarray(r.randn(1, 1, 2, 16), jnp.float32)
  k = jnp.asarray(r.randn(1, 1, 2, 16), jnp.float32)

  def score(m, n):
    qr = apply_rope(q, jnp.array([[m]]), 10000.0)
    kr = apply_rope(k, jnp.array([[n]]), 10000.0)
    return np.asarray(jnp.sum(qr * kr, -1))

  np.testing.assert_allclose(score(3, 1), score(13, 11), atol=1e-4)
  np.testing.assert_allclose(score(0, 7), score(40, 47), atol=1e-4)
  assert np.max(np.abs(score(3, 1) - score(3, 2))) > 1e-3


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_and_alibi_bias_depend_only_on_relative_offset(bidirectional):
  c = tfm.get_config("t5-tiny")
  mod = E.RelativePositionBias(c, bidirectional=bidirectional)
  qp = jnp.arange(12)[None]
  v = mod.init(RNG, qp, qp)
  b0 = np.asarray(mod.apply(v, qp, qp).dense())
  b1 = np.asarray(mod.apply(v, qp + 37, qp + 37).dense())
  np.testing.assert_allclose(b0, b1)
  assert b0.shape == (1, c.num_heads, 12, 12)
  # Toeplitz: every diagonal is constant.
  for off in range(-11, 12):
    d = np.diagonal(b0[0], offset=off, axis1=1, axis2=2)
    assert np.allclose(d, d[:, :1])
  a0, a1 = E.alibi_bias(qp, qp, 4).dense(), E.alibi_bias(qp + 5, qp + 5, 4).dense()
  np.testing.assert_allclose(np.asarray(a0), np.asarray(a1))


def test_relative_buckets_use_several_ranges():
  rel = jnp.arange(-200, 201)
  b = np.asarray(core.relative_bucket(rel, True, 32, 128))
  assert b.min() == 0 and b.max() == 31
  # exact buckets for small offsets, log-spaced (repeated buckets) for large ones
  assert len(set(b[200:208].tolist())) == 8 and len(set(b[300:401].tolist())) < 20


def test_positions_from_segments():
  seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(np.asarray(E.positions_from_segments(seg)), [[0, 1, 2, 0, 1, 0, 0, 1]])


@pytest.mark.parametrize("name", ALL + ["gpt2-tiny:scan", "bert-tiny:cls", "t5-tiny:cls"])
def test_every_parameter_has_logical_axis_names(name):
  base, _, variant = name.partition(":")
  over = {"scan": dict(scan_layers=True), "cls": dict(num_labels=3)}.get(variant, {})
  c = tfm.get_config(base, **over)
  m = tfm.build(c)
  ids = jnp.ones((1, 4), jnp.int32)
  kw = {"decoder_input_ids": ids} if c.family == "encoder_decoder" else {}
  boxed = jax.eval_shape(lambda: m.init(RNG, ids, **kw))["params"]
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim
    assert all(n in axes.ALL_AXES for n in leaf.names), leaf.names


@pytest.mark.parametrize("name,expected,over", [
    ("gpt2-small", 124_439_808, {}),
    ("bert-base", 109_482_240, {"lm_head": False}),  # BertModel with pooler, no MLM head
    ("t5-small", 60_506_624, {}),                    # T5ForConditionalGeneration, tied
])
def test_parameter_counts_equal_reference(name, expected, over):
  c = tfm.get_config(name, **over)
  m = tfm.build(c)
  ids = jnp.ones((1, 4), jnp.int32)
  kw = {"decoder_input_ids": ids} if c.family == "encoder_decoder" else {}
  shapes = jax.eval_shape(lambda: m.init(RNG, ids, **kw))["params"]
  assert tfm.count_params(shapes) == expected


@pytest.mark.parametrize("name", ["gpt2-tiny", "bert-tiny", "t5-tiny"])
def test_jitted_forward_compiles_once(name):
  m, p = init(name)
  traces = []

  @jax.jit
  def fwd(p, ids):
    traces.append(1)
    kw = {"decoder_input_ids": ids} if m.config.family == "encoder_decoder" else {}
    return m.apply({"params": p}, ids, **kw)

  a = fwd(p, _ids((2, 8), seed=1))
  b = fwd(p, _ids((2, 8), seed=2))
  assert len(traces) == 1
  assert not np.allclose(np.asarray(a), np.asarray(b))


def test_scan_layers_equal_unrolled():
  m, p = init("gpt2-tiny")
  ms = tfm.build(m.config.replace(scan_layers=True))
  layers = [p["decoder"]["layers"][f"layer_{i}"] for i in range(m.config.num_layers)]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
  ps = jax.tree_util.tree_map(lambda x: x, p)
  ps["decoder"] = dict(p["decoder"])
  ps["decoder"]["layers"] = {"layers": stacked, **{k: v for k, v in p["decoder"]["layers"].items()
                                                   if not k.startswith("layer_")}}
  ids = _ids((2, 8))
  ref = ms.init(RNG, ids)["params"]
  assert jax.tree_util.tree_structure(nn.meta.unbox(ref)) == jax.tree_util.tree_structure(ps)
  np.testing.assert_allclose(np.asarray(ms.apply({"params": ps}, ids)), np.asarray(m.apply({"params": p}, ids)),
                             atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_gradients(remat):
  m, p = init("gpt2-tiny")
  mr = tfm.build(m.config.replace(remat=remat))
  ids = _ids((2, 8))
  loss = lambda model: (lambda p: jnp.mean(model.apply({"params": p}, ids) ** 2))
  g1 = jax.jit(jax.grad(loss(m)))(p)
  g2 = jax.jit(jax.grad(loss(mr)))(p)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "llama-test", "t5-tiny", "bart-tiny"])
def test_classification_heads(name):
  c = tfm.get_config(name, num_labels=3)
  m = tfm.build(c)
  ids = _ids((2, 7))
  mask = jnp.ones((2, 7), jnp.int32).at[1, 4:].set(0)
  v = m.init(RNG, ids, mask)
  out = m.apply(v, ids, mask)
  assert out.shape == (2, 3)
  # The padded example's logits equal the example run alone (head pools real tokens only).
  alone = m.apply(v, ids[1:, :4])
  np.testing.assert_allclose(np.asarray(out[1]), np.asarray(alone[0]), atol=2e-5)


def test_dropout_is_active_only_when_not_deterministic():
  m = tfm.build(tfm.get_config("gpt2-tiny", dropout_rate=0.3, attention_dropout_rate=0.3))
  ids = _ids((2, 8))
  v = m.init(RNG, ids)
  d = m.apply(v, ids)
  np.testing.assert_array_equal(np.asarray(d), np.asarray(m.apply(v, ids)))
  r1 = m.apply(v, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  r2 = m.apply(v, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
  assert np.max(np.abs(np.asarray(r1) - np.asarray(r2))) > 1e-3


def test_bfloat16_compute():
  m, p = init("llama-test")
  mb = tfm.build(m.config.replace(dtype="bfloat16"))
  ids = _ids((2, 8))
  ref = np.asarray(m.apply({"params": p}, ids))
  out = mb.apply({"params": p}, ids)
  assert out.dtype == jnp.bfloat16
  assert np.max(np.abs(np.asarray(out, np.float32) - ref)) < 0.05 * np.max(np.abs(ref)) + 0.05


def test_family_argument_errors():
  with pytest.raises(ValueError, match="decoder_input_ids"):
    run("gpt2-tiny", _ids((1, 4)), decoder_input_ids=_ids((1, 4)))
  with pytest.raises(ValueError, match="decoder_input_ids"):
    m, p = init("t5-tiny")
    m.apply({"params": p}, _ids((1, 4)))
  with pytest.raises(TypeError, match="ModelConfig"):
    tfm.build("gpt2-small")


@pytest.mark.parametrize("norm,norm_bias", [("layernorm", None), ("rmsnorm", None), ("rmsnorm", True)])
def test_norm_matches_flax_norms_in_value_gradient_and_jvp(norm, norm_bias):
  """tfm's Norm (on CPU: scale / bias gradients as matrix-vector products) equals flax.linen.LayerNorm /
  RMSNorm given the same parameters: values, gradients of input, scale and bias, and forward mode."""
  c = tfm.get_config("gpt2-tiny", norm=norm, norm_bias=norm_bias, norm_eps=1e-5)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, c.d_model)) * 2 + 0.5
  ours = Norm(c)
  p = nn.meta.unbox(ours.init(RNG, x)["params"])
  p = {k: jax.random.normal(jax.random.PRNGKey(i + 2), v.shape) for i, (k, v) in enumerate(sorted(p.items()))}
  use_bias = "bias" in p
  assert use_bias == (norm == "layernorm" or bool(norm_bias))
  if norm == "layernorm":
    ref = nn.LayerNorm(epsilon=1e-5)
  else:
    ref = nn.RMSNorm(epsilon=1e-5)
  ref_p = {"scale": p["scale"]}
  apply_ours = jax.jit(lambda p, x: ours.apply({"params": p}, x))  # compiled: fewer, faster compiles
  if norm == "rmsnorm" and use_bias:
    apply_ref = jax.jit(lambda p, x: ref.apply({"params": {"scale": p["scale"]}}, x) + p["bias"])
  else:
    apply_ref = jax.jit(lambda p, x: ref.apply({"params": {**ref_p, **p}}, x))
  np.testing.assert_allclose(apply_ours(p, x), apply_ref(p, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(9), x.shape)
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)) * w)
  g_ours, g_ref = jax.grad(loss(apply_ours), argnums=(0, 1))(p, x), jax.grad(loss(apply_ref), argnums=(0, 1))(p, x)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_ref)
  tangents = jax.tree_util.tree_map(lambda a: jnp.full_like(a, 0.3), (p, x))
  np.testing.assert_allclose(jax.jvp(apply_ours, (p, x), tangents)[1], jax.jvp(apply_ref, (p, x), tangents)[1],
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("contract,features", [(1, (2, 3)), (1, (3, 5)), (2, (8,)), (2, (40,))])
def test_dense_matches_tensordot_in_value_gradient_and_jvp(contract, features):
  """Dense's 2-D matmul, its kernel gradient (either orientation) and its matmul-based bias gradient
  equal jnp.tensordot + bias, forward and reverse (fan_in 7 or 24 against fan_out 6, 15, 8 or 40)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 5) + (4, 6)[:contract] + ((7,) if contract == 1 else ()))
  if contract == 1:   # x [batch, length, width, in]
    layer, feats = Dense(features, ("embed", "heads", "kv")), features
  else:               # x [batch, length, heads, head_dim]
    layer, feats = Dense(features, ("heads", "kv", "embed"), contract=2), features
  params = nn.meta.unbox(layer.init(RNG, x)["params"])
  params = {"kernel": params["kernel"], "bias": jax.random.normal(jax.random.PRNGKey(2), feats)}
  n = x.ndim - contract

  @jax.jit  # grad and jvp of a jitted function run as a few compiled programs, not op by op
  def ref(p, x):
    return jnp.tensordot(x, p["kernel"], axes=(tuple(range(n, x.ndim)), tuple(range(contract)))) + p["bias"]

  @jax.jit
  def ours(p, x):
    return layer.apply({"params": p}, x)

  np.testing.assert_allclose(ours(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(3), ref(params, x).shape)
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)) * w)
  g_ours, g_ref = jax.grad(loss(ours), argnums=(0, 1))(params, x), jax.grad(loss(ref), argnums=(0, 1))(params, x)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_ref)
  tangent = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) * 0.3, (params, x))
  _, t_ours = jax.jvp(ours, (params, x), tangent)
  _, t_ref = jax.jvp(ref, (params, x), tangent)
  np.testing.assert_allclose(t_ours, t_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_input_saving_activation_equals_plain_maths_and_keeps_less_for_the_backward(name):
  """The MLP activations (recomputed in the backward pass from their input) equal jax.nn's in value,
  gradient and forward mode, and the compiled gradient of a [4096, 256] activation holds at least one
  [4096, 256] float32 array less of XLA temporaries than plain autodiff of the same maths."""
  from tfm.layers.primitives import ACTIVATIONS
  plain = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
           "silu": jax.nn.silu}[name]
  ours = ACTIVATIONS[name]
  x = jax.random.normal(RNG, (4096, 256)) * 3
  w = jax.random.normal(jax.random.PRNGKey(3), (256, 256)) * 0.1
  np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-6)
  # A matmul after the activation, as in the MLP: its input (the activation's output) is kept too.
  loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x) @ w))
  g_ours, g_plain = jax.jit(jax.grad(loss(ours)))(x), jax.jit(jax.grad(loss(plain)))(x)
  np.testing.assert_allclose(g_ours, g_plain, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(jax.jvp(ours, (x,), (jnp.ones_like(x),))[1], jax.jvp(plain, (x,), (jnp.ones_like(x),))[1],
                             rtol=1e-5, atol=1e-5)
  temp = lambda f: jax.jit(jax.grad(loss(f))).lower(x).compile().memory_analysis().temp_size_in_bytes
  assert temp(ours) <= temp(plain) - x.size * 4, (temp(ours), temp(plain))


def test_norm_keeps_only_its_input_for_the_backward():
  """LayerNorm's compiled gradient (input recomputed from, not x - mean and the normalised x kept)
  holds at least one [4096, 256] float32 array less of temporaries than plain autodiff of its maths."""
  from tfm.layers.primitives import _normalize
  c = tfm.get_config("gpt2-tiny", d_model=256)
  x = jax.random.normal(RNG, (4096, 256)) * 2 + 0.5
  p = nn.meta.unbox(Norm(c).init(RNG, x)["params"])
  w = jax.random.normal(jax.random.PRNGKey(3), (256, 256)) * 0.1
  plain = lambda p, x: _normalize(x, p["scale"], p["bias"], kind="layernorm", eps=c.norm_eps, dtype=jnp.float32)
  ours = lambda p, x: Norm(c).apply({"params": p}, x)
  loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x) @ w))
  grads = [jax.jit(jax.grad(loss(f), argnums=(0, 1)))(p, x) for f in (ours, plain)]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *grads)
  temp = lambda f: jax.jit(jax.grad(loss(f), argnums=(0, 1))).lower(p, x).compile().memory_analysis().temp_size_in_bytes
  assert temp(ours) <= temp(plain) - x.size * 4, (temp(ours), temp(plain))


@pytest.mark.parametrize("mode", ["first", "last", "mean", "max"])
def test_pool_modes_equal_numpy_over_real_tokens(mode):
  """pool() gives the first token, the last real one, or the mean / max over the real tokens only."""
  h = np.asarray(jax.random.normal(RNG, (3, 5, 4)))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
  got = np.asarray(E.pool(jnp.asarray(h), jnp.asarray(mask), mode))
  for b in range(3):
    real = h[b, mask[b] == 1]
    want = {"first": h[b, 0], "last": real[-1], "mean": real.mean(0), "max": real.max(0)}[mode]
    np.testing.assert_allclose(got[b], want, rtol=1e-6, atol=1e-6)


def test_bert_pooler_reads_the_configured_pooling():
  """With BERT's pooler, classifier_pooling still chooses what it reads: mean pooling changes the logits
  (it was once ignored silently), first pooling equals the default."""
  c = tfm.get_config("bert-tiny", num_labels=3)
  ids = jnp.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
  mask = (ids > 0).astype(jnp.int32)
  model = tfm.build(c)
  params = model.init(RNG, ids, attention_mask=mask)
  build = lambda p: tfm.build(tfm.get_config("bert-tiny", num_labels=3, classifier_pooling=p))
  out = {p: build(p).apply(params, ids, attention_mask=mask) for p in ("first", "mean", "max")}
  np.testing.assert_allclose(out["first"], model.apply(params, ids, attention_mask=mask), rtol=1e-6)
  assert not np.allclose(out["mean"], out["first"], atol=1e-4)
  assert not np.allclose(out["max"], out["mean"], atol=1e-4)
