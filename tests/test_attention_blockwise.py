"""tfm.attention.blockwise (FlashAttention-2 in plain JAX) against a float64 NumPy reference.

Values and gradients (q, k, v, the T5 table, the ALiBi slopes) over MHA / GQA / MQA, every mask kind and
both biases, with blocks of 16 over 37 tokens (several blocks, ragged edges); cached decoding; dropout;
the memory claim (no [q_len, kv_len] buffer in the compiled gradient); and the blocks skipped.
The reference writes the mask conditions out in NumPy from the same arrays; it uses no tfm code.
"""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from tfm import attention as core
from tfm.attention import blockwise
from tfm.attention.structure import Bias, cached_mask, cross_mask, self_mask

B, T, D = 2, 37, 8
BLOCK = 16  # 37 tokens: 3 query and key blocks, the last one ragged
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
MASKS = ["none", "causal", "padding", "segments", "window", "causal+window", "all"]
BIASES = ["none", "relative", "alibi"]
NUM_BUCKETS, MAX_DISTANCE = 32, 20  # (see test_numpy_buckets_are_exact_at_these_settings)
WINDOW = 6
TOL = 1e-5  # max |blockwise - float64| <= TOL * max(1, max |reference|)


# ----------------------------------------------------------------------------------------------
# The float64 NumPy reference
# ----------------------------------------------------------------------------------------------


