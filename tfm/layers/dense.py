"""A dense projection whose kernel and bias carry logical axis names."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from tfm.layers.dtypes import to_dtype


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
    contract_x = tuple(range(x.ndim - self.contract, x.ndim))
    y = jnp.tensordot(x.astype(dtype), kernel.astype(dtype), axes=(contract_x, tuple(range(self.contract))))
    if self.use_bias:
      bias_axes = tuple(self.axes)[self.contract:]
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes), features,
                        to_dtype(self.param_dtype))
      y = y + bias.astype(dtype)
    return y
