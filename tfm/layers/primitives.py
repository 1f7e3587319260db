"""The parts every layer is made of: Dense, Norm, Dropout, the activations, and the config dtype names.

The products inside Dense, Norm and the tied head are `tfm.ops` calls: plain XLA ops, with the
forms XLA:CPU runs faster chosen there when a program is lowered for CPU.

Dropout is per example: the mask of row b of a batch is drawn from `fold_in(layer key, global row
of b)` alone, so it does not depend on how the global batch is cut (devices of a mesh, pmap,
processes, micro-batches). The global rows come from `example_rows(rows)` around the model call
(the train step sets it); without it row b of the array is global row b (one device, or jit over
a mesh, where the program sees the whole global batch).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Iterator, Optional, Sequence

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
    use_bias = c.norm == "layernorm" if c.norm_bias is None else c.norm_bias
    bias = None
    if use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), pdt)
    # The backward pass keeps x alone and recomputes the statistics: autodiff of the plain maths would
    # keep x - mean and the normalised x as well, two more [tokens, embed] arrays per norm.
    return input_saving(functools.partial(_normalize, kind=c.norm, eps=c.norm_eps,
                                          dtype=to_dtype(c.dtype)))(x, scale, bias)


def _normalize(x, scale, bias, *, kind: str, eps: float, dtype):
  """Returns LayerNorm (kind "layernorm") or RMSNorm of x [..., embed] in float32, cast to dtype."""
  d = x.shape[-1]
  xf = x.astype(jnp.float32).reshape(-1, d)  # [tokens, embed]
  if kind == "layernorm":
    xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
  bias = None if bias is None else bias.astype(jnp.float32)
  y = ops.scale_and_shift(xf * jax.lax.rsqrt(var + eps), scale.astype(jnp.float32), bias)
  return y.reshape(x.shape).astype(dtype)


_ROWS = threading.local()  # .rows: int32 [batch] global rows of the batch being traced, or None


@contextlib.contextmanager
def example_rows(rows) -> Iterator[None]:
  """Yields with `rows` (int [batch]: each row's index in the global batch) as the rows dropout keys by.

  Set while a model call is traced (a context, so no model signature carries it); nesting restores
  the outer rows on exit.
  """
  outer = getattr(_ROWS, "rows", None)
  _ROWS.rows = rows
  try:
    yield
  finally:
    _ROWS.rows = outer


def row_keys(key: jax.Array, batch: int) -> jax.Array:
  """Returns one key per row of a batch of `batch` rows: fold_in(key, global row), [batch] keys.

  The global rows are those of the enclosing `example_rows`, else 0 .. batch - 1.
  """
  rows = getattr(_ROWS, "rows", None)
  if rows is None:
    rows = jnp.arange(batch, dtype=jnp.int32)
  elif rows.shape[0] != batch:
    raise ValueError(f"dropout: example_rows holds {rows.shape[0]} rows but the batch has {batch}")
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)  # [batch] keys


class Dropout(nn.Module):
  """Inverted dropout over [batch, ...] whose mask of row b depends only on this layer's key and b's global row."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    """Returns x with each element zeroed with probability `rate` and the others scaled by 1 / (1 - rate)."""
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keys = row_keys(self.make_rng("dropout"), x.shape[0])  # [batch] keys
    keep_prob = 1.0 - self.rate
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, keep_prob, x.shape[1:]))(keys)  # [batch, ...]
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def gelu_exact(x):
  """Returns the exact (erf) GELU; written with lax.erf, which XLA:CPU runs faster than erfc."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def input_saving(fn):
  """Returns `fn` whose backward pass keeps only its inputs and recomputes everything in between.

  For cheap elementwise or per-row maths only (activations, norms). Autodiff of GELU or SiLU keeps
  an intermediate of the size of its input (tanh(...), erf(...), sigmoid(x)): one more
  [batch, length, d_ff] array per layer than PyTorch's GELU, which saves its input alone.
  """

  # jax.checkpoint saving nothing inside: the backward pass recomputes fn from its inputs, behind an
  # optimization barrier (prevent_cse) that keeps XLA from merging the recomputation with the
  # forward's and so keeping the forward's intermediates alive after all. Forward mode still works.
  return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=True)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": input_saving(gelu_exact),
    "gelu_tanh": input_saving(lambda x: jax.nn.gelu(x, approximate=True)),
    "silu": input_saving(jax.nn.silu),
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
