"""The fused attention kernels (tfm/attention/gpu.py, tpu.py) on the CPU.

- cuDNN cannot run here: `jax.nn.dot_product_attention` is replaced by a recorder that checks it gets the
  structure (is_causal, sequence lengths, window), never a mask or bias array, and then computes with
  implementation="xla" on the same arguments, so the values also check what those arguments mean.
- The Pallas GPU (Triton) kernel and splash attention run in the Pallas interpreter (interpret=True) and
  are compared with a float64 NumPy reference written here: values and gradients within 1e-5 in float32
  (inputs ~N(0, 1); the kernels accumulate in float32, the measured error is ~1e-6).
- Splash under a mesh runs in jax.shard_map (batch over data/fsdp, heads over tensor); on 8 fake CPU devices
  (a subprocess: the device count is fixed when JAX starts) it equals the one-device result.
- Under a faked TPU / GPU platform, "auto" picks the fused kernel for what it takes, and "blockwise" for a
  bias or dropout.
"""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm.attention as core
from tfm.attention import gpu, tpu
from tfm.attention.structure import Bias, cached_mask, self_mask

TOL = 1e-5  # float32 kernels vs the float64 reference, values and gradients


# ----------------------------------------------------------------------------------------------
# The float64 reference and helpers
# ----------------------------------------------------------------------------------------------


def allowed_np(length, batch, *, causal, positions=None, segments=None, valid=None, window=None):
  """Returns [batch, length, length] bool: may query i attend key j (the Mask rules, in NumPy)."""
  i, j = np.arange(length)[:, None], np.arange(length)[None, :]
  out = np.ones((batch, length, length), bool)
  if causal:
    out &= (j <= i)[None]
  if window:
    out &= np.abs(positions[:, :, None] - positions[:, None, :]) < window
  if segments is not None:
    out &= segments[:, :, None] == segments[:, None, :]
  if valid is not None:
    out &= valid[:, None, :].astype(bool)
  return out


def reference(q, k, v, allowed, scale, dout):
  """Returns (out, (dq, dk, dv)) of softmax attention in float64, for the cotangent `dout`."""
  q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  g = h // kv_heads
  kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # [b, s, h, d]: query head h reads kv head h // g
  s = np.einsum("bthd,bshd->bhts", q, kr) * scale
  s = np.where(allowed[:, None], s, -np.inf)
  top = np.where(allowed.any(-1)[:, None, :, None], s.max(-1, keepdims=True), 0.0)
  p = np.exp(s - top)
  p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)  # [b, h, t, s]; a row hidden from every key: 0
  out = np.einsum("bhts,bshd->bthd", p, vr)
  dp = np.einsum("bthd,bshd->bhts", dout, vr)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhts,bshd->bthd", ds, kr) * scale
  dk = np.einsum("bhts,bthd->bshd", ds, q) * scale
  dv = np.einsum("bhts,bthd->bshd", p, dout)
  fold = lambda x: x.reshape(b, x.shape[1], kv_heads, g, d).sum(3)  # sum each group onto its kv head
  return out, (dq, fold(dk), fold(dv))


