"""The attention core against a float64 NumPy reference and against jax.nn.dot_product_attention."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tfm import attention as core


def numpy_attention(q, k, v, mask=None, bias=None, scale=None):
  """float64 reference: softmax(q kᵀ scale + bias, masked) v with kv heads repeated for GQA."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, h, d = q.shape
  g = h // k.shape[2]
  k = np.repeat(k, g, axis=2)
  v = np.repeat(v, g, axis=2)
  scale = d ** -0.5 if scale is None else scale
  s = np.einsum("bthd,bshd->bhts", q, k) * scale
  if bias is not None:
    s = s + np.asarray(bias, np.float64)
  if mask is not None:
    s = np.where(np.broadcast_to(np.asarray(mask), s.shape), s, -1e30)
  s = s - s.max(-1, keepdims=True)
  p = np.exp(s)
  p = p / p.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", p, v)


B, T, D = 2, 12, 16
HEADS = [(4, 4), (4, 2), (4, 1)]  # MHA, GQA, MQA
MASKS = ["none", "causal", "padding", "segment", "window", "causal+padding+segment+window"]


def _inputs(h, kvh, seed=0):
  r = np.random.RandomState(seed)
  q = r.randn(B, T, h, D).astype(np.float32)
  k = r.randn(B, T, kvh, D).astype(np.float32)
  v = r.randn(B, T, kvh, D).astype(np.float32)
  bias = r.randn(1, h, T, T).astype(np.float32)
  return q, k, v, bias


def _mask(kind):
  """Returns the dense [batch, 1, T, T] bool mask of `kind`, its conditions written out in NumPy."""
  if kind == "none":
    return None
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  valid = np.ones((B, T), bool)
  valid[1, 9:] = False
  seg = np.array([[1] * 5 + [2] * 7, [1] * 8 + [2] * 4])
  parts = {
      "causal": np.broadcast_to(j <= i, (B, T, T)),
      "padding": np.broadcast_to(valid[:, None, :], (B, T, T)),
      "segment": seg[:, :, None] == seg[:, None, :],
      "window": np.broadcast_to(np.abs(i - j) < 3, (B, T, T)),
  }
  return jnp.asarray(np.logical_and.reduce([parts[p] for p in kind.split("+")])[:, None])


def _structure(kind):
  """Returns the tfm.attention.Mask of the same kind as _mask (None for "none")."""
  if kind == "none":
    return None
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  valid = jnp.ones((B, T), jnp.int32).at[1, 9:].set(0)
  seg = jnp.array([[1] * 5 + [2] * 7, [1] * 8 + [2] * 4])
  parts = kind.split("+")
  return core.self_mask(T, causal="causal" in parts, positions=pos,
                        attention_mask=valid if "padding" in parts else None,
                        segment_ids=seg if "segment" in parts else None, window=3 if "window" in parts else None)


@pytest.mark.parametrize("heads,mask_kind,with_bias",
                         list(itertools.product(HEADS, MASKS, [False, True])))
def test_core_matches_numpy_and_jax_nn(heads, mask_kind, with_bias):
  h, kvh = heads
  q, k, v, bias = _inputs(h, kvh)
  bias = bias if with_bias else None
  mask = _mask(mask_kind)
  ref = numpy_attention(q, k, v, None if mask is None else np.asarray(mask), bias)
  jax_nn = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
  for impl in ("xla", "reference"):
    out = core.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), bias=bias, mask=mask,
                                     implementation=impl)
    assert out.shape == (B, T, h, D)
    assert np.max(np.abs(np.asarray(out, np.float64) - ref)) <= 1e-5, impl
    assert np.max(np.abs(np.asarray(out) - np.asarray(jax_nn))) <= 1e-5, impl
  if bias is None:  # the same mask given as structure (a dense bias is for the dense paths only)
    for impl in ("auto", "xla", "reference"):
      out = core.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=_structure(mask_kind),
                                       implementation=impl)
      assert np.max(np.abs(np.asarray(out, np.float64) - ref)) <= 1e-5, impl


def test_custom_scale_and_cross_lengths():
  r = np.random.RandomState(1)
  q = r.randn(2, 3, 4, 8).astype(np.float32)
  k = r.randn(2, 7, 2, 8).astype(np.float32)
  v = r.randn(2, 7, 2, 8).astype(np.float32)
  mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3], bool)[:, None, None, :]  # [batch, 1, 1, kv_len]
  ref = numpy_attention(q, k, v, np.asarray(mask), scale=1.0)
  for impl in ("xla", "reference"):
    out = core.dot_product_attention(q, k, v, mask=mask, scale=1.0, implementation=impl)
    assert np.max(np.abs(np.asarray(out, np.float64) - ref)) <= 1e-5


