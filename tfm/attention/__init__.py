"""The one attention core of tfm: the dispatch over kernels, the dense paths and the KV-cache update.

Every attention in every model (bidirectional, causal, cross, cached decoding) calls
`dot_product_attention`. No other softmax over attention scores exists in the package.

Shapes (named once, used everywhere below):
  q:    [batch, q_len, heads, head_dim]
  k, v: [batch, kv_len, kv_heads, head_dim]   (heads is a multiple of kv_heads: MHA / GQA / MQA)
  mask: a `Mask` (tfm.attention.structure: causal, cache slots, window, segments, key validity), or
        a dense bool array broadcastable to [batch, heads, q_len, kv_len] (True = may attend)
  bias: a `Bias` (T5 relative buckets, ALiBi: computed from positions per block), or a dense float
        array broadcastable to [batch, heads, q_len, kv_len], added to the scaled scores

A model describes its masks once at its top (`self_mask`, `cached_mask`, `cross_mask`) and passes the
structure to every layer; each kernel turns it into its own form (tfm.attention.blockwise: per block;
tfm.attention.gpu: cuDNN / Pallas arguments; tfm.attention.tpu: splash masks; the dense paths here:
one [q_len, kv_len] mask, from `Mask.dense`: the conditions of a mask are written once, in `Mask.block`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import jax
import jax.numpy as jnp

from tfm.attention.structure import (MASK_VALUE, Bias, Mask, cached_mask, cross_mask, dropout_keep, fold_in_keys,
                                    relative_bucket, self_mask)

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "pallas", "reference")



# ----------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------


def update_kv_cache(cached_k: jax.Array, cached_v: jax.Array, k: jax.Array, v: jax.Array,
                    index: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns the caches with k, v ([batch, t, kv_heads, head_dim]) written at slot `index` onwards.

  The caches are stored heads-major, [batch, kv_heads, max_len, head_dim]: the layout of the two
  batched matmuls of attention (batch and heads leading), so that XLA reads the cache in place
  at every decoding step instead of transposing all of it (two cache copies per layer per token).
  Read them back as [batch, max_len, kv_heads, head_dim] with `cache_view`.
  """
  zero = jnp.zeros((), jnp.int32)
  start = (zero, zero, index.astype(jnp.int32), zero)
  cached_k = jax.lax.dynamic_update_slice(cached_k, jnp.swapaxes(k, 1, 2).astype(cached_k.dtype), start)
  cached_v = jax.lax.dynamic_update_slice(cached_v, jnp.swapaxes(v, 1, 2).astype(cached_v.dtype), start)
  return cached_k, cached_v


def cache_view(cached: jax.Array) -> jax.Array:
  """Returns a heads-major cache [batch, kv_heads, max_len, head_dim] as [batch, max_len, kv_heads, head_dim]."""
  return jnp.swapaxes(cached, 1, 2)


def cache_shape(batch: int, max_len: int, kv_heads: int, head_dim: int) -> tuple[int, int, int, int]:
  """Returns the shape of one layer's key (or value) cache: [batch, kv_heads, max_len, head_dim]."""
  return (batch, kv_heads, max_len, head_dim)


# ----------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------


