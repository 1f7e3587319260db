"""The GPU attention kernels: cuDNN fused attention and the Pallas (Triton) flash kernel.

Both are reached from `tfm.attention.dot_product_attention` ("cudnn", "pallas", "auto" on a GPU). Each
has a `*_supported` check, run when the program is traced, that names what the kernel cannot do
exactly; the dispatcher then takes the blockwise path instead. Neither kernel ever sees a dense
[q_len, kv_len] mask: they get the structure of the `Mask` (tfm.attention.structure) as their own
arguments. Shapes: q [batch, q_len, heads, head_dim], k, v [batch, kv_len, kv_heads, head_dim].

cuDNN (`jax.nn.dot_product_attention(..., implementation="cudnn")`), float16 / bfloat16 only:
  takes   no mask; causal self-attention (`Mask.aligned`): `is_causal`; MHA / GQA / MQA as they are;
          padding (`kv_valid`) as `key_value_seq_lengths`; a causal sliding window as
          `local_window_size=(window - 1, 0)`, which JAX turns into cuDNN's `sliding_window_length =
          window`: keys (i - window, i], the same keys as `Mask.window` with `causal`.
  decides at run time: lengths describe padding only when `kv_valid` is a right-padded prefix, and an
          index window is the position window only when positions advance with the index. Neither is
          known when tracing, so the call is a `lax.cond` between cuDNN and the blockwise path on "every
          row of kv_valid is a non-empty prefix" and "positions - index is constant along each row"
          (both programs are compiled; the blockwise one runs only for a batch that fails the test).
          Without padding and window there is no condition and no second program.
  refuses a bias and attention dropout (no such arguments here); float32 (cuDNN has no float32
          attention); packed segments (the Pallas kernel below takes them); causal attention that is
          not `aligned` (decoding over a KV cache: cuDNN's causal mask is by position in the block,
          not by cache slot); a bidirectional window (cuDNN takes a left window only); a window
          without positions; a head_dim that is not a multiple of 8 or above 128 (256 from Hopper on).
  tolerance: the cuDNN flash kernel in bfloat16 (softmax in float32): agrees with the float32
          reference to bfloat16 rounding of its inputs and output (~1e-2 relative); not run on CPU.

Pallas GPU (`jax.experimental.pallas.ops.gpu.attention.mha`, Triton), every float dtype:
  takes   q_len == kv_len; no mask, causal self-attention (`aligned`), packed segments (one
          segment-id array for queries and keys: the Mask's q_segments and kv_segments must be equal,
          which is checked at run time, with the blockwise path as the fallback, unless they are the
          same array); GQA / MQA by repeating each kv head over its query group (exact; costs the
          repeated k, v in memory).
  refuses a bias, dropout, padding (`kv_valid`: its only mask argument is that shared segment-id
          array, and padding as a segment would change what the padding queries attend to), a window,
          causal attention that is not `aligned`, q_len != kv_len (its backward pass splits both into
          the same number of blocks), lengths that are neither a multiple of 128 nor a power of two in
          [16, 128) (Triton blocks are powers of two, at least 16), head_dim above 256 or whose power of
          two is below 16.
  tolerance: in interpret mode on the CPU, float32 agrees with a float64 reference within 1e-5
          (values and gradients; tests/test_attention_fused.py). On a GPU, Triton runs float32 dots in
          TF32 (as XLA does by default), so expect ~1e-3 relative in float32.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from tfm.attention.structure import Bias, Mask

_HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


# ----------------------------------------------------------------------------------------------
# Shared checks
# ----------------------------------------------------------------------------------------------


def _common_refusal(mask, bias, dropout_rate: float) -> Optional[str]:
  """Returns why no fused GPU kernel takes this call (a bias, dropout, a dense mask), or None."""
  if bias is not None:
    return "a bias (T5 buckets / ALiBi / dense): the fused GPU kernels take no bias here"
  if dropout_rate > 0.0:
    return "attention dropout: the fused GPU kernels here run without dropout"
  if mask is not None and not isinstance(mask, Mask):
    return "a dense mask array: the fused GPU kernels take a Mask (tfm.attention.structure)"
  return None


def _window_by_index(mask: Mask) -> jax.Array:
  """Returns a traced bool: positions - index is the same for every query and key of each row, so a
  window over index distance is the window over position distance of `Mask.window`."""
  d_q = mask.q_positions - mask.q_index[None, :]     # [batch|1, q_len]
  d_kv = mask.kv_positions - mask.kv_index[None, :]  # [batch|1, kv_len]
  first = d_q[:, :1]                                 # [batch|1, 1]
  return jnp.logical_and(jnp.all(d_q == first), jnp.all(d_kv == first))


def _blockwise(q, k, v, mask, scale):
  """Returns the blockwise path's attention (the fallback of a run-time condition), in q's dtype."""
  from tfm.attention import blockwise
  return blockwise.attention(q, k, v, mask, None, scale=scale).astype(q.dtype)


# ----------------------------------------------------------------------------------------------
# cuDNN
# ----------------------------------------------------------------------------------------------


def _gpu() -> Optional[tuple]:
  """Returns (platform_version, compute capability (major, minor) or None) of the first GPU, or None
  if no GPU is visible (e.g. a CPU test faking the platform)."""
  try:
    device = jax.devices("gpu")[0]
  except RuntimeError:
    return None
  version = str(getattr(device.client, "platform_version", "")).lower()
  cc = getattr(device, "compute_capability", None)
  return version, (tuple(int(x) for x in str(cc).split(".")) if cc else None)


def cudnn_supported(q, k, mask: Optional[Mask], bias: Optional[Bias], dropout_rate: float) -> Optional[str]:
  """Returns None if cuDNN fused attention computes this call exactly, else a short reason why not."""
  reason = _common_refusal(mask, bias, dropout_rate)
  if reason:
    return reason
  gpu = _gpu()
  if gpu is not None and "rocm" in gpu[0]:
    return "a ROCm GPU: cuDNN is CUDA only"
  if jnp.dtype(q.dtype) not in _HALF or jnp.dtype(k.dtype) != jnp.dtype(q.dtype):
    return f"dtype {jnp.dtype(q.dtype).name}: cuDNN attention takes float16 / bfloat16 (q, k, v alike)"
  head_dim = q.shape[-1]
  cc = None if gpu is None else gpu[1]
  max_dim = 256 if cc is not None and cc >= (9, 0) else 128
  if head_dim % 8 or head_dim > max_dim:
    return f"head_dim {head_dim}: cuDNN takes a multiple of 8 up to {max_dim}"
  if mask is None:
    return None
  if mask.q_segments is not None or mask.kv_segments is not None:
    return "packed segments: not given to cuDNN here (the Pallas GPU kernel takes them)"
  if mask.causal and not mask.aligned:
    return "causal attention over offset queries (a KV cache): cuDNN's causal mask is by block position"
  if mask.window:
    if not mask.causal:
      return "a bidirectional window: cuDNN takes a left (causal) window only"
    if mask.q_positions is None or mask.kv_positions is None:
      return "a window without q/kv positions"
  return None


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[Mask], *, scale: float) -> jax.Array:
  """Returns cuDNN fused attention as [batch, q_len, heads, head_dim] (see `cudnn_supported`)."""
  batch = q.shape[0]
  causal = mask is not None and mask.causal
  window = mask.window if mask is not None else None
  lengths = None
  checks = []
  if mask is not None and mask.kv_valid is not None:
    valid = jnp.broadcast_to(mask.kv_valid.astype(bool), (batch, mask.kv_len))  # [batch, kv_len]
    lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)                           # [batch]
    prefix = jnp.arange(mask.kv_len, dtype=jnp.int32)[None, :] < lengths[:, None]
    checks.append(jnp.logical_and(jnp.all(valid == prefix), jnp.all(lengths > 0)))
  if window:
    checks.append(_window_by_index(mask))

  def fused(q, k, v):
    # No mask, no bias: the structure only, so no [q_len, kv_len] array reaches cuDNN.
    return jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=causal, key_value_seq_lengths=lengths,
        local_window_size=None if not window else (window - 1, 0), implementation="cudnn").astype(q.dtype)

  if not checks:
    return fused(q, k, v)
  ok = checks[0] if len(checks) == 1 else jnp.logical_and(*checks)
  return jax.lax.cond(ok, fused, lambda q, k, v: _blockwise(q, k, v, mask, scale), q, k, v)


# ----------------------------------------------------------------------------------------------
# Pallas (Triton) flash attention
# ----------------------------------------------------------------------------------------------


def _pallas_length_ok(n: int) -> bool:
  """Returns whether a sequence of n tokens splits into the kernel's power-of-two blocks."""
  return n % 128 == 0 or (16 <= n < 128 and n & (n - 1) == 0)