def test_softmax_in_float32_for_bfloat16_inputs():
  q, k, v, bias = _inputs(4, 2, seed=3)
  # Large scores: a bf16 softmax would lose most of the probability mass resolution.
  q16, k16, v16 = (jnp.asarray(x * 4, jnp.bfloat16) for x in (q, k, v))
  out = core.dot_product_attention(q16, k16, v16, bias=bias, implementation="reference")
  assert out.dtype == jnp.bfloat16
  ref = numpy_attention(np.asarray(q16, np.float32), np.asarray(k16, np.float32), np.asarray(v16, np.float32),
                        bias=bias)
  # bf16 has ~3 significant digits; a bf16 softmax over 12 keys with scores ~±100 is far worse than this.
  assert np.max(np.abs(np.asarray(out, np.float64) - ref)) < 0.1 * np.max(np.abs(ref))


def test_fully_masked_rows_are_finite():
  q, k, v, _ = _inputs(4, 4)
  mask = jnp.zeros((B, 1, T, T), bool)
  for impl in ("xla", "reference"):
    out = core.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    assert np.all(np.isfinite(np.asarray(out)))


def test_attention_dropout():
  q, k, v, _ = _inputs(4, 4)
  base = core.dot_product_attention(q, k, v, implementation="reference")
  same = core.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=True)
  np.testing.assert_allclose(np.asarray(same), np.asarray(base), atol=1e-5)
  d1 = core.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(1),
                                  deterministic=False)
  d2 = core.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(2),
                                  deterministic=False)
  assert np.max(np.abs(np.asarray(d1) - np.asarray(base))) > 1e-2
  assert np.max(np.abs(np.asarray(d1) - np.asarray(d2))) > 1e-2
  # Inverted dropout keeps the expectation: the mean over many keys' outputs stays close.
  assert abs(float(jnp.mean(d1)) - float(jnp.mean(base))) < 0.1
  with pytest.raises(ValueError, match="dropout_rng"):
    core.dot_product_attention(q, k, v, dropout_rate=0.5, deterministic=False)


def test_shape_and_implementation_errors():
  q, k, v, _ = _inputs(4, 4)
  with pytest.raises(ValueError, match="multiple of kv_heads"):
    core.dot_product_attention(q, k[:, :, :3], v[:, :, :3])
  with pytest.raises(ValueError, match="implementation"):
    core.dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match="same shape"):
    core.dot_product_attention(q, k, v[:, :5])