def np_buckets(rel, bidirectional, num_buckets, max_distance, dtype=np.float64):
  """Returns T5's bucket of every (key - query) offset, written out in NumPy."""
  n = -rel
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  large = max_exact + (np.log(np.maximum(n, 1).astype(dtype) / dtype(max_exact))
                       / dtype(np.log(max_distance / max_exact)) * dtype(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return ret + np.where(n < max_exact, n, large)


def np_allowed(q_index, kv_index, causal=False, window=None, q_pos=None, kv_pos=None, q_seg=None,
               kv_seg=None, kv_valid=None, batch=B):
  """Returns [batch, q_len, kv_len] bool: the conditions of a Mask, written out in NumPy."""
  ok = np.ones((batch, len(q_index), len(kv_index)), bool)
  if causal:
    ok &= (np.asarray(kv_index)[None, :] <= np.asarray(q_index)[:, None])[None]
  if window:
    ok &= np.abs(np.asarray(q_pos)[:, :, None] - np.asarray(kv_pos)[:, None, :]) < window
  if q_seg is not None:
    ok &= np.asarray(q_seg)[:, :, None] == np.asarray(kv_seg)[:, None, :]
  if kv_valid is not None:
    ok &= np.asarray(kv_valid, bool)[:, None, :]
  return ok


def np_bias(kind, params, q_pos, kv_pos):
  """Returns the dense [batch, heads, q_len, kv_len] bias and its buckets / distances (for the gradient)."""
  rel = np.asarray(kv_pos)[:, None, :] - np.asarray(q_pos)[:, :, None]  # [batch, q_len, kv_len]
  params = np.asarray(params, np.float64)
  if kind == "alibi":
    dist = np.abs(rel).astype(np.float64)
    return -params[None, :, None, None] * dist[:, None], dist
  buckets = np_buckets(rel, True, NUM_BUCKETS, MAX_DISTANCE)
  return np.transpose(params[buckets], (0, 3, 1, 2)), buckets


def np_attention(q, k, v, allowed, scale, dout, bias=None):
  """Returns (out, dq, dk, dv, d_bias_dense) in float64: softmax attention and its dense backward.

  allowed: [batch, q_len, kv_len]; rows with no allowed key give zeros; dout weights the outputs.
  """
  q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
  b, t, h, d = q.shape
  kvh = k.shape[2]
  g = h // kvh
  kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # query head h uses kv head h // g
  s = np.einsum("bthd,bshd->bhts", q, kr) * scale
  if bias is not None:
    s = s + bias
  ok = np.broadcast_to(allowed[:, None], s.shape)
  s = np.where(ok, s, -np.inf)
  m = np.max(s, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  p = np.where(ok, np.exp(s - m), 0.0)
  denom = p.sum(-1, keepdims=True)
  p = p / np.where(denom > 0, denom, 1.0)
  out = np.einsum("bhts,bshd->bthd", p, vr)
  dv = np.einsum("bhts,bthd->bshd", p, dout).reshape(b, -1, kvh, g, d).sum(3)
  dp = np.einsum("bthd,bshd->bhts", dout, vr)
  ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
  dq = np.einsum("bhts,bshd->bthd", ds, kr) * scale
  dk = (np.einsum("bhts,bthd->bshd", ds, q) * scale).reshape(b, -1, kvh, g, d).sum(3)
  return out, dq, dk, dv, ds


def np_bias_grad(kind, ds, aux, heads):
  """Returns the gradient of the bias parameters from the dense score gradient ds [b, h, q, k]."""
  if kind == "alibi":
    return -np.einsum("bhts,bts->h", ds, aux)
  table = np.zeros((NUM_BUCKETS, heads))
  for hh in range(heads):
    np.add.at(table[:, hh], aux.ravel(), ds[:, hh].ravel())
  return table


def assert_close(got, want, what=""):
  """Asserts max |got - want| <= TOL * max(1, max |want|)."""
  got = np.asarray(got, np.float64)
  err = np.max(np.abs(got - want)) if got.size else 0.0
  bound = TOL * max(1.0, float(np.max(np.abs(want))) if got.size else 1.0)
  assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _arrays(heads, seed=0, t=T, s=None):
  """Returns random float32 q, k, v, a cotangent, the T5 table and the ALiBi slopes."""
  h, kvh = heads
  s = t if s is None else s
  r = np.random.RandomState(seed)
  q = r.randn(B, t, h, D).astype(np.float32)
  k = r.randn(B, s, kvh, D).astype(np.float32)
  v = r.randn(B, s, kvh, D).astype(np.float32)
  dout = r.randn(B, t, h, D).astype(np.float32)
  table = r.randn(NUM_BUCKETS, h).astype(np.float32)
  slopes = r.uniform(0.05, 0.5, size=(h,)).astype(np.float32)
  return q, k, v, dout, table, slopes


def _structure(kind):
  """Returns (Mask or None, positions [batch, T], the NumPy allowed [batch, T, T])."""
  pos = np.broadcast_to(np.arange(T), (B, T)).copy()
  if kind == "none":
    return None, pos, np.ones((B, T, T), bool)
  parts = set(kind.split("+")) if kind != "all" else {"causal", "padding", "segments", "window"}
  seg = valid = None
  if "segments" in parts:
    # packed rows; row 1's last segment starts in the middle of a block
    seg = np.array([[1] * 12 + [2] * 20 + [3] * 5, [1] * 30 + [2] * 7])
    pos = np.concatenate([np.concatenate([np.arange(n) for n in (12, 20, 5)])[None],
                          np.concatenate([np.arange(n) for n in (30, 7)])[None]])
  if "padding" in parts:
    valid = np.ones((B, T), np.int32)
    valid[1, 28:] = 0  # right padding
    if "causal" in parts:
      valid[1, :3] = 0  # and left padding: queries 0-2 of row 1 then see no key at all
  causal = "causal" in parts
  window = WINDOW if "window" in parts else None
  mask = self_mask(T, causal=causal, positions=jnp.asarray(pos), window=window,
                   attention_mask=None if valid is None else jnp.asarray(valid),
                   segment_ids=None if seg is None else jnp.asarray(seg))
  idx = np.arange(T)
  allowed = np_allowed(idx, idx, causal, window, pos, pos, seg, seg, valid)
  return mask, pos, allowed


# Every mask kind with every bias, the heads layout rotating so that every (heads, mask) and every
# (heads, bias) pair occurs too: all two-way interactions in 21 compiles instead of 63 (the full
# product takes about 40 s of compiling on 2 cores).
CASES = [(list(HEADS)[(m + b) % len(HEADS)], mask, bias)
         for (m, mask), (b, bias) in itertools.product(enumerate(MASKS), enumerate(BIASES))]
# The other 42 of the full product, in the slow suite (pytest -m slow).
FULL = [pytest.param(*c, marks=pytest.mark.slow) for c in itertools.product(HEADS, MASKS, BIASES) if c not in CASES]


@pytest.mark.parametrize("heads,mask_kind,bias_kind", CASES + FULL)
def test_values_and_gradients_match_float64_numpy(heads, mask_kind, bias_kind):
  """Output and the gradients of Σ dout ∘ out wrt q, k, v and the bias parameters equal float64 NumPy."""
  h, kvh = HEADS[heads]
  q, k, v, dout, table, slopes = _arrays((h, kvh), seed=list(itertools.product(HEADS, MASKS, BIASES)).index((heads, mask_kind, bias_kind)))
  mask, pos, allowed = _structure(mask_kind)
  seen = allowed.any(-1)  # [batch, T]: rows with at least one visible key
  dout = dout * seen[:, :, None, None]  # rows that see nothing carry no cotangent (tested separately)
  params = {"none": np.zeros((), np.float32), "relative": table, "alibi": slopes}[bias_kind]
  scale = D ** -0.5

  def make_bias(p):
    if bias_kind == "none":
      return None
    return Bias(params=p, q_positions=jnp.asarray(pos), kv_positions=jnp.asarray(pos), kind=bias_kind,
                bidirectional=True, max_distance=MAX_DISTANCE)

  def loss(q, k, v, p):
    out = blockwise.attention(q, k, v, mask, make_bias(p), scale=scale, block_q=BLOCK, block_k=BLOCK)
    return jnp.sum(out * dout), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, params)
  dense_bias, aux = (None, None) if bias_kind == "none" else np_bias(bias_kind, params, pos, pos)
  want, dq, dk, dv, ds = np_attention(q, k, v, allowed, scale, dout, dense_bias)
  assert out.shape == (B, T, h, D) and out.dtype == jnp.float32
  assert_close(np.asarray(out)[seen], want[seen], "out")
  assert_close(grads[0], dq, "dq")
  assert_close(grads[1], dk, "dk")
  assert_close(grads[2], dv, "dv")
  if bias_kind != "none":
    assert_close(grads[3], np_bias_grad(bias_kind, ds, aux, h), "d bias params")
  if not seen.all():  # rows that may attend to no key: exactly zero
    assert np.all(np.asarray(out)[~seen] == 0.0)


def test_cases_cover_every_pair():
  """The 21 cases hold every (heads, mask), (heads, bias) and (mask, bias) pair."""
  for a, b_ in ((0, 1), (0, 2), (1, 2)):
    pairs = {(c[a], c[b_]) for c in CASES}
    assert len(pairs) == len([HEADS, MASKS, BIASES][a]) * len([HEADS, MASKS, BIASES][b_])


@pytest.mark.parametrize("block_q,block_k", [(8, 16), (16, 8)])
def test_causal_with_unequal_blocks(block_q, block_k):
  """Causal self-attention with padding, query and key blocks of different sizes, against NumPy."""
  q, k, v, dout, _, _ = _arrays((4, 2), seed=17)
  mask, _, allowed = _structure("causal+padding")
  fn = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(blockwise.attention(
      q, k, v, mask, None, scale=0.3, block_q=block_q, block_k=block_k) * dout), argnums=(0, 1, 2)))
  _, grads = fn(q, k, v)
  out = blockwise.attention(q, k, v, mask, None, scale=0.3, block_q=block_q, block_k=block_k)
  want, dq, dk, dv, _ = np_attention(q, k, v, allowed, 0.3, dout)
  assert_close(out, want, "out")
  for got, ref, name in zip(grads, (dq, dk, dv), "qkv"):
    assert_close(got, ref, "d" + name)