def _reference_attention(q, k, v, bias, mask, scale, dropout_rate, dropout_rng, deterministic):
  """Returns [batch, q_len, heads, head_dim]: einsum attention with a float32 softmax."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  g = h // kv_heads
  # Group query heads so that each kv head serves g query heads: [batch, q_len, kv_heads, g, head_dim]
  qg = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, g, d)
  # scores: [batch, kv_heads, g, q_len, kv_len]
  scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
  scores = scores.reshape(b, h, t, k.shape[1])  # [batch, heads, q_len, kv_len]
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1)  # float32, whatever the input dtype
  if not deterministic and dropout_rate > 0.0:
    keep = dropout_keep(dropout_rng, 1.0 - dropout_rate, probs.shape)  # [batch, heads, q_len, kv_len]
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  probs = probs.astype(v.dtype).reshape(b, kv_heads, g, t, k.shape[1])
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # [batch, q_len, kv_heads, g, head_dim]
  return out.reshape(b, t, h, d)


CAUSAL_MIN_BLOCK = 128  # queries per block below which causal attention is not split (128 and 64 measured alike)


def causal_blocks(length: int) -> int:
  """Returns how many query blocks causal attention over `length` tokens is split into (1: none)."""
  for n in (4, 2):
    if length % n == 0 and length // n >= CAUSAL_MIN_BLOCK:
      return n
  return 1


def _block(x: Optional[jax.Array], lo: int, hi: int, q_len: int) -> Optional[jax.Array]:
  """Returns a mask / bias cut to query rows lo:hi and keys :hi (axes of size 1 broadcast and stay)."""
  if x is None:
    return None
  if x.ndim >= 2 and x.shape[-2] == q_len:
    x = x[..., lo:hi, :]
  return x[..., :hi] if x.shape[-1] == q_len else x


def _check_shapes(q, k, v):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(
        f"attention expects q [batch, q_len, heads, head_dim] and k, v [batch, kv_len, kv_heads, "
        f"head_dim]; got q{q.shape}, k{k.shape}, v{v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape; got k{k.shape}, v{v.shape}")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q and k must agree on batch and head_dim; got q{q.shape}, k{k.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"heads ({q.shape[2]}) must be a multiple of kv_heads ({k.shape[2]})")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          bias: Union[Bias, jax.Array, None] = None,
                          mask: Union[Mask, jax.Array, None] = None,
                          scale: Optional[float] = None,
                          dropout_rate: float = 0.0,
                          dropout_rng: Optional[jax.Array] = None,
                          deterministic: bool = True,
                          implementation: str = "auto") -> jax.Array:
  """Returns softmax(q kᵀ · scale + bias, masked) v as [batch, q_len, heads, head_dim].

  `mask` is a `Mask` (what the mask is made of: causal, padding, segments, window, cache slots) or a
  dense bool array broadcastable to [batch, heads, q_len, kv_len]; `bias` a `Bias` (T5 buckets, ALiBi,
  computed from positions) or a dense float array. Dense arrays are accepted by the dense paths only.
  The softmax is computed in float32 in every path. `implementation` (ModelConfig.attention_impl):

  - "reference": a plain einsum over the whole [q_len, kv_len] score matrix.
  - "xla": `jax.nn.dot_product_attention` with a dense mask (built here from the Mask); causal
    self-attention split into query blocks that skip the keys after their last query. Attention
    dropout, which `jax.nn.dot_product_attention` does not take, runs on the einsum path.
  - "blockwise": `tfm.attention.blockwise` (FlashAttention-2 in plain JAX, every backend): an online
    softmax over key blocks, scores recomputed in the backward pass, empty blocks skipped; memory
    O(len · block). Takes every mask, bias and attention dropout.
  - "cudnn" (GPU, float16 / bfloat16): cuDNN's fused attention through `jax.nn.dot_product_attention`,
    given causal / sequence lengths / window, never a dense mask. "pallas": the Pallas flash kernel
    of the backend (GPU: `jax.experimental.pallas.ops.gpu.attention`, packed segments included; TPU:
    splash attention). A case the fused kernel cannot take (a bias, attention dropout, a mask part it
    has no argument for, a float32 input for cuDNN) runs on the blockwise path instead, never the dense one.
  - "auto": the fused kernel of the backend where it takes the case, else on CPU the XLA path for
    short sequences (under BLOCKWISE_MIN_LEN keys) and the blockwise path from there on.

  `dropout_rng` is one key, or one key per batch row ([batch] keys, as the layers pass them: row b's
  dropout mask then depends on its own key only, whatever the batch is split into).
  """
  _check_shapes(q, k, v)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
  if isinstance(mask, Mask) and (mask.q_len, mask.kv_len) != (q.shape[1], k.shape[1]):
    raise ValueError(f"the mask describes {mask.q_len} queries and {mask.kv_len} keys; got q{q.shape}, k{k.shape}")
  if scale is None:
    scale = q.shape[-1] ** -0.5
  dropout_active = (not deterministic) and dropout_rate > 0.0
  if dropout_active and dropout_rng is None:
    raise ValueError("attention dropout is active (deterministic=False, dropout_rate > 0) but no dropout_rng was given")
  rate = dropout_rate if dropout_active else 0.0
  dense_input = (mask is not None and not isinstance(mask, Mask)) or (bias is not None and not isinstance(bias, Bias))
  impl = choose_implementation(implementation, q, k, mask, bias, rate, dense_input)
  if _RECORDED is not None:
    _RECORDED.append(impl)
  if impl == "blockwise":
    from tfm.attention import blockwise
    return blockwise.attention(q, k, v, mask, bias, scale=scale, dropout_rate=rate, dropout_rng=dropout_rng)
  if impl == "cudnn":
    from tfm.attention import gpu
    return gpu.cudnn_attention(q, k, v, mask, scale=scale)
  if impl == "pallas_gpu":
    from tfm.attention import gpu
    return gpu.pallas_attention(q, k, v, mask, scale=scale)
  if impl == "pallas_tpu":
    from tfm.attention import tpu
    return tpu.splash_attention(q, k, v, mask, scale=scale)
  # The dense paths: the structure becomes arrays here.
  if isinstance(bias, Bias):
    bias = bias.dense()  # [batch, heads, q_len, kv_len]
  causal = isinstance(mask, Mask) and mask.causal and mask.aligned
  if isinstance(mask, Mask):
    mask = mask.replace(causal=False).dense() if causal else mask.dense()
  return _dense_attention(q, k, v, bias, mask, scale, rate, dropout_rng, causal, impl)


_RECORDED: Optional[list] = None  # see `recorded_paths`


@contextlib.contextmanager
def recorded_paths() -> Iterator[list]:
  """Yields a list that collects the path ("xla", "blockwise", "cudnn", ...) of every attention call traced
  inside the block: which kernel a model really took (a call that hits a compiled cache traces nothing)."""
  global _RECORDED
  outer, _RECORDED = _RECORDED, []
  try:
    yield _RECORDED
  finally:
    _RECORDED = outer


BLOCKWISE_MIN_LEN = 1024  # "auto" on CPU: keys from which the blockwise path replaces the dense XLA one


def _platform() -> str:
  """Returns the platform the program is compiled for ("cpu", "gpu", "tpu"): JAX's default backend.

  A fused kernel (cuDNN, Pallas) must be chosen when the program is traced, not when it is lowered:
  it cannot be traced for another platform. A computation placed on a non-default backend names its
  attention implementation explicitly.
  """
  return jax.default_backend()


def choose_implementation(implementation: str, q, k, mask, bias, dropout_rate: float, dense_input: bool = False) -> str:
  """Returns the path one attention call takes: "reference", "xla", "blockwise", "cudnn", "pallas_gpu" or
  "pallas_tpu" (see `dot_product_attention` for what each takes and what falls back)."""
  if implementation == "reference":
    return "reference"
  if dense_input:
    if implementation in ("xla", "auto"):
      return "xla"
    raise ValueError(f"attention implementation {implementation!r} takes a Mask and a Bias (tfm.attention."
                     f"structure), not dense arrays; dense ones go to 'xla' or 'reference'")
  if implementation == "xla":
    return "xla"
  if implementation == "blockwise":
    return "blockwise"
  platform = _platform()
  if implementation in ("cudnn", "pallas", "auto") and platform in ("gpu", "cuda", "rocm", "tpu"):
    if platform == "tpu":
      if implementation in ("pallas", "auto"):
        from tfm.attention import tpu
        if tpu.splash_supported(q, k, mask, bias, dropout_rate) is None:
          return "pallas_tpu"
    else:
      from tfm.attention import gpu
      if implementation in ("cudnn", "auto") and gpu.cudnn_supported(q, k, mask, bias, dropout_rate) is None:
        return "cudnn"
      if implementation in ("pallas", "auto") and gpu.pallas_supported(q, k, mask, bias, dropout_rate) is None:
        return "pallas_gpu"
    return "blockwise"
  if implementation in ("cudnn", "pallas"):
    return "blockwise"  # no such kernel on this backend: the path that runs everywhere
  # auto on CPU
  return "blockwise" if k.shape[1] >= BLOCKWISE_MIN_LEN else "xla"


def _dense_attention(q, k, v, bias, mask, scale, rate, dropout_rng, causal, impl):
  """Returns attention over dense mask / bias arrays: the einsum reference or `jax.nn.dot_product_attention`.

  `causal=True` (q_len == kv_len) also masks every key after its query by index. The XLA path then
  splits the queries into blocks (`causal_blocks`) and gives each block only the keys up to its
  last query, skipping the score blocks above the diagonal: exact, and 3/8 fewer attention FLOPs
  with 4 blocks. (A query row that the mask hides from every key, such as a padding query, then
  averages the values of its block's key prefix rather than of all keys: still finite, still unused.)
  """
  if causal:
    q_len = q.shape[1]
    blocks = causal_blocks(q_len) if impl == "xla" else 1
    outs = []
    for i in range(blocks):  # queries lo:hi attend to keys :hi, the diagonal block causally
      lo, hi = i * q_len // blocks, (i + 1) * q_len // blocks
      diag = (jnp.arange(hi)[None, :] <= jnp.arange(lo, hi)[:, None])[None, None]  # [1, 1, hi - lo, hi]
      rng = dropout_rng if dropout_rng is None or blocks == 1 else fold_in_keys(dropout_rng, i)
      outs.append(_dense_attention(q[:, lo:hi], k[:, :hi], v[:, :hi], _block(bias, lo, hi, q_len),
                                   diag if mask is None else jnp.logical_and(_block(mask, lo, hi, q_len), diag), scale, rate, rng, False, impl))
    return outs[0] if blocks == 1 else jnp.concatenate(outs, axis=1)
  if impl == "reference" or rate > 0.0:
    return _reference_attention(q, k, v, bias, mask, scale, rate, dropout_rng, rate == 0.0)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla")
