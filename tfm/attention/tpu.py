"""The TPU attention kernel: Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`).

Reached from `tfm.attention.dot_product_attention` ("pallas", "auto" on a TPU). `splash_supported`, run
when the program is traced, names what the kernel cannot do exactly; the dispatcher then takes the
blockwise path. Splash gets the structure of the `Mask` (tfm.attention.structure), never a dense
[q_len, kv_len] array: a static mask object per head and per-token segment ids.
Shapes: q [batch, q_len, heads, head_dim], k, v [batch, kv_len, kv_heads, head_dim].

How a Mask becomes splash's arguments:
  causal (`aligned` self-attention)        CausalMask((q_len, kv_len))
  causal + window                          LocalMask(window_size=(window - 1, 0)): keys (i - window, i]
  bidirectional window                     LocalMask(window_size=(window - 1, window - 1)): |i - j| < window
  nothing static                           FullMask
  packed segments                          SegmentIds(q=q_segments, kv=kv_segments)
  padding (kv_valid)                       SegmentIds with every padding key given a segment id no query
                                           has (min of the row's query ids - 1): exact, and every query,
                                           padding ones included, still attends to exactly the real keys
                                           of its segment, as the Mask says
  scale                                    splash takes none: q * scale, in q's dtype, as the reference path
  heads                                    one mask per head (MultiHeadMask); GQA natively (each query
                                           head reads kv head h // group); MQA (one kv head) through
                                           make_splash_mqa
A window is over index distance in splash and over position distance in the Mask: the two agree when,
within every segment, positions - index is constant (positions restart per packed segment). That is
decided at run time: a `lax.cond` between splash and the blockwise path on "positions - index is
constant along each run of a segment, and every segment is one contiguous run" (both programs are
compiled; the blockwise one runs only for a batch that fails the test). Without a window there is no
condition.

Refused (the blockwise path takes them): a bias, attention dropout, a dense mask; causal attention that
is not `aligned` (decoding over a KV cache: the queries' offset is traced, splash masks are static
numpy); a window without positions, or over cross attention; q_len or kv_len not a multiple of 128
(splash's kv compute block is a multiple of the 128 TPU lanes); under a mesh, heads or batch that do
not divide over the "tensor" / ("data", "fsdp") axes, or kv heads that neither divide over "tensor" nor
fall one per shard.

Rows a Mask hides from every key (e.g. a left-padding query under causal attention) have no defined
output: splash, like the other paths, returns some average of values there, not the same one.

Mesh: when a mesh with the axes of tfm.parallel is active (`jax.set_mesh`, as tfm's jit step does), the
kernel runs inside `jax.shard_map`: batch over ("data", "fsdp"), heads over "tensor" (tfm.axes rules), the
mask built per shard for its local heads; kv heads are sharded with the query heads when they divide,
else replicated and each shard picks its one kv head. Without a mesh the kernel is called directly.

Tolerance: in interpret mode on the CPU, float32 agrees with a float64 reference within 1e-5 (values and
gradients; measured ~1e-6; tests/test_attention_fused.py), and on 8 fake CPU devices under a (2, 1, 4) mesh
with the one-device result within 1e-5. On a TPU, float32 dots run at Mosaic's default precision
and bfloat16 inputs round as bfloat16: not validated here without a TPU.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from tfm.attention.structure import Bias, Mask

BATCH_AXES = ("data", "fsdp")  # mesh axes of the logical "batch" axis (tfm.axes.DEFAULT_RULES)
HEADS_AXIS = "tensor"          # mesh axis of "heads" and "kv_heads"
LANES = 128                    # splash's kv blocks are multiples of the TPU's 128 lanes


# ----------------------------------------------------------------------------------------------
# What the kernel takes
# ----------------------------------------------------------------------------------------------


def _mesh_layout() -> Optional[tuple]:
  """Returns (batch axes, batch shards, heads axis or None, heads shards) of the active mesh, or None
  when no mesh with any of those axes is active."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None
  names = mesh.axis_names
  batch_axes = tuple(a for a in BATCH_AXES if a in names)
  heads_axis = HEADS_AXIS if HEADS_AXIS in names else None
  if not batch_axes and heads_axis is None:
    return None
  batch_shards = 1
  for a in batch_axes:
    batch_shards *= mesh.shape[a]
  return batch_axes, batch_shards, heads_axis, mesh.shape[heads_axis] if heads_axis else 1