def test_numpy_buckets_are_exact_at_these_settings():
  """The float64 NumPy buckets equal float32 ones at NUM_BUCKETS / MAX_DISTANCE (no offset on a rounding edge)."""
  rel = np.arange(-3 * T, 3 * T)
  np.testing.assert_array_equal(np_buckets(rel, True, NUM_BUCKETS, MAX_DISTANCE),
                                np_buckets(rel, True, NUM_BUCKETS, MAX_DISTANCE, np.float32))


def test_rows_that_see_no_key_give_zero_output_and_zero_gradients():
  """A query row that may attend to no key: output 0, and a cotangent on it alone gives zero gradients."""
  q, k, v, dout, table, _ = _arrays((4, 2), seed=5)
  mask, pos, allowed = _structure("all")
  empty = ~allowed.any(-1)
  assert empty.sum() == 10  # row 1: queries 0-2 (left padding), 30-36 (a segment of padding keys only)
  only_empty = dout * empty[:, :, None, None]
  bias = Bias(params=jnp.asarray(table), q_positions=jnp.asarray(pos), kv_positions=jnp.asarray(pos))

  def loss(q, k, v, p):
    out = blockwise.attention(q, k, v, mask, bias.replace(params=p), scale=0.3, block_q=BLOCK, block_k=BLOCK)
    return jnp.sum(out * only_empty), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, table)
  assert np.all(np.isfinite(np.asarray(out)))
  assert np.all(np.asarray(out)[empty] == 0.0)
  for g in grads:
    assert np.all(np.asarray(g) == 0.0)