def pallas_supported(q, k, mask: Optional[Mask], bias: Optional[Bias], dropout_rate: float) -> Optional[str]:
  """Returns None if the Pallas GPU flash kernel computes this call exactly, else a short reason why not."""
  reason = _common_refusal(mask, bias, dropout_rate)
  if reason:
    return reason
  q_len, kv_len, head_dim = q.shape[1], k.shape[1], q.shape[-1]
  if q_len != kv_len:
    return f"q_len {q_len} != kv_len {kv_len}: the Pallas GPU kernel takes self-attention lengths only"
  if not _pallas_length_ok(q_len):
    return f"length {q_len}: the Pallas GPU kernel needs a multiple of 128 or a power of two from 16"
  if not 8 < head_dim <= 256:  # padded to a power of two, which Triton's dot needs to be at least 16
    return f"head_dim {head_dim}: the Pallas GPU kernel takes 9..256"
  if mask is None:
    return None
  if mask.kv_valid is not None:
    return "padding (kv_valid): the Pallas GPU kernel's only mask argument is one segment-id array"
  if mask.window:
    return "a sliding window: the Pallas GPU kernel has no window argument"
  if mask.causal and not mask.aligned:
    return "causal attention over offset queries (a KV cache): the kernel's causal mask is by block position"
  if (mask.q_segments is None) != (mask.kv_segments is None):
    return "segment ids on one side only"
  return None