def splash_supported(q, k, mask: Optional[Mask], bias: Optional[Bias], dropout_rate: float) -> Optional[str]:
  """Returns None if splash attention computes this call exactly, else a short reason why not."""
  if bias is not None:
    return "a bias (T5 buckets / ALiBi / dense): splash takes no bias"
  if dropout_rate > 0.0:
    return "attention dropout: splash has none"
  if mask is not None and not isinstance(mask, Mask):
    return "a dense mask array: splash takes a Mask (tfm.attention.structure)"
  batch, q_len, heads, _ = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  if q_len % LANES or kv_len % LANES:
    return f"q_len {q_len} / kv_len {kv_len}: splash needs multiples of {LANES}"
  if mask is not None:
    if mask.causal and not mask.aligned:
      return "causal attention over offset queries (a KV cache): splash masks are static"
    if mask.window:
      if not mask.aligned:
        return "a window over cross attention"
      if mask.q_positions is None or mask.kv_positions is None:
        return "a window without q/kv positions"
    if (mask.q_segments is None) != (mask.kv_segments is None):
      return "segment ids on one side only"
  layout = _mesh_layout()
  if layout is not None:
    _, batch_shards, _, head_shards = layout
    if batch % batch_shards:
      return f"batch {batch} does not divide over {batch_shards} batch shards"
    if heads % head_shards:
      return f"{heads} heads do not divide over {head_shards} tensor shards"
    local, group = heads // head_shards, heads // kv_heads
    if kv_heads % head_shards and group % local:
      return f"{kv_heads} kv heads neither divide over {head_shards} tensor shards nor fall one per shard"
  return None


# ----------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------


def _block(n: int) -> int:
  """Returns the block size for n tokens (n a multiple of 128): the largest of 512, 256, 128 dividing it."""
  return next(b for b in (512, 256, 128) if n % b == 0)


def _static_mask(mask: Optional[Mask], q_len: int, kv_len: int):
  """Returns the splash mask object of one head: causal / local window / full, never an array."""
  shape = (q_len, kv_len)
  if mask is not None and mask.window:
    left = mask.window - 1
    return splash.LocalMask(shape, window_size=(left, 0 if mask.causal else left), offset=0)
  if mask is not None and mask.causal:
    return splash.CausalMask(shape)
  return splash.FullMask(shape)


def _segment_ids(mask: Optional[Mask], batch: int) -> Optional[tuple]:
  """Returns (q ids [batch, q_len], kv ids [batch, kv_len]) int32: packed segments and padding as segment
  ids; None when the mask has neither."""
  if mask is None or (mask.q_segments is None and mask.kv_valid is None):
    return None
  if mask.q_segments is not None:
    q_ids = jnp.broadcast_to(mask.q_segments, (batch, mask.q_len)).astype(jnp.int32)
    kv_ids = jnp.broadcast_to(mask.kv_segments, (batch, mask.kv_len)).astype(jnp.int32)
  else:
    q_ids = jnp.zeros((batch, mask.q_len), jnp.int32)
    kv_ids = jnp.zeros((batch, mask.kv_len), jnp.int32)
  if mask.kv_valid is not None:
    # A padding key gets an id below every query id of its row: no query attends to it.
    valid = jnp.broadcast_to(mask.kv_valid.astype(bool), (batch, mask.kv_len))
    kv_ids = jnp.where(valid, kv_ids, jnp.min(q_ids, axis=1, keepdims=True) - 1)
  return q_ids, kv_ids


