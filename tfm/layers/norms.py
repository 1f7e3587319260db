"""LayerNorm and RMSNorm, computed in float32 whatever the compute dtype."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from tfm.config import ModelConfig
from tfm.layers.dense import broadcast_rows
from tfm.layers.dtypes import to_dtype


class Norm(nn.Module):
  """LayerNorm (mean and variance) or RMSNorm (root mean square), over the last axis."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    """Returns the normalised x ([..., embed]) in the compute dtype."""
    c = self.config
    pdt = to_dtype(c.param_dtype)
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), pdt)
    xf = x.astype(jnp.float32).reshape(-1, d)  # [tokens, embed]
    if c.norm == "layernorm":
      mean = jnp.mean(xf, axis=-1, keepdims=True)
      xf = xf - mean
    var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    use_bias = c.norm == "layernorm" if c.norm_bias is None else c.norm_bias
    bias = None
    if use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), pdt)
      bias = bias.astype(jnp.float32)
    y = scale_and_shift(xf * jax.lax.rsqrt(var + c.norm_eps), scale.astype(jnp.float32), bias)
    return y.reshape(x.shape).astype(to_dtype(c.dtype))


@jax.custom_jvp
def scale_and_shift(x, scale, bias):
  """Returns x [tokens, features] · scale [features] (+ bias [features], or None), with the scale and
  bias gradients computed as matrix-vector products (see `tfm.layers.dense.broadcast_rows`)."""
  return x * scale if bias is None else x * scale + bias


def _scale_and_shift_jvp(primals, tangents):
  """Returns the primal and the tangent dx · scale + x · dscale + dbias, the parameter tangents
  broadcast by `broadcast_rows` (as sums over tokens, XLA:CPU gave them reduce-window trees)."""
  (x, scale, bias), (dx, dscale, dbias) = primals, tangents
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(dx * scale)
  if not isinstance(dscale, SymbolicZero):
    parts.append(x * broadcast_rows(dscale, x.shape[0]))
  if bias is not None and not isinstance(dbias, SymbolicZero):
    parts.append(broadcast_rows(dbias, x.shape[0]))
  y = scale_and_shift(x, scale, bias)
  return y, functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)


scale_and_shift.defjvp(_scale_and_shift_jvp, symbolic_zeros=True)
