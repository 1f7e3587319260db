"""The parts every layer is made of: Dense, Norm, the activations, and the config dtype names.

The products inside Dense, Norm and the tied head are `tfm.ops` calls: plain XLA ops, with the
forms XLA:CPU runs faster chosen there when a program is lowered for CPU.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm import ops
from tfm.config import ModelConfig


class Dense(nn.Module):
  """Contracts the last `contract` axes of x with a kernel [*in_dims, *features]."""

  features: Sequence[int]
  axes: Sequence[str]            # logical names of every kernel axis (inputs then outputs)
  contract: int = 1
  use_bias: bool = True
  init_std: Optional[float] = 0.02  # None: fan_in ** -0.5 * fan_in_scale (fan_in: product of the contracted dims)
  fan_in_scale: float = 1.0
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    """Returns x · kernel (+ bias): [..., *features]."""
    features = tuple(self.features)
    in_dims = x.shape[x.ndim - self.contract:]
    std = self.init_std if self.init_std is not None else self.fan_in_scale * math.prod(in_dims) ** -0.5
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(std), tuple(self.axes)),
                        tuple(in_dims) + features, to_dtype(self.param_dtype))
    dtype = to_dtype(self.dtype)
    # One 2-D matmul [tokens, fan_in] x [fan_in, fan_out] rather than a tensordot over [batch, length, ...]:
    # the weight gradient then contracts a single axis. (For a multi-axis contraction XLA:CPU emitted
    # transpose copies and slow transposed dots: about 11 % of a gpt-nano train step.)
    lead = x.shape[:x.ndim - self.contract]
    fan_in = math.prod(in_dims)
    y = ops.matmul(x.astype(dtype).reshape(-1, fan_in), kernel.astype(dtype).reshape(fan_in, -1))  # [tokens, fan_out]
    if self.use_bias:
      bias_axes = tuple(self.axes)[self.contract:]
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes), features,
                        to_dtype(self.param_dtype))
      y = ops.add_bias(y, bias.astype(dtype).reshape(-1))
    return y.reshape(lead + features)


class Norm(nn.Module):
  """LayerNorm (mean and variance) or RMSNorm (root mean square) over the last axis, in float32."""

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
    y = ops.scale_and_shift(xf * jax.lax.rsqrt(var + c.norm_eps), scale.astype(jnp.float32), bias)
    return y.reshape(x.shape).astype(to_dtype(c.dtype))


def gelu_exact(x):
  """Returns the exact (erf) GELU; written with lax.erf, which XLA:CPU runs faster than erfc."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": gelu_exact,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}
# Gated MLP name -> activation of its gate branch.
GATE_ACTIVATION = {"geglu": "gelu", "geglu_tanh": "gelu_tanh", "swiglu": "silu", "reglu": "relu"}


def activation(name: str):
  """Returns the activation function for an MLP name (gated names give their gate's activation)."""
  return ACTIVATIONS[GATE_ACTIVATION.get(name, name)]


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name):
  """Returns the jnp dtype for a config dtype name (or passes a dtype through)."""
  return _DTYPES[name] if isinstance(name, str) else name