def _window_by_index(mask: Mask, batch: int) -> jax.Array:
  """Returns a traced bool: the index window of splash equals the Mask's position window, because
  positions - index is constant along every run of a segment and every segment is one run."""
  d_q = jnp.broadcast_to(mask.q_positions - mask.q_index[None, :], (batch, mask.q_len))     # [batch, len]
  d_kv = jnp.broadcast_to(mask.kv_positions - mask.kv_index[None, :], (batch, mask.kv_len))
  same_d = jnp.all(d_q == d_kv)  # aligned: query i and key i are the same token
  if mask.q_segments is None:
    return jnp.logical_and(same_d, jnp.all(d_q == d_q[:, :1]))
  seg = jnp.broadcast_to(mask.q_segments, (batch, mask.q_len))
  kv_seg = jnp.broadcast_to(mask.kv_segments, (batch, mask.kv_len))
  run = seg[:, 1:] == seg[:, :-1]                             # [batch, len - 1]: token j continues j - 1's run
  steady = jnp.all(jnp.where(run, d_q[:, 1:] == d_q[:, :-1], True))
  ordered = jnp.sort(seg, axis=1)
  runs = jnp.sum(~run, axis=1)
  distinct = jnp.sum(ordered[:, 1:] != ordered[:, :-1], axis=1)
  one_run_each = jnp.all(runs == distinct)  # as many runs as distinct ids: no segment comes back
  return jnp.logical_and(jnp.logical_and(same_d, jnp.all(seg == kv_seg)), jnp.logical_and(steady, one_run_each))


def _kernel(q, k, v, ids, *, mask: Optional[Mask], interpret: bool):
  """Returns splash attention of one shard, [batch, heads, q_len, head_dim], from q [batch, heads, q_len,
  head_dim] (already scaled), k, v [batch, kv_heads, kv_len, head_dim] and segment ids (or None)."""
  _, heads, q_len, _ = q.shape
  kv_heads, kv_len = k.shape[1], k.shape[2]
  bq, bkv = _block(q_len), _block(kv_len)
  blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                             block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  heads_mask = splash.MultiHeadMask([_static_mask(mask, q_len, kv_len) for _ in range(heads)])
  make = splash.make_splash_mqa if kv_heads == 1 else splash.make_splash_mha
  kernel = make(heads_mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)
  if kv_heads == 1:
    k, v = k[:, 0], v[:, 0]  # MQA: [batch, kv_len, head_dim]
  if ids is None:
    return jax.vmap(kernel)(q, k, v)
  segment_ids = splash.SegmentIds(q=ids[0], kv=ids[1])
  return jax.vmap(kernel)(q, k, v, segment_ids)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[Mask], *, scale: float,
                     interpret: bool = False) -> jax.Array:
  """Returns splash attention as [batch, q_len, heads, head_dim] (see `splash_supported`); under a mesh
  inside jax.shard_map; `interpret=True` runs the kernel in the Pallas interpreter (CPU tests)."""
  batch, _, heads, _ = q.shape
  kv_heads = k.shape[2]
  ids = _segment_ids(mask, batch)

  def run(q, k, v, ids):
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)  # [batch, heads, q_len, head_dim]
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)    # [batch, kv_heads, kv_len, head_dim]
    layout = _mesh_layout()
    if layout is None:
      out = _kernel(qh, kh, vh, ids, mask=mask, interpret=interpret)
      return jnp.swapaxes(out, 1, 2)  # [batch, q_len, heads, head_dim]
    batch_axes, _, heads_axis, head_shards = layout
    b = batch_axes or None
    kv_sharded = kv_heads % head_shards == 0
    local, group = heads // head_shards, heads // kv_heads

    def shard(qh, kh, vh, ids):
      if not kv_sharded:  # replicated kv heads: this shard's query heads share one of them
        first = jax.lax.axis_index(heads_axis) * local // group
        kh = jax.lax.dynamic_slice_in_dim(kh, first, 1, axis=1)  # [batch, 1, kv_len, head_dim]
        vh = jax.lax.dynamic_slice_in_dim(vh, first, 1, axis=1)
      return _kernel(qh, kh, vh, ids, mask=mask, interpret=interpret)

    heads_spec = P(b, heads_axis, None, None)
    kv_spec = heads_spec if kv_sharded else P(b, None, None, None)
    ids_spec = None if ids is None else (P(b, None), P(b, None))
    out = jax.shard_map(shard, in_specs=(heads_spec, kv_spec, kv_spec, ids_spec), out_specs=heads_spec,
                        check_vma=False)(qh, kh, vh, ids)
    return jnp.swapaxes(out, 1, 2)

  if mask is None or not mask.window:
    return run(q, k, v, ids)
  from tfm.attention import blockwise
  fallback = lambda q, k, v, ids: blockwise.attention(q, k, v, mask, None, scale=scale).astype(q.dtype)
  return jax.lax.cond(_window_by_index(mask, batch), run, fallback, q, k, v, ids)
