"""Exact blockwise attention (FlashAttention-2) in plain JAX: every backend, every Mask, Bias and dropout.

Algorithm. The queries are cut into blocks of `block_q` rows and the keys into blocks of `block_k`. A
`lax.scan` walks the query blocks; inside it a `lax.fori_loop` walks the key blocks with an online
softmax: a running row maximum m, a running row sum l and a float32 accumulator of p·V, rescaled by
exp(m_old - m_new) whenever the maximum grows. Scores are float32 (`q kᵀ · scale + bias`, masked with
a large finite negative, never -inf, so nothing is ever NaN). The output and the logsumexp of every
query row (lse = m + log l) are the only residuals. The backward pass (`jax.custom_vjp`) recomputes
the scores block by block: D = rowsum(dO ∘ O), P = exp(S - lse), dV += Pᵀ dO, dP = dO Vᵀ,
dS = P ∘ (dP - D), dQ += dS K · scale, dK += dSᵀ Q · scale; the float parameters of a `Bias` (the T5
table, the ALiBi slopes) get Σ dS through `jax.vjp` of `Bias.block`, one block at a time. Grouped
queries (GQA / MQA) are reshaped to [.., kv_heads, group, ..]; k and v are never repeated.

Memory. One call holds O(len · block) values: q, k, v, the output, the row statistics, the float32
dK / dV accumulators and one [batch, heads, block_q, block_k] score block at a time. No [q_len, kv_len]
array exists anywhere, in the forward or the backward pass.

What is skipped. Causal self-attention over a whole sequence (`Mask.causal and Mask.aligned`): each
query block walks only the key blocks up to its diagonal (forward and backward: about half the work).
Causal attention over a KV cache (not aligned): each query block stops at the last key whose index is
<= its largest query index, so unwritten cache slots are never read. Any other mask part (packed
segments, sliding window, padding): a block whose mask is all False is skipped with `lax.cond`.

Edges. Lengths that are not multiples of the block are padded inside (padded keys masked, padded
query rows dropped); an input shorter than a block is one block. A query row that may attend to no
key at all (a padding query, say) gives a zero output and zero gradients, where the dense paths give
the mean of the values: both are finite and unused.

Dropout (dropout_rate > 0) acts on the probabilities after the row statistics (as FA2 does): the
keep-mask of block (i, j) is `bernoulli(fold_in(dropout_rng, i * num_key_blocks + j), 1 - rate)`,
regenerated identically in the backward pass, kept values scaled by 1 / (1 - rate). With one key per
batch row (as the layers pass) each row's block mask comes from fold_in(its key, i * num_key_blocks + j).

This is `dot_product_attention(implementation="blockwise")`: the path "auto" takes on CPU for long
sequences (tfm.attention.BLOCKWISE_MIN_LEN keys and more), and the fallback of the fused kernels (cuDNN,
Pallas) for the cases they cannot take (a bias, attention dropout, a mask part they have no argument for).
Differentiable in reverse mode only (a custom_vjp): jax.jvp of it is not defined.

Shapes: q [batch, q_len, heads, head_dim]; k, v [batch, kv_len, kv_heads, head_dim]. Inside, queries
are held as blocks [num_q_blocks, batch, kv_heads, group, block_q, head_dim] and keys / values as
[batch, kv_heads, kv_len, head_dim] (head-major: the layout of the batched matmuls).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tfm.attention.structure import MASK_VALUE, Bias, Mask, dropout_keep, fold_in_keys

# Default block sizes, measured on CPU (2 shared cores; XLA default flags) at len 2048, batch 1, 8 heads,
# head_dim 64, float32, jit(grad) of one attention (forward + backward), best of 5-7 interleaved runs:
#   (block_q, block_k)  128x128  256x256  512x512  256x512  512x256  512x128
#   causal (ms)           135      120      145      129      115      123
#   no mask (ms)          243      217      219      193      179      185
# 512 x 256 was the fastest or within noise of it in both: larger blocks amortise the loop overhead,
# a narrower key block wastes less on the causal diagonal.
BLOCK_Q = 512
BLOCK_K = 256

_PAD_INDEX = np.iinfo(np.int32).max  # kv_index of a padded key: after every query (also masked by length)


class _Static(NamedTuple):
  """What the kernel knows when tracing (hashable: a nondiff argument of the custom_vjp)."""
  scale: float
  dropout_rate: float
  block_k: int
  kv_len: int  # real keys; keys from kv_len on are padding


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[Mask], bias: Optional[Bias], *,
              scale: float, dropout_rate: float = 0.0, dropout_rng: Optional[jax.Array] = None,
              block_q: Optional[int] = None, block_k: Optional[int] = None) -> jax.Array:
  """Returns softmax(q kᵀ · scale + bias, masked) v as [batch, q_len, heads, head_dim] in q's dtype.

  q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim] (heads a multiple of
  kv_heads). mask: a `Mask` or None (every key visible); bias: a `Bias` or None. dropout_rate > 0 needs
  dropout_rng. block_q / block_k default to BLOCK_Q / BLOCK_K (cut to the lengths). Differentiable in
  q, k, v and the bias parameters; rows that see no key give zeros.
  """
  b, t, h, d = q.shape
  s, kvh = k.shape[1], k.shape[2]
  if h % kvh or k.shape != v.shape:
    raise ValueError(f"blockwise attention: q{q.shape} and k{k.shape}, v{v.shape} do not fit")
  if bias is not None and bias.num_heads not in (1, h):
    raise ValueError(f"blockwise attention: the bias covers {bias.num_heads} heads, the queries have {h}")
  if mask is not None and mask.causal and mask.aligned and t != s:
    raise ValueError(f"an aligned causal mask needs q_len == kv_len; got {t} and {s}")
  rate = float(dropout_rate)
  if rate > 0.0 and dropout_rng is None:
    raise ValueError("blockwise attention: dropout_rate > 0 needs a dropout_rng")
  g = h // kvh
  bq = max(1, min(block_q or BLOCK_Q, t))
  bk = max(1, min(block_k or BLOCK_K, s))
  nq, nk = -(-t // bq), -(-s // bk)
  tp, sp = nq * bq, nk * bk
  # q: [batch, q_len, heads, head_dim] -> [nq, batch, kv_heads, group, block_q, head_dim]
  qb = jnp.pad(q, ((0, 0), (0, tp - t), (0, 0), (0, 0))).reshape(b, nq, bq, kvh, g, d)
  qb = qb.transpose(1, 0, 3, 4, 2, 5)
  # k, v: [batch, kv_len, kv_heads, head_dim] -> [batch, kv_heads, padded kv_len, head_dim]
  kh = jnp.pad(k, ((0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  vh = jnp.pad(v, ((0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  static = _Static(scale=float(scale), dropout_rate=rate, block_k=bk, kv_len=s)
  out = _flash(static, qb, kh, vh, _pad_mask(mask, tp, sp), _pad_bias(bias, tp, sp),
               dropout_rng if rate > 0.0 else None)
  # [nq, batch, kv_heads, group, block_q, head_dim] -> [batch, q_len, heads, head_dim]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, tp, h, d)
  return out[:, :t]


# ----------------------------------------------------------------------------------------------
# Padding of the structure to whole blocks
# ----------------------------------------------------------------------------------------------


def _pad_to(x: Optional[jax.Array], n: int, axis: int, value) -> Optional[jax.Array]:
  """Returns x padded with `value` to length n along `axis` (None stays None)."""
  if x is None:
    return None
  x = jnp.asarray(x)
  if x.shape[axis] == n:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, n - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _pad_mask(mask: Optional[Mask], tp: int, sp: int) -> Optional[Mask]:
  """Returns the mask over tp queries and sp keys: padded queries see nothing causally, padded keys
  are never valid (they are also masked by length in `_block_mask`)."""
  if mask is None:
    return None
  return mask.replace(
      q_index=_pad_to(mask.q_index, tp, 0, -1), kv_index=_pad_to(mask.kv_index, sp, 0, _PAD_INDEX),
      q_positions=_pad_to(mask.q_positions, tp, 1, 0), kv_positions=_pad_to(mask.kv_positions, sp, 1, 0),
      q_segments=_pad_to(mask.q_segments, tp, 1, -1), kv_segments=_pad_to(mask.kv_segments, sp, 1, -2),
      kv_valid=_pad_to(mask.kv_valid, sp, 1, False))


def _pad_bias(bias: Optional[Bias], tp: int, sp: int) -> Optional[Bias]:
  """Returns the bias with its positions padded to tp queries and sp keys."""
  if bias is None:
    return None
  return bias.replace(q_positions=_pad_to(bias.q_positions, tp, 1, 0),
                      kv_positions=_pad_to(bias.kv_positions, sp, 1, 0))


# ----------------------------------------------------------------------------------------------
# One block
# ----------------------------------------------------------------------------------------------


def _block_mask(static: _Static, mask: Optional[Mask], q_start, bq: int, k_start) -> Optional[jax.Array]:
  """Returns the [batch|1, 1, 1, block_q, block_k] bool mask of one block (None: all visible)."""
  bk = static.block_k
  parts = []
  if mask is not None:
    m = mask.block(q_start, bq, k_start, bk)  # [batch|1, 1, bq, bk]
    if m is not None:
      parts.append(m[:, :, None])
  if mask is None or not mask.causal:  # (a causal mask hides padded keys already, by _PAD_INDEX)
    if static.kv_len % bk:
      real = (k_start + jnp.arange(bk)) < static.kv_len  # [bk]
      parts.append(real[None, None, None, None, :])
  if not parts:
    return None
  return functools.reduce(jnp.logical_and, parts)


def _bias_block(bias: Bias, q_start, bq: int, k_start, bk: int, kvh: int) -> jax.Array:
  """Returns the bias of one block as [batch|1, kv_heads|1, group|1, block_q, block_k] float32."""
  x = bias.block(q_start, bq, k_start, bk)  # [batch|1, heads|1, bq, bk]
  if x.shape[1] == 1:
    return x[:, :, None]
  return x.reshape(x.shape[0], kvh, x.shape[1] // kvh, bq, bk)


def _block_scores(static: _Static, qi: jax.Array, kj: jax.Array, bias: Optional[Bias],
                  allowed: Optional[jax.Array], q_start, k_start) -> jax.Array:
  """Returns the masked float32 scores of one block, [batch, kv_heads, group, block_q, block_k].

  qi is already multiplied by the scale. Every computed block goes through here (forward and
  backward), which is what tests count to see the skipped ones.
  """
  # qi: [batch, kv_heads, group, bq, head_dim]; kj: [batch, kv_heads, bk, head_dim]
  s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32)
  if bias is not None:
    s = s + _bias_block(bias, q_start, qi.shape[3], k_start, kj.shape[2], kj.shape[1])
  if allowed is not None:
    s = jnp.where(allowed, s, MASK_VALUE)
  return s


def _keep(static: _Static, rng, i, j, nk: int, shape) -> jax.Array:
  """Returns the dropout keep-mask of block (i, j): bool of `shape`, the same in forward and backward."""
  return dropout_keep(fold_in_keys(rng, i * nk + j), 1.0 - static.dropout_rate, shape)  # shape [batch, ...]


def _key_blocks(static: _Static, mask: Optional[Mask], i, bq: int, nk: int):
  """Returns how many key blocks query block i walks (from block 0): all, or up to the causal limit."""
  bk = static.block_k
  if mask is None or not mask.causal:
    return nk
  if mask.aligned:  # q_index == kv_index == arange: keys up to the block's last query
    return jnp.minimum(nk, ((i + 1) * bq - 1) // bk + 1)
  # Over a KV cache: keys up to the last one whose index is <= the block's largest query index.
  q_max = jnp.max(lax.dynamic_slice_in_dim(jnp.asarray(mask.q_index), i * bq, bq, 0))
  kv_index = jnp.asarray(mask.kv_index)
  last = jnp.max(jnp.where(kv_index <= q_max, jnp.arange(kv_index.shape[0]), -1))
  return jnp.minimum(nk, (last + bk) // bk)  # last == -1 (nothing visible): 0 blocks


def _may_skip(mask: Optional[Mask]) -> bool:
  """Returns whether blocks may be entirely masked in ways the loop bounds do not know (so check each)."""
  return mask is not None and bool(mask.window or mask.q_segments is not None or mask.kv_valid is not None)


# ----------------------------------------------------------------------------------------------
# Forward and backward
# ----------------------------------------------------------------------------------------------


def _forward(static: _Static, qb, kh, vh, mask, bias, rng):
  """Returns (out [nq, batch, kv_heads, group, block_q, head_dim] in q's dtype, lse [nq, batch,
  kv_heads, group, block_q] float32)."""
  nq, b, kvh, g, bq, d = qb.shape
  bk = static.block_k
  nk = kh.shape[2] // bk
  rate = static.dropout_rate
  skip = _may_skip(mask)

  def q_block(_, xs):
    i, qi = xs
    qi = qi * jnp.asarray(static.scale, qi.dtype)  # [batch, kv_heads, group, bq, head_dim]
    q_start = i * bq

    def k_block(j, carry):
      k_start = j * bk
      kj = lax.dynamic_slice_in_dim(kh, k_start, bk, 2)  # [batch, kv_heads, bk, head_dim]
      vj = lax.dynamic_slice_in_dim(vh, k_start, bk, 2)
      allowed = _block_mask(static, mask, q_start, bq, k_start)

      def compute(carry):
        m, l, acc = carry  # m, l: [batch, kv_heads, group, bq]; acc: [.., bq, head_dim] float32
        s = _block_scores(static, qi, kj, bias, allowed, q_start, k_start)  # [b, kvh, g, bq, bk]
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        l = l * corr + jnp.sum(p, axis=-1)  # statistics before dropout
        if rate > 0.0:
          p = jnp.where(_keep(static, rng, i, j, nk, p.shape), p * (1.0 / (1.0 - rate)), 0.0)
        pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
        return m_new, l, acc * corr[..., None] + pv

      if skip and allowed is not None:
        return lax.cond(jnp.any(allowed), compute, lambda c: c, carry)
      return compute(carry)

    init = (jnp.full((b, kvh, g, bq), MASK_VALUE, jnp.float32), jnp.zeros((b, kvh, g, bq), jnp.float32),
            jnp.zeros((b, kvh, g, bq, d), jnp.float32))
    m, l, acc = lax.fori_loop(0, _key_blocks(static, mask, i, bq, nk), k_block, init)
    # A row that saw no visible key keeps m == MASK_VALUE exactly: output 0, lse 0 (so that the
    # backward P = exp(MASK_VALUE - 0) is 0 there too).
    seen = m > MASK_VALUE
    l = jnp.where(seen, l, 1.0)
    out = jnp.where(seen[..., None], acc / l[..., None], 0.0).astype(qb.dtype)
    lse = jnp.where(seen, m + jnp.log(l), 0.0)
    return None, (out, lse)

  _, (out, lse) = lax.scan(q_block, None, (jnp.arange(nq), qb))
  return out, lse


def _zero_cotangent(x):
  """Returns the zero cotangent of a leaf: float0 for integer / bool / key leaves."""
  x_dtype = getattr(x, "dtype", None)
  if x_dtype is not None and jnp.issubdtype(x_dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(np.shape(x), jax.dtypes.float0)


def _backward(static: _Static, res, dout):
  """Returns the cotangents of (qb, kh, vh, mask, bias, rng) from the residuals and dout."""
  qb, kh, vh, mask, bias, rng, out, lse = res
  nq, b, kvh, g, bq, d = qb.shape
  bk = static.block_k
  nk = kh.shape[2] // bk
  rate = static.dropout_rate
  skip = _may_skip(mask)
  scale = jnp.asarray(static.scale, qb.dtype)
  learn_bias = bias is not None and jnp.issubdtype(bias.params.dtype, jnp.inexact)

  def bias_cotangent(ds, q_start, k_start):
    """Returns Σ dS pulled back through Bias.block to the bias parameters (float32)."""
    # ds: [batch, kv_heads, group, bq, bk] -> the block's [batch|1, heads|1, bq, bk]
    def block(params):
      return bias.replace(params=params).block(q_start, bq, k_start, bk)
    shaped, pull = jax.vjp(block, bias.params.astype(jnp.float32))
    ct = ds.reshape(b, kvh * g, bq, bk)
    ct = jnp.sum(ct, axis=tuple(a for a in (0, 1) if shaped.shape[a] == 1 and ct.shape[a] != 1), keepdims=True)
    return pull(ct)[0]

  def q_block(carry, xs):
    i, qi, oi, doi, lsei = xs  # qi, oi, doi: [batch, kv_heads, group, bq, head_dim]; lsei: [.., bq]
    qs = qi * scale
    q_start = i * bq
    delta = jnp.sum(doi.astype(jnp.float32) * oi.astype(jnp.float32), axis=-1)  # D: [b, kvh, g, bq]

    def k_block(j, c):
      dq, dk, dv, dparams = c
      k_start = j * bk
      kj = lax.dynamic_slice_in_dim(kh, k_start, bk, 2)  # [batch, kv_heads, bk, head_dim]
      vj = lax.dynamic_slice_in_dim(vh, k_start, bk, 2)
      allowed = _block_mask(static, mask, q_start, bq, k_start)

      def compute():
        s = _block_scores(static, qs, kj, bias, allowed, q_start, k_start)  # [b, kvh, g, bq, bk]
        p = jnp.exp(s - lsei[..., None])
        dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
        if rate > 0.0:
          keep = _keep(static, rng, i, j, nk, p.shape)
          pd = jnp.where(keep, p * (1.0 / (1.0 - rate)), 0.0)
          dp = jnp.where(keep, dp * (1.0 / (1.0 - rate)), 0.0)
        else:
          pd = p
        dv_j = jnp.einsum("bkgqs,bkgqd->bksd", pd.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., None])  # [b, kvh, g, bq, bk] float32
        dsc = ds.astype(qi.dtype)
        dq_i = jnp.einsum("bkgqs,bksd->bkgqd", dsc, kj, preferred_element_type=jnp.float32)
        dk_j = jnp.einsum("bkgqs,bkgqd->bksd", dsc, qs, preferred_element_type=jnp.float32)
        dpar = bias_cotangent(ds, q_start, k_start) if learn_bias else dparams
        return dq_i, dk_j, dv_j, dpar

      if skip and allowed is not None:
        def nothing():
          return (jnp.zeros_like(dq), jnp.zeros((b, kvh, bk, d), jnp.float32),
                  jnp.zeros((b, kvh, bk, d), jnp.float32), jnp.zeros_like(dparams))
        dq_i, dk_j, dv_j, dpar = lax.cond(jnp.any(allowed), compute, nothing)
      else:
        dq_i, dk_j, dv_j, dpar = compute()
      dk = lax.dynamic_update_slice_in_dim(dk, lax.dynamic_slice_in_dim(dk, k_start, bk, 2) + dk_j, k_start, 2)
      dv = lax.dynamic_update_slice_in_dim(dv, lax.dynamic_slice_in_dim(dv, k_start, bk, 2) + dv_j, k_start, 2)
      if learn_bias:
        dparams = dparams + dpar
      return dq + dq_i, dk, dv, dparams

    dk, dv, dparams = carry
    dq0 = jnp.zeros((b, kvh, g, bq, d), jnp.float32)
    dq, dk, dv, dparams = lax.fori_loop(0, _key_blocks(static, mask, i, bq, nk), k_block,
                                        (dq0, dk, dv, dparams))
    return (dk, dv, dparams), (dq * static.scale).astype(qb.dtype)

  dparams0 = jnp.zeros(bias.params.shape, jnp.float32) if learn_bias else jnp.zeros((), jnp.float32)
  init = (jnp.zeros(kh.shape, jnp.float32), jnp.zeros(vh.shape, jnp.float32), dparams0)
  (dk, dv, dparams), dq = lax.scan(q_block, init, (jnp.arange(nq), qb, out, dout, lse))
  d_mask = jax.tree_util.tree_map(_zero_cotangent, mask)
  d_bias = None
  if bias is not None:
    d_bias = jax.tree_util.tree_map(_zero_cotangent, bias)
    if learn_bias:
      d_bias = d_bias.replace(params=dparams.astype(bias.params.dtype))
  d_rng = None if rng is None else _zero_cotangent(rng)
  return dq, dk.astype(kh.dtype), dv.astype(vh.dtype), d_mask, d_bias, d_rng


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static: _Static, qb, kh, vh, mask, bias, rng):
  """Returns the blocked output [nq, batch, kv_heads, group, block_q, head_dim] (see `_forward`)."""
  return _forward(static, qb, kh, vh, mask, bias, rng)[0]


def _flash_fwd(static, qb, kh, vh, mask, bias, rng):
  """Returns the blocked output and the residuals of the backward pass (inputs, output, lse)."""
  out, lse = _forward(static, qb, kh, vh, mask, bias, rng)
  return out, (qb, kh, vh, mask, bias, rng, out, lse)


_flash.defvjp(_flash_fwd, _backward)