def qkv(batch, length, heads, kv_heads, head_dim, dtype=jnp.float32, seed=0):
  """Returns q, k, v, dout ~ N(0, 1)."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(ks[0], (batch, length, heads, head_dim)).astype(dtype)
  k = jax.random.normal(ks[1], (batch, length, kv_heads, head_dim)).astype(dtype)
  v = jax.random.normal(ks[2], (batch, length, kv_heads, head_dim)).astype(dtype)
  dout = jax.random.normal(ks[3], (batch, length, heads, head_dim)).astype(dtype)
  return q, k, v, dout


def check_against_reference(fn, q, k, v, dout, allowed, scale, tol=TOL):
  """Asserts fn(q, k, v) and its vjp match the float64 reference on every row with a visible key (a row
  hidden from every key has no defined output: it gets a zero cotangent and is not compared)."""
  rows = allowed.any(-1)  # [b, t]
  dout = jnp.where(jnp.asarray(rows)[:, :, None, None], dout, 0.0)
  out, vjp = jax.vjp(fn, q, k, v)
  grads = vjp(dout)
  ref_out, ref_grads = reference(q, k, v, allowed, scale, dout)
  np.testing.assert_allclose(np.asarray(out, np.float64)[rows], ref_out[rows], atol=tol, rtol=tol)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g, np.float64), r, atol=tol, rtol=tol, err_msg=f"d{name}")


def packed_segments(batch, length, cuts):
  """Returns ([batch, length] segment ids, [batch, length] positions restarting per segment)."""
  seg = np.zeros((batch, length), np.int32)
  for row, row_cuts in enumerate(cuts):
    for c in row_cuts:
      seg[row, c:] += 1
  pos = np.zeros_like(seg)
  for row in range(batch):
    for t in range(1, length):
      pos[row, t] = pos[row, t - 1] + 1 if seg[row, t] == seg[row, t - 1] else 0
  return seg, pos


@pytest.fixture
def blockwise_path(monkeypatch):
  """Makes `tfm.attention.blockwise` importable: the real module if present, else a dense stand-in with
  its signature (the run-time fallbacks of gpu.py / tpu.py import it)."""
  try:
    from tfm.attention import blockwise  # noqa: F401
    return
  except ImportError:
    pass

  def attention(q, k, v, mask, bias, *, scale, dropout_rate=0.0, dropout_rng=None):
    dense = None if mask is None else mask.dense()
    return core._reference_attention(q, k, v, None, dense, scale, 0.0, None, True)

  stub = types.ModuleType("tfm.attention.blockwise")
  stub.attention = attention
  monkeypatch.setitem(sys.modules, "tfm.attention.blockwise", stub)
  monkeypatch.setattr(core, "blockwise", stub, raising=False)


# ----------------------------------------------------------------------------------------------
# cuDNN: structure in, never a dense mask
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def cudnn_recorder(monkeypatch):
  """Replaces jax.nn.dot_product_attention with a recorder that computes with implementation="xla"."""
  calls = []
  original = jax.nn.dot_product_attention

  def recorder(query, key, value, bias=None, mask=None, **kwargs):
    calls.append(dict(args=(query, key, value), bias=bias, mask=mask, **kwargs))
    return original(query, key, value, bias, mask, **dict(kwargs, implementation="xla"))

  monkeypatch.setattr(jax.nn, "dot_product_attention", recorder)
  return calls


def _no_square_arrays(call, length):
  """Returns whether no argument of a recorded call is a [.., length, length] array."""
  leaves = jax.tree_util.tree_leaves([call[k] for k in call if k != "implementation"])
  return all(not (hasattr(x, "shape") and len(x.shape) >= 2 and tuple(x.shape[-2:]) == (length, length))
             for x in leaves)


def test_cudnn_gets_causal_lengths_and_window_never_a_mask(cudnn_recorder, blockwise_path):
  b, t, h, kvh, d, window = 2, 16, 4, 2, 8, 4
  q, k, v, _ = qkv(b, t, h, kvh, d, jnp.bfloat16)
  lengths = np.array([16, 11])
  attention_mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)  # right padding
  positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
  mask = self_mask(t, causal=True, positions=jnp.asarray(positions), attention_mask=jnp.asarray(attention_mask),
                   window=window)
  assert gpu.cudnn_supported(q, k, mask, None, 0.0) is None
  out = jax.jit(lambda q, k, v, m: gpu.cudnn_attention(q, k, v, m, scale=0.3))(q, k, v, mask)

  (call,) = cudnn_recorder
  assert call["implementation"] == "cudnn"
  assert call["is_causal"] is True
  assert call["local_window_size"] == (window - 1, 0)  # JAX: cuDNN sliding_window_length = window
  assert call["mask"] is None and call["bias"] is None and call.get("query_seq_lengths") is None
  assert call["key_value_seq_lengths"].shape == (b,) and call["key_value_seq_lengths"].dtype == jnp.int32
  assert _no_square_arrays(call, t)
  # The values: what those arguments mean (XLA's reading of them) is the Mask's meaning.
  allowed = allowed_np(t, b, causal=True, positions=positions, valid=attention_mask, window=window)
  ref, _ = reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), allowed, 0.3,
                     np.zeros(q.shape))
  rows = allowed.any(-1)  # the padding queries of row 1 past 14 see no key in their window: undefined
  np.testing.assert_allclose(np.asarray(out, np.float64)[rows], ref[rows], atol=3e-2, rtol=3e-2)  # bfloat16


def test_cudnn_takes_padding_as_lengths_only_when_it_is_a_prefix(cudnn_recorder, blockwise_path):
  b, t, h, d = 2, 16, 2, 8
  q, k, v, _ = qkv(b, t, h, h, d, jnp.bfloat16, seed=1)
  fn = jax.jit(lambda q, k, v, m: gpu.cudnn_attention(q, k, v, m, scale=d ** -0.5))
  upcast = [x.astype(jnp.float32) for x in (q, k, v)]
  for attention_mask, chosen in [(np.array([[1] * 16, [1] * 9 + [0] * 7]), "cudnn"),    # right padding
                                 (np.array([[1] * 16, [0] * 7 + [1] * 9]), "fallback")]:  # left padding
    mask = self_mask(t, causal=False, attention_mask=jnp.asarray(attention_mask))
    out = np.asarray(fn(q, k, v, mask), np.float64)
    ref, _ = reference(*upcast, allowed_np(t, b, causal=False, valid=attention_mask), d ** -0.5, np.zeros(q.shape))
    # Left padding read as lengths would hide the last keys instead of the first: only the fallback is right.
    np.testing.assert_allclose(out, ref, atol=3e-2, rtol=3e-2, err_msg=chosen)
  assert all(c["key_value_seq_lengths"] is not None and c["is_causal"] is False for c in cudnn_recorder)


def test_cudnn_without_padding_is_one_direct_call(cudnn_recorder):
  q, k, v, _ = qkv(1, 16, 2, 1, 8, jnp.float16)
  gpu.cudnn_attention(q, k, v, self_mask(16, causal=True), scale=0.5)
  gpu.cudnn_attention(q, k, v, None, scale=0.5)
  assert [(c["is_causal"], c["key_value_seq_lengths"], c["local_window_size"]) for c in cudnn_recorder] == [
      (True, None, None), (False, None, None)]


def test_cudnn_refusals():
  q, k, _, _ = qkv(2, 16, 4, 2, 8, jnp.bfloat16)
  causal = self_mask(16, causal=True)
  assert gpu.cudnn_supported(q, k, causal, None, 0.0) is None
  assert gpu.cudnn_supported(q, k, None, None, 0.0) is None
  pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (2, 16))
  bias = Bias(params=jnp.zeros((4,)), q_positions=pos, kv_positions=pos, kind="alibi")
  reasons = {
      "bias": gpu.cudnn_supported(q, k, causal, bias, 0.0),
      "dropout": gpu.cudnn_supported(q, k, causal, None, 0.1),
      "float32": gpu.cudnn_supported(q.astype(jnp.float32), k.astype(jnp.float32), causal, None, 0.0),
      "segments": gpu.cudnn_supported(q, k, self_mask(16, causal=True, segment_ids=jnp.zeros((2, 16), jnp.int32)),
                                      None, 0.0),
      "KV cache": gpu.cudnn_supported(q, k, cached_mask(jnp.int32(3), 16, 16, q_positions=pos, kv_positions=pos),
                                      None, 0.0),
      "bidirectional": gpu.cudnn_supported(q, k, self_mask(16, causal=False, positions=pos, window=4), None, 0.0),
      "head_dim": gpu.cudnn_supported(q[..., :6], k[..., :6], causal, None, 0.0),
  }
  for word, reason in reasons.items():
    assert reason is not None and word in reason, (word, reason)


# ----------------------------------------------------------------------------------------------
# Pallas GPU (Triton) kernel in the Pallas interpreter
# ----------------------------------------------------------------------------------------------


PALLAS_CASES = {
    "causal-mha": dict(heads=4, kv_heads=4, causal=True, packed=False),
    "bidirectional-gqa": dict(heads=4, kv_heads=2, causal=False, packed=False),
    "packed-causal-mqa": dict(heads=4, kv_heads=1, causal=True, packed=True),
}


@pytest.mark.parametrize("case", PALLAS_CASES)
def test_pallas_gpu_kernel_matches_reference(case, blockwise_path):
  c = PALLAS_CASES[case]
  b, t, d, scale = 2, 32, 16, 0.3
  q, k, v, dout = qkv(b, t, c["heads"], c["kv_heads"], d, seed=2)
  seg = None
  if c["packed"]:
    seg, _ = packed_segments(b, t, [[5, 20], [13]])
    # Two equal arrays, not one: the kernel takes one segment array, so equality is checked at run time.
    mask = self_mask(t, causal=True).replace(q_segments=jnp.asarray(seg), kv_segments=jnp.asarray(seg.copy()))
  else:
    mask = self_mask(t, causal=c["causal"])
  assert gpu.pallas_supported(q, k, mask, None, 0.0) is None
  fn = jax.jit(lambda q, k, v: gpu.pallas_attention(q, k, v, mask, scale=scale, interpret=True))
  check_against_reference(fn, q, k, v, dout, allowed_np(t, b, causal=c["causal"], segments=seg), scale)


def test_pallas_gpu_falls_back_when_query_and_key_segments_differ(blockwise_path):
  b, t, h, d = 1, 16, 2, 16
  q, k, v, _ = qkv(b, t, h, h, d, seed=6)
  q_seg, _ = packed_segments(b, t, [[6]])
  kv_seg, _ = packed_segments(b, t, [[10]])  # not the query ids: the kernel's one array cannot say this
  mask = self_mask(t, causal=False).replace(q_segments=jnp.asarray(q_seg), kv_segments=jnp.asarray(kv_seg))
  out = gpu.pallas_attention(q, k, v, mask, scale=0.5, interpret=True)
  allowed = q_seg[:, :, None] == kv_seg[:, None, :]
  ref, _ = reference(q, k, v, allowed, 0.5, np.zeros(q.shape))
  np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=TOL, rtol=TOL)


def test_pallas_gpu_refusals():
  q, k, _, _ = qkv(2, 32, 4, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(32, dtype=jnp.int32), (2, 32))
  assert gpu.pallas_supported(q, k, self_mask(32, causal=True, segment_ids=pos // 8), None, 0.0) is None
  reasons = {
      "padding": gpu.pallas_supported(q, k, self_mask(32, causal=True, attention_mask=jnp.ones((2, 32))), None, 0.0),
      "window": gpu.pallas_supported(q, k, self_mask(32, causal=True, positions=pos, window=4), None, 0.0),
      "KV cache": gpu.pallas_supported(q, k, cached_mask(jnp.int32(0), 32, 32, q_positions=pos, kv_positions=pos),
                                       None, 0.0),
      "kv_len": gpu.pallas_supported(q, k[:, :16], None, None, 0.0),
      "length": gpu.pallas_supported(q[:, :24], k[:, :24], None, None, 0.0),
      "dropout": gpu.pallas_supported(q, k, None, None, 0.1),
  }
  for word, reason in reasons.items():
    assert reason is not None and word in reason, (word, reason)


# ----------------------------------------------------------------------------------------------
# Splash attention in the Pallas interpreter
# ----------------------------------------------------------------------------------------------


SPLASH_CASES = {
    # name: heads, kv_heads, causal, packed, padded, window, the splash mask class expected
    "causal-mha": (4, 4, True, False, False, None, "CausalMask"),
    "bidirectional-gqa-packed-padded": (4, 2, False, True, True, None, "FullMask"),
    "causal-mqa-packed-window": (4, 1, True, True, False, 5, "LocalMask"),
    "local-gqa-padded": (4, 2, False, False, True, 7, "LocalMask"),
}


@pytest.fixture
def splash_masks(monkeypatch):
  """Records the mask object every splash kernel is built with."""
  seen = []
  for name in ("make_splash_mha", "make_splash_mqa"):
    original = getattr(tpu.splash, name)

    def make(mask, *args, _original=original, _name=name, **kwargs):
      seen.append((_name, mask))
      return _original(mask, *args, **kwargs)

    monkeypatch.setattr(tpu.splash, name, make)
  return seen


@pytest.mark.parametrize("case", SPLASH_CASES)
def test_splash_matches_reference(case, splash_masks, blockwise_path):
  heads, kv_heads, causal, packed, padded, window, mask_class = SPLASH_CASES[case]
  b, t, d, scale = 2, 128, 16, 0.3
  q, k, v, dout = qkv(b, t, heads, kv_heads, d, seed=3)
  seg, pos = packed_segments(b, t, [[40, 90], [77]]) if packed else (None, np.broadcast_to(np.arange(t), (b, t)))
  valid = None
  if padded:
    valid = np.ones((b, t), np.int32)
    valid[1, 100:] = 0  # right padding, the padding keys in the last segment
    valid[0, 20:30] = 0  # and a hole, which only segment ids (not lengths) can express
  mask = self_mask(t, causal=causal, positions=jnp.asarray(pos, jnp.int32) if window else None,
                   attention_mask=None if valid is None else jnp.asarray(valid),
                   segment_ids=None if seg is None else jnp.asarray(seg), window=window)
  assert tpu.splash_supported(q, k, mask, None, 0.0) is None
  fn = jax.jit(lambda q, k, v, m: tpu.splash_attention(q, k, v, m, scale=scale, interpret=True))
  allowed = allowed_np(t, b, causal=causal, positions=pos, segments=seg, valid=valid, window=window)
  check_against_reference(lambda q, k, v: fn(q, k, v, mask), q, k, v, dout, allowed, scale)

  kinds = {name for name, _ in splash_masks}
  assert kinds == {"make_splash_mqa" if kv_heads == 1 else "make_splash_mha"}
  for _, m in splash_masks:  # a mask object per head, never an array
    assert isinstance(m, tpu.splash.MultiHeadMask) and len(m.masks) == heads
    assert all(type(x).__name__ == mask_class for x in m.masks)
    if window:
      assert m.masks[0].window_size == (window - 1, 0 if causal else window - 1)


def test_splash_window_falls_back_when_positions_do_not_follow_the_index(splash_masks, blockwise_path):
  b, t, h, d, window = 1, 128, 2, 16, 4
  q, k, v, _ = qkv(b, t, h, h, d, seed=4)
  pos = np.arange(t)[None] * 2  # positions two apart: an index window of 4 is a position window of 2
  mask = self_mask(t, causal=True, positions=jnp.asarray(pos, jnp.int32), window=window)
  out = tpu.splash_attention(q, k, v, mask, scale=0.5, interpret=True)
  ref, _ = reference(q, k, v, allowed_np(t, b, causal=True, positions=pos, window=window), 0.5, np.zeros(q.shape))
  np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=TOL, rtol=TOL)


def test_splash_under_a_mesh_runs_in_shard_map(monkeypatch):
  from tfm.parallel.mesh import make_mesh
  b, t, h, kvh, d = 2, 128, 4, 2, 16
  q, k, v, _ = qkv(b, t, h, kvh, d, seed=5)
  mask = self_mask(t, causal=True)
  calls = []
  original = jax.shard_map
  monkeypatch.setattr(jax, "shard_map", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
  fn = jax.jit(lambda q, k, v: tpu.splash_attention(q, k, v, mask, scale=0.25, interpret=True))
  with jax.set_mesh(make_mesh(1, 1, 1, devices=jax.devices()[:1])):
    assert tpu.splash_supported(q, k, mask, None, 0.0) is None
    out = fn(q, k, v)
  (call,) = calls
  assert call["out_specs"] == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)
  ref, _ = reference(q, k, v, allowed_np(t, b, causal=True), 0.25, np.zeros(q.shape))
  np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=TOL, rtol=TOL)


def test_splash_refusals():
  q, k, _, _ = qkv(2, 128, 4, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(128, dtype=jnp.int32), (2, 128))
  causal = self_mask(128, causal=True)
  bias = Bias(params=jnp.zeros((32, 4)), q_positions=pos, kv_positions=pos)
  reasons = {
      "bias": tpu.splash_supported(q, k, causal, bias, 0.0),
      "dropout": tpu.splash_supported(q, k, causal, None, 0.1),
      "128": tpu.splash_supported(q[:, :64], k[:, :64], self_mask(64, causal=True), None, 0.0),
      "KV cache": tpu.splash_supported(q, k, cached_mask(jnp.int32(0), 128, 128, q_positions=pos, kv_positions=pos),
                                       None, 0.0),
  }
  for word, reason in reasons.items():
    assert reason is not None and word in reason, (word, reason)
  # a window over a whole sequence without positions: self_mask gives it the token index as position
  assert tpu.splash_supported(q, k, self_mask(128, causal=True, window=8), None, 0.0) is None


# ----------------------------------------------------------------------------------------------
# The dispatcher under a faked platform
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_auto_picks_the_fused_kernel_of_the_platform(platform, monkeypatch):
  monkeypatch.setattr(core, "_platform", lambda: platform)
  q, k, _, _ = qkv(2, 128, 4, 2, 16, jnp.bfloat16)
  pos = jnp.broadcast_to(jnp.arange(128, dtype=jnp.int32), (2, 128))
  mask = self_mask(128, causal=True, positions=pos, attention_mask=jnp.ones((2, 128)), window=16)
  fused = "pallas_tpu" if platform == "tpu" else "cudnn"
  assert core.choose_implementation("auto", q, k, mask, None, 0.0) == fused
  assert core.choose_implementation("auto", q, k, None, None, 0.0) == fused
  bias = Bias(params=jnp.zeros((4,)), q_positions=pos, kv_positions=pos, kind="alibi")
  assert core.choose_implementation("auto", q, k, mask, bias, 0.0) == "blockwise"
  assert core.choose_implementation("auto", q, k, mask, None, 0.1) == "blockwise"
  if platform == "gpu":  # float32: not cuDNN; packed causal float32 goes to the Pallas GPU kernel
    q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
    packed = self_mask(128, causal=True, segment_ids=pos // 32)
    assert core.choose_implementation("auto", q32, k32, packed, None, 0.0) == "pallas_gpu"
    assert core.choose_implementation("auto", q32, k32, mask, None, 0.0) == "blockwise"


SHARDED_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from tfm.attention import tpu
from tfm.attention.structure import self_mask
from tfm.parallel.mesh import make_mesh

result = {}
# (data, fsdp, tensor), heads, kv_heads: batch over data; 2 kv heads over 4 tensor shards, so the kv heads
# are replicated and each shard picks its one kv head (shard t: kv head t // 2).
for name, shape, heads, kv_heads in [("gqa-kv-per-shard", (2, 1, 4), 8, 2)]:
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(ks[0], (2, 128, heads, 16))
  k, v = (jax.random.normal(x, (2, 128, kv_heads, 16)) for x in ks[1:3])
  dout = jax.random.normal(ks[3], q.shape)
  seg = jnp.asarray(np.repeat(np.array([[0, 1], [0, 0]]), 64, axis=1), jnp.int32)  # [2, 128]
  mask = self_mask(128, causal=True, segment_ids=seg)
  f = lambda q, k, v: tpu.splash_attention(q, k, v, mask, scale=0.25, interpret=True)
  loss = lambda q, k, v: jnp.sum(f(q, k, v) * dout)
  want = (f(q, k, v),) + jax.grad(loss, (0, 1, 2))(q, k, v)
  with jax.set_mesh(make_mesh(*shape)):
    assert tpu.splash_supported(q, k, mask, None, 0.0) is None
    got = jax.jit(lambda q, k, v: (f(q, k, v),) + jax.grad(loss, (0, 1, 2))(q, k, v))(q, k, v)
  result[name] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, want))
print("RESULT " + json.dumps(result))
"""


def test_splash_sharded_over_eight_devices_equals_one_device():
  import json
  import os
  import subprocess
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=8")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env,
                        cwd=root, timeout=300)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  for name, err in json.loads(lines[-1][len("RESULT "):]).items():
    # The same kernel per shard; the gradient of the replicated k, v is summed over the tensor shards, in
    # another order than on one device (measured 1e-6).
    assert err < TOL, (name, err)