def test_cross_attention_lengths_and_encoder_padding():
  """q_len != kv_len (cross attention, encoder padding), ragged in both, against NumPy."""
  q, k, v, dout, _, _ = _arrays((4, 2), seed=7, t=21, s=T)
  enc = np.ones((B, T), np.int32)
  enc[0, 19:] = 0
  mask = cross_mask(21, encoder_mask=jnp.asarray(enc))
  allowed = np_allowed(np.arange(21), np.arange(T), kv_valid=enc)
  fn = jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(blockwise.attention(
      q, k, v, mask, None, scale=0.4, block_q=8, block_k=BLOCK) * dout), argnums=(0, 1, 2)))
  _, grads = fn(q, k, v)
  out = blockwise.attention(q, k, v, mask, None, scale=0.4, block_q=8, block_k=BLOCK)
  want, dq, dk, dv, _ = np_attention(q, k, v, allowed, 0.4, dout)
  assert_close(out, want, "out")
  for got, ref, name in zip(grads, (dq, dk, dv), "qkv"):
    assert_close(got, ref, "d" + name)


# ----------------------------------------------------------------------------------------------
# Cached decoding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q_len", [1, 3])
def test_cached_decoding_matches_numpy_and_never_reads_unwritten_slots(q_len):
  """q_len new queries at cache slot 17 of 40: equal to NumPy; slots in key blocks after the last
  query's block are never read (they hold NaN here, which would poison any block that touched them)."""
  max_len, index = 40, 17
  q, k, v, _, _, _ = _arrays((4, 2), seed=11, t=q_len, s=max_len)
  k[:, 32:] = np.nan  # key blocks of 16: block 2 (slots 32-39) lies after every query slot (<= 19)
  v[:, 32:] = np.nan
  qpos = jnp.broadcast_to(index + jnp.arange(q_len), (B, q_len))
  kvpos = jnp.broadcast_to(jnp.arange(max_len), (B, max_len))
  for window in (None, 5):
    mask = cached_mask(jnp.int32(index), q_len, max_len, q_positions=qpos, kv_positions=kvpos, window=window)
    out = jax.jit(lambda q, k, v: blockwise.attention(q, k, v, mask, None, scale=D ** -0.5, block_k=BLOCK))(q, k, v)
    allowed = np_allowed(index + np.arange(q_len), np.arange(max_len), True, window, np.asarray(qpos),
                         np.asarray(kvpos))
    want, *_ = np_attention(q, np.nan_to_num(k), np.nan_to_num(v), allowed, D ** -0.5,
                            np.zeros_like(q))
    assert np.all(np.isfinite(np.asarray(out)))
    assert_close(out, want, f"decode window={window}")


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def _dense_dropout_attention(q, k, v, allowed, scale, rate, rng, block):
  """Returns a straightforward dense dropout attention with the blockwise kernel's per-block keep-masks."""
  b, t, h, d = q.shape
  kvh = k.shape[2]
  g = h // kvh
  nq, nk = -(-t // block), -(-k.shape[1] // block)
  rows = []
  for i in range(nq):  # keep-mask of block (i, j): bernoulli(fold_in(rng, i * nk + j)) (the documented scheme)
    cols = [jax.random.bernoulli(jax.random.fold_in(rng, i * nk + j), 1.0 - rate, (b, kvh, g, block, block))
            for j in range(nk)]
    rows.append(jnp.concatenate(cols, axis=-1))
  keep = jnp.concatenate(rows, axis=-2).reshape(b, h, nq * block, nk * block)[:, :, :t, :k.shape[1]]
  kr, vr = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
  s = jnp.einsum("bthd,bshd->bhts", q, kr) * scale
  s = jnp.where(allowed[:, None], s, -1e30)
  p = jax.nn.softmax(s, axis=-1)
  p = jnp.where(keep, p / (1.0 - rate), 0.0)
  return jnp.einsum("bhts,bshd->bthd", p, vr)


def test_dropout_backward_equals_autodiff_of_dense_dropout_and_check_grads():
  """The custom backward with dropout equals autodiff of a dense dropout attention using the same
  per-block masks, and passes check_grads (finite differences, float32)."""
  q, k, v, dout, _, _ = _arrays((4, 2), seed=3)
  mask, _, allowed = _structure("causal+window")
  rate, rng = 0.3, jax.random.PRNGKey(42)

  def blockwise_fn(q, k, v):
    return blockwise.attention(q, k, v, mask, None, scale=0.35, dropout_rate=rate, dropout_rng=rng,
                               block_q=BLOCK, block_k=BLOCK)

  def dense_fn(q, k, v):
    return _dense_dropout_attention(q, k, v, jnp.asarray(allowed), 0.35, rate, rng, BLOCK)

  got, got_vjp = jax.vjp(jax.jit(blockwise_fn), q, k, v)
  want, want_vjp = jax.vjp(jax.jit(dense_fn), q, k, v)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert float(jnp.mean(got == 0.0)) < 0.5  # dropout did not silence whole rows
  for a, b_ in zip(got_vjp(jnp.asarray(dout)), want_vjp(jnp.asarray(dout))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-5)
  # Finite differences of the float32 function itself (the masks are fixed by rng): 1e-2 relative is
  # far below what a wrong dropout scale in the backward (a factor 1 / (1 - rate)) would give.
  check_grads(jax.jit(blockwise_fn), (q, k, v), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)


def test_dropout_rngs_differ_and_rate_zero_is_no_dropout():
  q, k, v, _, _, _ = _arrays((4, 4), seed=4)
  mask = self_mask(T, causal=True)
  run = jax.jit(lambda rate, rng: blockwise.attention(q, k, v, mask, None, scale=0.3, dropout_rate=rate,
                                                      dropout_rng=rng, block_q=BLOCK, block_k=BLOCK),
                static_argnums=0)
  base = blockwise.attention(q, k, v, mask, None, scale=0.3, block_q=BLOCK, block_k=BLOCK)
  d1, d2 = run(0.5, jax.random.PRNGKey(1)), run(0.5, jax.random.PRNGKey(2))
  assert np.max(np.abs(np.asarray(d1) - np.asarray(d2))) > 1e-2
  assert np.max(np.abs(np.asarray(d1) - np.asarray(base))) > 1e-2
  np.testing.assert_array_equal(np.asarray(run(0.0, jax.random.PRNGKey(1))), np.asarray(base))
  # typed keys work as well as raw uint32 ones
  d3 = run(0.5, jax.random.key(1))
  assert d3.shape == base.shape and np.all(np.isfinite(np.asarray(d3)))
  dq = jax.jit(jax.grad(lambda q: jnp.sum(blockwise.attention(q, k, v, mask, None, scale=0.3, dropout_rate=0.5,
                                                      dropout_rng=jax.random.key(1), block_q=BLOCK,
                                                      block_k=BLOCK))))(q)
  assert np.all(np.isfinite(np.asarray(dq)))
  with pytest.raises(ValueError, match="dropout_rng"):
    blockwise.attention(q, k, v, mask, None, scale=0.3, dropout_rate=0.5)


# ----------------------------------------------------------------------------------------------
# Memory and skipped blocks
# ----------------------------------------------------------------------------------------------


def _largest_buffer(hlo_text):
  """Returns the element count of the largest array shape written in an HLO text."""
  sizes = [int(np.prod([int(x) for x in dims.split(",")])) for dims in re.findall(r"\[(\d+(?:,\d+)*)\]", hlo_text)]
  return max(sizes)


def test_gradient_never_holds_a_q_len_by_kv_len_buffer():
  """jit(grad) at len 4096 (head_dim 16, 1 head): no array of q_len * kv_len elements in the compiled HLO
  (every shape in the text is scanned), and XLA's temporary memory is under one such float32 array.
  The same checks on the dense reference path do find one, so they can fail."""
  n = 4096
  q = jax.ShapeDtypeStruct((1, n, 1, 16), jnp.float32)
  mask = self_mask(n, causal=True)

  def compiled(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile()

  flash = compiled(lambda q, k, v: blockwise.attention(q, k, v, mask, None, scale=0.25))
  dense = compiled(lambda q, k, v: core.dot_product_attention(q, k, v, mask=mask, implementation="reference"))
  assert _largest_buffer(dense.as_text()) >= n * n  # the check sees a score matrix where there is one
  assert _largest_buffer(flash.as_text()) < n * n // 16
  temp = flash.memory_analysis().temp_size_in_bytes
  assert temp < n * n * 4 // 8, temp  # 8x below one float32 [4096, 4096] array
  assert dense.memory_analysis().temp_size_in_bytes >= n * n * 4


def _count_blocks(monkeypatch, fn, *args):
  """Returns how many score blocks fn(*args) computes: calls of blockwise._block_scores at run time."""
  calls = []
  inner = blockwise._block_scores

  def counted(*a, **kw):
    jax.debug.callback(lambda: calls.append(1))
    return inner(*a, **kw)

  monkeypatch.setattr(blockwise, "_block_scores", counted)
  jax.block_until_ready(jax.jit(fn)(*args))
  jax.effects_barrier()
  monkeypatch.setattr(blockwise, "_block_scores", inner)
  return len(calls)


def test_blocks_above_the_causal_diagonal_are_not_computed(monkeypatch):
  """64 tokens in blocks of 16 (4 x 4 blocks): causal attention computes the 10 blocks on and below the
  diagonal in the forward pass and 10 again in the backward pass; without a mask all 16."""
  q, k, v, _, _, _ = _arrays((2, 1), seed=2, t=64)

  def run(mask):
    def loss(q, k, v):
      return jnp.sum(blockwise.attention(q, k, v, mask, None, scale=0.3, block_q=BLOCK, block_k=BLOCK))
    return loss

  assert _count_blocks(monkeypatch, run(self_mask(64, causal=True)), q, k, v) == 10
  assert _count_blocks(monkeypatch, jax.grad(run(self_mask(64, causal=True)), argnums=(0, 1, 2)), q, k, v) == 20
  assert _count_blocks(monkeypatch, run(None), q, k, v) == 16
  # Two packed segments of 32: the 8 blocks across segments are all False and skipped (lax.cond).
  seg = jnp.asarray(np.repeat([[1, 2]], B, axis=0).repeat(32, axis=1))
  segmented = self_mask(64, causal=False, segment_ids=seg)
  assert _count_blocks(monkeypatch, run(segmented), q, k, v) == 8
  assert _count_blocks(monkeypatch, jax.grad(run(segmented), argnums=(0, 1, 2)), q, k, v) == 16


def test_causal_query_blocks_never_touch_later_keys():
  """Values after the first key block are NaN: the first query block's outputs and query gradients
  stay finite and exact (a block that read them, even masked, would be NaN: 0 * NaN)."""
  q, k, v, dout, _, _ = _arrays((4, 2), seed=9)
  v[:, BLOCK:] = np.nan
  mask = self_mask(T, causal=True)
  first = np.zeros((B, T, 1, 1), np.float32)
  first[:, :BLOCK] = 1.0

  def loss(q):
    out = blockwise.attention(q, k, v, mask, None, scale=0.3, block_q=BLOCK, block_k=BLOCK)
    return jnp.sum(out * dout * first), out

  (_, out), dq = jax.jit(jax.value_and_grad(loss, has_aux=True))(q)
  allowed = np_allowed(np.arange(BLOCK), np.arange(BLOCK), True)
  want, want_dq, *_ = np_attention(q[:, :BLOCK], k[:, :BLOCK], v[:, :BLOCK], allowed, 0.3, dout[:, :BLOCK])
  assert_close(np.asarray(out)[:, :BLOCK], want, "out")
  assert_close(np.asarray(dq)[:, :BLOCK], want_dq, "dq")


# ----------------------------------------------------------------------------------------------
# Through the attention core
# ----------------------------------------------------------------------------------------------


def test_dot_product_attention_blockwise_end_to_end():
  """dot_product_attention(implementation="blockwise") with a self_mask (default blocks: one block here)
  equals the reference path, values and gradients, float32; bfloat16 keeps its dtype."""
  q, k, v, dout, table, _ = _arrays((4, 2), seed=13)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  am = jnp.ones((B, T), jnp.int32).at[0, 30:].set(0)
  mask = self_mask(T, causal=True, positions=pos, attention_mask=am, window=9)
  bias = Bias(params=jnp.asarray(table), q_positions=pos, kv_positions=pos, max_distance=MAX_DISTANCE)

  def loss(impl, q, k, v, p):
    out = core.dot_product_attention(q, k, v, mask=mask, bias=bias.replace(params=p), implementation=impl)
    return jnp.sum(out * dout), out

  grad = lambda impl: jax.jit(jax.value_and_grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2, 3), has_aux=True))
  (_, got), got_g = grad("blockwise")(q, k, v, table)
  (_, want), want_g = grad("reference")(q, k, v, table)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  for a, b_ in zip(got_g, want_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-4, rtol=1e-5)
  q16, k16, v16 = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
  out16 = core.dot_product_attention(q16, k16, v16, mask=mask, implementation="blockwise")
  ref16 = core.dot_product_attention(q16, k16, v16, mask=mask, implementation="reference")
  assert out16.dtype == jnp.bfloat16
  assert np.max(np.abs(np.asarray(out16, np.float32) - np.asarray(ref16, np.float32))) < 0.05
