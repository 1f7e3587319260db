"""The few products the layers are made of: plain XLA maths, with CPU forms chosen where they are lowered.

Each op is a `jax.custom_jvp` whose value and tangent are the plain maths. Where XLA:CPU runs a
product faster in another orientation, one piece of it (the value of the tied head, the transposed
kernel tangent, the broadcast of a parameter tangent) goes through `_on_cpu`, that is
`jax.lax.platform_dependent(..., cpu=<the tfm.ops.cpu form>, default=<the plain form>)`. The choice is
made by the platform the program is lowered for, not by the process's default backend: a program
lowered (or exported) for a GPU or TPU holds only the plain forms, one lowered for CPU only the CPU
forms (measured there; see tfm/ops/cpu.py).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from tfm.ops import cpu


def _on_cpu(cpu_form: Callable, plain_form: Callable, *args):
  """Returns cpu_form(*args) in a program lowered for CPU, plain_form(*args) in any other.

  Apply it to primal values alone or to tangents alone, never to both: linearizing a switch that
  takes both passes its primal inputs out through it as residuals, and a scanned stack then stores
  a copy of each (its stacked kernels, every step) instead of reading them where they are.
  """
  return jax.lax.platform_dependent(*args, cpu=cpu_form, default=plain_form)


def _nt(a, b):
  """Returns a [m, d] · b [n, d]ᵀ: [m, n]."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))


def _sum(parts, like):
  """Returns the sum of the tangent parts, or zeros like `like` when every input tangent is zero."""
  return functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(like)


def _broadcast_rows(v, rows: int):
  """Returns the tangent v [features] repeated as [rows, features] (on CPU as a product, cpu.broadcast_rows)."""
  return _on_cpu(functools.partial(cpu.broadcast_rows, rows=rows), lambda v: jnp.broadcast_to(v, (rows,) + v.shape), v)


@jax.custom_jvp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Returns x [tokens, fan_in] · kernel [fan_in, fan_out]: [tokens, fan_out]."""
  return x @ kernel


def _matmul_jvp(primals, tangents):
  """Returns x · kernel and its tangent dx · kernel + x · dkernel, the second written as x · (dkernelᵀ)ᵀ
  so that on CPU the kernel gradient, its transpose, takes the faster orientation (cpu.kernel_tangent_t)."""
  (x, kernel), (dx, dkernel) = primals, tangents
  y = x @ kernel
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(dx @ kernel)
  if not isinstance(dkernel, SymbolicZero):
    dkernel_t = _on_cpu(cpu.kernel_tangent_t, jnp.transpose, dkernel)  # [fan_out, fan_in]
    parts.append(_nt(x, dkernel_t))
  return y, _sum(parts, y)


matmul.defjvp(_matmul_jvp, symbolic_zeros=True)


@jax.custom_jvp
def matmul_t(x: jax.Array, w: jax.Array) -> jax.Array:
  """Returns x [rows, d] · w [cols, d]ᵀ: [rows, cols] (the tied LM head: hidden states · tableᵀ)."""
  return _on_cpu(cpu.matmul_t, _nt, x, w)


def _matmul_t_jvp(primals, tangents):
  """Returns x · wᵀ and its tangent dx · wᵀ + x · dwᵀ, in the plain orientation on every platform: its
  transposes (the gradients dy · w and dyᵀ · x) are already the fast products on CPU."""
  (x, w), (dx, dw) = primals, tangents
  y = matmul_t(x, w)
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(_nt(dx, w))
  if not isinstance(dw, SymbolicZero):
    parts.append(_nt(x, dw))
  return y, _sum(parts, y)


matmul_t.defjvp(_matmul_t_jvp, symbolic_zeros=True)


@jax.custom_jvp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """Returns y [tokens, features] + bias [features]: [tokens, features]."""
  return y + bias


def _add_bias_jvp(primals, tangents):
  """Returns y + bias and its tangent dy + dbias, the bias tangent broadcast over the rows (`_broadcast_rows`)."""
  (y, bias), (dy, dbias) = primals, tangents
  out = y + bias
  parts = []
  if not isinstance(dy, SymbolicZero):
    parts.append(dy)
  if not isinstance(dbias, SymbolicZero):
    parts.append(_broadcast_rows(dbias, y.shape[0]))
  return out, _sum(parts, out)


add_bias.defjvp(_add_bias_jvp, symbolic_zeros=True)


@jax.custom_jvp
def scale_and_shift(x: jax.Array, scale: jax.Array, bias: Optional[jax.Array]) -> jax.Array:
  """Returns x [tokens, features] · scale [features] + bias [features] (no shift when bias is None)."""
  return x * scale if bias is None else x * scale + bias


def _scale_and_shift_jvp(primals, tangents):
  """Returns the value and its tangent dx · scale + x · dscale + dbias, the parameter tangents broadcast
  over the rows (`_broadcast_rows`)."""
  (x, scale, bias), (dx, dscale, dbias) = primals, tangents
  y = scale_and_shift(x, scale, bias)
  parts = []
  if not isinstance(dx, SymbolicZero):
    parts.append(dx * scale)
  if not isinstance(dscale, SymbolicZero):
    parts.append(x * _broadcast_rows(dscale, x.shape[0]))
  if bias is not None and not isinstance(dbias, SymbolicZero):
    parts.append(_broadcast_rows(dbias, x.shape[0]))
  return y, _sum(parts, y)


scale_and_shift.defjvp(_scale_and_shift_jvp, symbolic_zeros=True)
