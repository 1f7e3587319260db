"""The position-wise MLP: plain (ReLU, GELU, SiLU) or gated (GeGLU, SwiGLU, ReGLU)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from tfm.config import ModelConfig
from tfm.layers.dense import Dense


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


class Mlp(nn.Module):
  """wo(act(wi x)) or, gated, wo(act(wi_0 x) * wi_1 x)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    """Returns the MLP output [batch, length, embed]."""
    c = self.config
    kw = dict(use_bias=c.use_bias, init_std=c.kernel_std, dtype=c.dtype, param_dtype=c.param_dtype)
    act = activation(c.mlp)
    if c.gated_mlp:
      h = act(Dense((c.d_ff,), ("embed", "mlp"), name="wi_0", **kw)(x)) * Dense((c.d_ff,), ("embed", "mlp"), name="wi_1", **kw)(x)
    else:
      h = act(Dense((c.d_ff,), ("embed", "mlp"), name="wi", **kw)(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))  # [batch, length, mlp]
    return Dense((x.shape[-1],), ("mlp", "embed"), name="wo", **kw)(h)