def test_mask_structure_matches_definitions():
  """Mask.dense (what every dense path and, per block, the blockwise path use) against the definitions."""
  i, j = np.arange(4)[:, None], np.arange(4)[None, :]
  causal = np.asarray(core.self_mask(4, causal=True).dense())
  assert causal.shape == (1, 1, 4, 4) and np.array_equal(causal[0, 0], j <= i)
  window = np.asarray(core.self_mask(4, causal=False, window=2).dense())[0, 0]
  np.testing.assert_array_equal(window, np.abs(i - j) < 2)
  seg = jnp.array([[1, 1, 2, 2]])
  np.testing.assert_array_equal(np.asarray(core.self_mask(4, causal=False, segment_ids=seg).dense())[0, 0],
                                np.kron(np.eye(2, dtype=bool), np.ones((2, 2), bool)))
  pad = np.asarray(core.self_mask(4, causal=False, attention_mask=jnp.array([[1, 1, 1, 0]])).dense())
  assert pad.shape == (1, 1, 1, 4) and pad[0, 0, 0].tolist() == [True, True, True, False]
  pos = jnp.array([[2, 3]])
  dm = np.asarray(core.cached_mask(jnp.int32(2), 2, 5, q_positions=pos, kv_positions=jnp.arange(5)[None]).dense())
  np.testing.assert_array_equal(dm[0, 0], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
  assert core.self_mask(4, causal=False).dense() is None and core.cross_mask(3) is None
  cm = np.asarray(core.cross_mask(3, jnp.array([[1, 1, 0, 0, 1]])).dense())
  assert cm.shape == (1, 1, 1, 5) and cm[0, 0, 0].tolist() == [True, True, False, False, True]


def test_update_kv_cache_writes_at_index():
  # caches are heads-major [batch, kv_heads, max_len, head_dim]; new k, v come as [batch, t, kv_heads, head_dim]
  ck = jnp.zeros(core.cache_shape(2, 6, 2, 3))
  cv = jnp.zeros(core.cache_shape(2, 6, 2, 3))
  k = jnp.arange(2 * 2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 2, 3) + 1
  nk, nv = core.update_kv_cache(ck, cv, k, 2 * k, jnp.int32(3))
  view = np.asarray(core.cache_view(nk))  # [batch, max_len, kv_heads, head_dim]
  np.testing.assert_array_equal(view[:, 3:5], np.asarray(k))
  assert view[:, :3].max() == 0 and view[:, 5:].max() == 0
  np.testing.assert_array_equal(np.asarray(core.cache_view(nv))[:, 3:5], 2 * np.asarray(k))


@pytest.mark.parametrize("length,heads,with_bias,pad_rows", [(256, (4, 2), True, False), (512, (2, 2), False, True),
                                                             (96, (2, 1), True, True)])
def test_causal_blocks_match_numpy_and_jax_nn_is_causal(length, heads, with_bias, pad_rows):
  """causal=True (queries split into blocks over a key prefix) equals float64 NumPy and jax.nn's is_causal."""
  h, kvh = heads
  assert core.causal_blocks(length) == {256: 2, 512: 4, 96: 1}[length]
  r = np.random.default_rng(length)
  q = jnp.asarray(r.standard_normal((2, length, h, 16)), jnp.float32)
  k, v = (jnp.asarray(r.standard_normal((2, length, kvh, 16)), jnp.float32) for _ in range(2))
  bias = jnp.asarray(r.standard_normal((1, h, length, length)), jnp.float32) if with_bias else None
  valid = np.ones((2, length), bool)
  valid[1, length // 3:] = False  # padding keys: a [batch, 1, 1, kv_len] mask that broadcasts over queries
  mask = jnp.asarray(valid)[:, None, None, :] if pad_rows else None  # [batch, 1, 1, kv_len]
  structure = core.self_mask(length, causal=True, attention_mask=jnp.asarray(valid) if pad_rows else None)
  dense_bias = bias
  tri = np.tril(np.ones((length, length), bool))[None, None]
  want = numpy_attention(q, k, v, mask=tri if mask is None else np.logical_and(tri, np.asarray(mask)), bias=bias)
  # everything runs under jit (as in a model): one compile per function instead of one per op
  # The dense paths take the structure (the causal part as query blocks) and a dense bias of the same size.
  for impl in ("xla", "reference"):
    got = jax.jit(functools.partial(core.dot_product_attention, implementation=impl))(
        q, k, v, bias=dense_bias, mask=structure)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
  ref = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=True))(q, k, v, bias=bias, mask=mask)
  got = jax.jit(functools.partial(core.dot_product_attention, implementation="xla"))(q, k, v, bias=bias, mask=structure)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5, rtol=1e-5)
  # gradients equal those of the unsplit kernel given the causal mask as a dense array
  f = lambda m: jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(core.dot_product_attention(
      q, k, v, bias=bias, mask=m, implementation="xla"))), argnums=(0, 1, 2)))
  for a, b in zip(f(structure)(q, k, v), f(jnp.asarray(tri) if mask is None else jnp.logical_and(mask, jnp.asarray(tri)))(q, k, v)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


def test_a_mask_must_describe_the_inputs():
  q = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match="mask describes 4 queries and 4 keys"):
    core.dot_product_attention(q, jnp.zeros((1, 6, 2, 8)), jnp.zeros((1, 6, 2, 8)), mask=core.self_mask(4, causal=True))


def test_recorded_paths_name_the_kernel_each_call_took():
  q, k, v, _ = _inputs(4, 2)
  with core.recorded_paths() as paths:
    core.dot_product_attention(q, k, v, mask=_structure("causal"), implementation="auto")
    core.dot_product_attention(q, k, v, mask=_structure("padding"), implementation="blockwise")
    core.dot_product_attention(q, k, v, implementation="reference")
  assert paths == ["xla", "blockwise", "reference"]  # auto on CPU below BLOCKWISE_MIN_LEN keys: xla
  core.dot_product_attention(q, k, v)
  assert len(paths) == 3  # nothing is recorded outside the block
