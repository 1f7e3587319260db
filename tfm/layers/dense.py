"""A dense projection whose kernel and bias carry logical axis names."""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

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
    # One 2-D matmul [tokens, fan_in] x [fan_in, fan_out] rather than a tensordot over [batch, length, ...]:
    # the backward weight gradient then contracts a single axis, and XLA:CPU emits it without the
    # transpose copies and slow transposed dots it makes for a multi-axis contraction (about 11 %
    # of a gpt-nano train step; see the README's benchmark section).
    lead = x.shape[:x.ndim - self.contract]
    fan_in = math.prod(in_dims)
    y = matmul(x.astype(dtype).reshape(-1, fan_in), kernel.astype(dtype).reshape(fan_in, -1))  # [tokens, fan_out]
    if self.use_bias:
      bias_axes = tuple(self.axes)[self.contract:]
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes), features,
                        to_dtype(self.param_dtype))
      y = add_bias(y, bias.astype(dtype).reshape(-1))
    return y.reshape(lead + features)


def transposed_kernel_grad(fan_in: int, fan_out: int) -> bool:
  """Returns whether `matmul` computes the kernel gradient as (dyᵀ · x)ᵀ: on CPU, when fan_in > fan_out.

  XLA:CPU (Eigen) runs the [fan_in, fan_out] product xᵀ · dy much slower when fan_in > fan_out
  than the same product computed as [fan_out, fan_in] and transposed: 42 against 64 GFLOP/s for
  BERT's 1024 -> 256 MLP projection over 2048 tokens, 59 against 65 for 1536 -> 384, 56 against
  62 for 3072 -> 768 (and the other way round when fan_in < fan_out). Other backends keep the plain
  product (not measured there).
  """
  return fan_in > fan_out and jax.default_backend() == "cpu"


@jax.custom_jvp
def matmul(x, kernel):
  """Returns x [tokens, fan_in] @ kernel [fan_in, fan_out]: [tokens, fan_out] (see `transposed_kernel_grad`)."""
  return x @ kernel


def _matmul_jvp(primals, tangents):
  """Returns the primal and the tangent dx · kernel + x · dkernel, written so that its transpose (the
  kernel gradient) is the faster orientation of `transposed_kernel_grad`."""
  (x, kernel), (dx, dkernel) = primals, tangents
  y = x @ kernel
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(dx @ kernel)
  if not isinstance(dkernel, SymbolicZero):
    if transposed_kernel_grad(*kernel.shape):
      # The barrier keeps XLA from folding the transpose back into the dot: transposed, this is
      # dot(dyᵀ, x) -> [fan_out, fan_in] followed by one weight-sized transpose copy.
      dk_t = jax.lax.optimization_barrier(dkernel.T)  # [fan_out, fan_in]
      parts.append(jax.lax.dot_general(x, dk_t, (((1,), (1,)), ((), ()))))
    else:
      parts.append(x @ dkernel)
  return y, functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)


matmul.defjvp(_matmul_jvp, symbolic_zeros=True)


def nt_form(rows: int, cols: int) -> str:
  """Returns how `matmul_t` computes x [rows, d] · w [cols, d]ᵀ here: "plain", "transposed" or "table_transposed".

  "transposed" is (w · xᵀ)ᵀ, "table_transposed" is x · (a copy of wᵀ). XLA:CPU (Eigen) runs the plain
  product slowly when it has few rows: for a tied LM head over a 32128-word vocabulary (d 256), 28 GFLOP/s
  with 256 rows against 47 for (w · xᵀ)ᵀ, and 1.5 against 10.5 GFLOP/s with 4 rows (batched decoding).
  But XLA fuses the transpose of (w · xᵀ)ᵀ into its consumers, so the loss's exp over the vocabulary reads
  the logits with a stride (52 ms in the T5-4l-256 step); from 256 rows copying the table transposed once
  is faster (T5 step 922 -> 894 and 927 -> 896 ms, forward 324 -> 290 ms, in-process A/B). At 1024 rows
  and more the plain product is as fast or faster. Other backends keep the plain product (not measured).
  """
  if rows >= cols or rows > 512 or jax.default_backend() != "cpu":
    return "plain"
  return "transposed" if rows < 256 else "table_transposed"


def _nt(x, w):
  """Returns x [rows, d] · w [cols, d]ᵀ as [rows, cols], in the form `nt_form` picks."""
  form = nt_form(x.shape[0], w.shape[0])
  # The barriers keep XLA from folding the transposes back into the dots.
  if form == "transposed":
    return jax.lax.optimization_barrier(jax.lax.dot_general(w, x, (((1,), (1,)), ((), ())))).T
  if form == "table_transposed":
    return jax.lax.dot_general(x, jax.lax.optimization_barrier(w.T), (((1,), (0,)), ((), ())))
  return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())))


@jax.custom_jvp
def matmul_t(x, w):
  """Returns x [rows, d] · w [cols, d]ᵀ: [rows, cols] (the tied LM head; see `nt_form`)."""
  return _nt(x, w)


def _matmul_t_jvp(primals, tangents):
  """Returns the primal and the tangent dx · wᵀ + x · dwᵀ in the plain orientation, whose transposes
  (the gradients dy · w and dyᵀ · x) are already the fast products."""
  (x, w), (dx, dw) = primals, tangents
  nt = lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(nt(dx, w))
  if not isinstance(dw, SymbolicZero):
    parts.append(nt(x, dw))
  y = _nt(x, w)
  return y, functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)


matmul_t.defjvp(_matmul_t_jvp, symbolic_zeros=True)


@jax.custom_jvp
def add_bias(y, bias):
  """Returns y [tokens, features] + bias [features], with a bias gradient computed as a matmul."""
  return y + bias


@add_bias.defjvp
def _add_bias_jvp(primals, tangents):
  """Returns the primal and the tangent, the bias tangent broadcast as ones [tokens, 1] x [1, features].

  Transposed, that product makes the bias gradient onesᵀ · dy, a matrix-vector product. The plain
  broadcast's transpose is a sum over tokens, which XLA:CPU rewrites into a reduce-window tree: for
  BERT's [16, 128, 1024] MLP bias gradient, 11 ms standalone and 23 ms inside the train step, against
  0.6 ms for the product. HIGHEST precision keeps the sum float32-exact on TPUs (whose default f32
  matmul rounds to bfloat16).
  """
  (y, bias), (dy, dbias) = primals, tangents
  return y + bias, dy + broadcast_rows(dbias, y.shape[0])


def broadcast_rows(v, rows: int):
  """Returns v [features] repeated as [rows, features], computed as ones [rows, 1] · v [1, features].

  Use it for the tangent of a per-feature parameter: transposed, the product gives the parameter's
  gradient as onesᵀ · dy, a matrix-vector product, where a plain broadcast gives a sum over rows
  (slow on XLA:CPU, see `add_bias`). HIGHEST precision keeps it float32-exact on TPUs.
  """
  ones = jnp.ones((rows, 1), v.dtype)
  return jnp.matmul(ones, v[None, :], precision=jax.lax.Precision.HIGHEST)
