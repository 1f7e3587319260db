"""LayerNorm and RMSNorm, computed in float32 whatever the compute dtype."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm.config import ModelConfig
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
    xf = x.astype(jnp.float32)
    if c.norm == "layernorm":
      mean = jnp.mean(xf, axis=-1, keepdims=True)
      xf = xf - mean
    var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(var + c.norm_eps) * scale.astype(jnp.float32)
    use_bias = c.norm == "layernorm" if c.norm_bias is None else c.norm_bias
    if use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), pdt)
      y = y + bias.astype(jnp.float32)
    return y.astype(to_dtype(c.dtype))