def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[Mask], *, scale: float,
                     interpret: bool = False) -> jax.Array:
  """Returns the Pallas GPU flash kernel's attention as [batch, q_len, heads, head_dim] (see
  `pallas_supported`); `interpret=True` runs the kernel in the Pallas interpreter (CPU tests)."""
  from jax.experimental.pallas.ops.gpu import attention as pallas_gpu
  batch, length, heads, _ = q.shape
  group = heads // k.shape[2]
  # Blocks: 128 (or the whole sequence) forward, 32 backward, as the kernel's defaults; the lengths
  # allowed by pallas_supported split evenly into them.
  fwd, bwd = min(128, length), min(32, length)
  blocks = pallas_gpu.BlockSizes(block_q=fwd, block_k=fwd, block_q_dkv=bwd, block_kv_dkv=bwd,
                                 block_q_dq=bwd, block_kv_dq=bwd)
  causal = mask is not None and mask.causal
  segments = None if mask is None else mask.kv_segments

  def kernel(q, k, v, segment_ids):
    if group > 1:  # the kernel indexes k, v by query head: give every query head its kv head
      k = jnp.repeat(k, group, axis=2)  # [batch, kv_len, heads, head_dim]
      v = jnp.repeat(v, group, axis=2)
    return pallas_gpu.mha(q, k, v, segment_ids, sm_scale=scale, causal=causal, block_sizes=blocks,
                          interpret=interpret)

  if segments is None:
    return kernel(q, k, v, None)
  segments = jnp.broadcast_to(segments, (batch, length)).astype(jnp.int32)  # [batch, len]
  if mask.q_segments is mask.kv_segments:
    return kernel(q, k, v, segments)
  # Two segment arrays: the kernel's one array is exact only if they are equal, known at run time.
  same = jnp.all(jnp.broadcast_to(mask.q_segments, (batch, length)) == segments)
  return jax.lax.cond(same, lambda q, k, v: kernel(q, k, v, segments),
                      lambda q, k, v: _blockwise(q, k, v, mask, scale), q, k, v)
