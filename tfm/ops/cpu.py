"""The CPU forms of tfm.ops: the same values, with products in the orientations XLA:CPU runs fastest.

`tfm.ops` picks these when a program is lowered for CPU and the plain XLA ops everywhere else; nothing
here checks the backend. Each form was measured on XLA:CPU (Eigen) only, and why is written beside it.
All are exact in float32:

- `kernel_tangent_t`: the kernel gradient of a projection with fan_in > fan_out is computed as
  (dyᵀ · x)ᵀ (`transposed_kernel_grad`);
- `matmul_t`: the tied LM head x · tableᵀ with few rows is computed as (table · xᵀ)ᵀ or as
  x · (tableᵀ copied) (`nt_form`);
- `broadcast_rows`: the tangent of a bias or norm parameter is broadcast as a product, so that its
  gradient is the matrix-vector product onesᵀ · dy rather than a sum over tokens.

`jax.lax.optimization_barrier` keeps XLA from folding a transpose back into its dot: without it the
simplifier restores the slow orientation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def transposed_kernel_grad(fan_in: int, fan_out: int) -> bool:
  """Returns whether the kernel gradient of a [fan_in, fan_out] projection is computed as (dyᵀ · x)ᵀ.

  XLA:CPU (Eigen) runs the [fan_in, fan_out] product xᵀ · dy much slower when fan_in > fan_out
  than the same product computed as [fan_out, fan_in] and transposed: 42 against 64 GFLOP/s for
  BERT's 1024 -> 256 MLP projection over 2048 tokens, 59 against 65 for 1536 -> 384, 56 against
  62 for 3072 -> 768 (and the other way round when fan_in < fan_out). The BERT-4l-256 train step
  went from 889 to 859 ms (T5-4l-256 951 -> 941, gpt-nano unchanged).
  """
  return fan_in > fan_out


def kernel_tangent_t(dkernel: jax.Array) -> jax.Array:
  """Returns the kernel tangent [fan_in, fan_out] transposed, [fan_out, fan_in]; held there by a barrier
  when `transposed_kernel_grad`, so that the kernel gradient, the transpose of x · (dkernelᵀ)ᵀ, is
  dyᵀ · x -> [fan_out, fan_in] followed by one weight-sized transpose copy."""
  if transposed_kernel_grad(*dkernel.shape):
    return jax.lax.optimization_barrier(dkernel.T)
  return dkernel.T


def nt_form(rows: int, cols: int) -> str:
  """Returns how `matmul_t` computes x [rows, d] · w [cols, d]ᵀ: "plain", "transposed" or "table_transposed".

  "transposed" is (w · xᵀ)ᵀ, "table_transposed" is x · (a copy of wᵀ). XLA:CPU (Eigen) runs the plain
  product slowly when it has few rows: for a tied LM head over a 32128-word vocabulary (d 256), 28 GFLOP/s
  with 256 rows against 47 for (w · xᵀ)ᵀ, and 1.5 against 10.5 GFLOP/s with 4 rows (batched decoding:
  greedy gpt2-small generation went from 15 to 61 new tokens/s at batch 4, 80 to 104 at batch 8).
  But XLA fuses the transpose of (w · xᵀ)ᵀ into its consumers, so the loss's exp over the vocabulary
  reads the logits with a stride (52 ms in the T5-4l-256 step); from 256 rows copying the table
  transposed once is faster (T5 step 922 -> 894 and 927 -> 896 ms, forward 324 -> 290 ms, in-process
  A/B). At 1024 rows and more the plain product is as fast or faster.
  """
  if rows >= cols or rows > 512:
    return "plain"
  return "transposed" if rows < 256 else "table_transposed"


def matmul_t(x: jax.Array, w: jax.Array) -> jax.Array:
  """Returns x [rows, d] · w [cols, d]ᵀ as [rows, cols], in the form `nt_form` picks."""
  form = nt_form(x.shape[0], w.shape[0])
  nt = lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))  # a [m, d] · b [n, d]ᵀ: [m, n]
  # The barriers keep XLA from folding the transposes back into the dots.
  if form == "transposed":
    return jax.lax.optimization_barrier(nt(w, x)).T  # [cols, rows] -> [rows, cols]
  if form == "table_transposed":
    return jax.lax.dot_general(x, jax.lax.optimization_barrier(w.T), (((1,), (0,)), ((), ())))  # [rows, d] · [d, cols]
  return nt(x, w)


def broadcast_rows(v: jax.Array, rows: int) -> jax.Array:
  """Returns v [features] repeated as [rows, features], computed as ones [rows, 1] · v [1, features].

  Used for the tangent of a per-feature parameter: transposed, the product gives the parameter's
  gradient as onesᵀ · dy, a matrix-vector product. The plain broadcast's transpose is a sum over
  tokens, which XLA:CPU rewrites into a reduce-window tree: for BERT's [16, 128, 1024] MLP bias
  gradient, 11 ms standalone and 23 ms inside the train step, against 0.6 ms for the product. The
  BERT-4l-256 step went from 946 to 907 ms with Dense biases so, and from 845 to 818 ms with the
  norm scales and biases too (gpt-nano and T5 unchanged). HIGHEST precision keeps the product an
  exact float32 sum whatever the default matmul precision is set to.
  """
  ones = jnp.ones((rows, 1), v.dtype)
  return jnp.matmul(ones, v[None, :], precision=jax.lax.Precision.HIGHEST)
