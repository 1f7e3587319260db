"""tfm.ops: the CPU forms equal the plain products, survive XLA on CPU, and are absent from other platforms."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from tfm import ops
from tfm.ops import cpu

CPU = jax.devices("cpu")[0]  # every program below is placed, lowered and compiled for CPU: the CPU forms


def _rand(*shapes, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
  return [jax.device_put(jax.random.normal(k, s), CPU) for k, s in zip(keys, shapes)]


def _check_equal(ours, plain, args, argnums_list):
  """Asserts that ours equals plain in value, in reverse mode for each argnums, and in forward mode."""
  ours, plain = jax.jit(ours), jax.jit(plain)
  np.testing.assert_allclose(ours(*args), plain(*args), rtol=1e-6, atol=1e-6)
  w = _rand(np.shape(plain(*args)), seed=9)[0]
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)) * w)
  for argnums in argnums_list:  # one operand frozen gives a symbolic-zero tangent, as when only one is trained
    g_ours = jax.jit(jax.grad(loss(ours), argnums))(*args)
    g_plain = jax.jit(jax.grad(loss(plain), argnums))(*args)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_ours, g_plain)
  tangents = tuple(_rand(*[np.shape(a) for a in args], seed=3))
  args = tuple(args)
  np.testing.assert_allclose(jax.jvp(ours, args, tangents)[1], jax.jvp(plain, args, tangents)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fan_in,fan_out", [(24, 6), (6, 24), (16, 16)])
def test_matmul_equals_plain_product(fan_in, fan_out):
  """ops.matmul (on CPU: kernel gradient transposed when fan_in > fan_out) equals x @ kernel."""
  assert cpu.transposed_kernel_grad(fan_in, fan_out) == (fan_in > fan_out)
  _check_equal(ops.matmul, lambda x, k: x @ k, _rand((10, fan_in), (fan_in, fan_out)), [(0, 1), 0, 1])


@pytest.mark.parametrize("rows,cols", [(3, 11), (30, 11), (260, 300), (600, 1000)])
def test_matmul_t_equals_plain_product(rows, cols):
  """ops.matmul_t (on CPU: each of nt_form's forms) equals x · wᵀ."""
  form = cpu.nt_form(rows, cols)
  assert form == {(3, 11): "transposed", (30, 11): "plain", (260, 300): "table_transposed", (600, 1000): "plain"}[(rows, cols)]
  _check_equal(ops.matmul_t, lambda x, w: jnp.einsum("rd,vd->rv", x, w), _rand((rows, 6), (cols, 6)), [(0, 1), 0, 1])


def test_add_bias_equals_plain_sum():
  """ops.add_bias (on CPU: bias gradient as onesᵀ · dy) equals y + bias."""
  _check_equal(ops.add_bias, lambda y, b: y + b, _rand((12, 7), (7,)), [(0, 1), 0, 1])


@pytest.mark.parametrize("with_bias", [True, False])
def test_scale_and_shift_equals_plain(with_bias):
  """ops.scale_and_shift (on CPU: scale / bias gradients as matrix-vector products) equals x * scale + bias."""
  x, s, b = _rand((12, 7), (7,), (7,))
  if with_bias:
    _check_equal(ops.scale_and_shift, lambda x, s, b: x * s + b, (x, s, b), [(0, 1, 2), 0, 1, 2])
  else:
    _check_equal(lambda x, s: ops.scale_and_shift(x, s, None), lambda x, s: x * s, (x, s), [(0, 1), 0, 1])


def _dot_output_shapes(fn, *args):
  """Returns the output shapes of the dots in fn's optimized CPU HLO, as tuples."""
  txt = jax.jit(fn).lower(*[jax.device_put(a, CPU) for a in args]).compile().as_text()
  return [tuple(int(d) for d in m.group(1).split(",")) for m in re.finditer(r"= f32\[([\d,]+)\]\{[\d,]*\} dot\(", txt)]


def test_cpu_dot_orientations_survive_xla():
  """On CPU the kernel gradient of a fan_in > fan_out matmul is computed [fan_out, fan_in], and a tied
  head with few rows as [vocab, rows]; both fail if XLA folds the transposes back into the dots."""
  x, w, dy = jnp.ones((64, 48)), jnp.ones((48, 16)), jnp.ones((64, 16))
  kernel_grad = lambda x, w, dy: jax.vjp(lambda w: ops.matmul(x, w), w)[1](dy)[0]
  assert _dot_output_shapes(kernel_grad, x, w, dy) == [(16, 48)]
  assert _dot_output_shapes(kernel_grad, dy, w.T, x) == [(16, 48)]   # fan_in 16 < fan_out 48: plain xᵀ·dy
  h, table = jnp.ones((8, 32)), jnp.ones((100, 32))
  assert _dot_output_shapes(ops.matmul_t, h, table) == [(100, 8)]
  assert _dot_output_shapes(ops.matmul_t, table, h) == [(100, 8)]  # 100 rows > 8 cols: plain
  h, table = jnp.ones((300, 32)), jnp.ones((1000, 32))
  txt = jax.jit(ops.matmul_t).lower(jax.device_put(h, CPU), jax.device_put(table, CPU)).compile().as_text()
  # x · (tableᵀ copied): an NN product
  assert re.findall(r"f32\[300,1000\]\{1,0\} dot\(.*lhs_contracting_dims=\{1\}, rhs_contracting_dims=\{0\}", txt)


def _every_op(x, kernel, bias, scale, table):
  """Returns a scalar through every op, at shapes where each takes its CPU form."""
  y = ops.add_bias(ops.matmul(x, kernel), bias)  # fan_in 48 > fan_out 16: transposed kernel gradient
  y = ops.scale_and_shift(y, scale, bias)
  return jnp.sum(jnp.sin(ops.matmul_t(y, table)))  # 8 rows against 100: the transposed form


_ARGS = (jnp.ones((8, 48)), jnp.ones((48, 16)), jnp.ones(16), jnp.ones(16), jnp.ones((100, 16)))


def _exported_text(platform: str) -> str:
  """Returns the StableHLO of the forward and gradient of `_every_op`, exported for one platform."""
  step = jax.jit(jax.value_and_grad(_every_op, argnums=(0, 1, 2, 3, 4)))
  return export.export(step, platforms=[platform])(*_ARGS).mlir_module()


@pytest.mark.parametrize("platform", ["cuda", "tpu", "rocm"])
def test_other_platforms_get_only_the_plain_ops(platform):
  """A program lowered for a GPU or TPU (exported here, no device needed) holds none of the CPU forms:
  no optimization barrier, no HIGHEST-precision ones-product; lowered for CPU, it holds them all."""
  ours, on_cpu = _exported_text(platform), _exported_text("cpu")
  assert "optimization_barrier" not in ours and "HIGHEST" not in ours
  # kernel gradient, tied head value: 2 barriers; bias, scale and shift: 3 HIGHEST broadcasts
  assert on_cpu.count("stablehlo.optimization_barrier") >= 2 and on_cpu.count("HIGHEST") >= 3


def test_the_plain_forms_equal_the_plain_maths():
  """The program exported for a GPU (only the plain forms in it), run here on CPU with the platform check
  disabled, equals the plain maths in value and in every gradient."""
  def plain(x, kernel, bias, scale, table):
    y = (x @ kernel + bias) * scale + bias
    return jnp.sum(jnp.sin(y @ table.T))
  args = [0.3 * a for a in _rand(*[a.shape for a in _ARGS], seed=4)]
  step = jax.jit(jax.value_and_grad(_every_op, argnums=(0, 1, 2, 3, 4)))
  exported = export.export(step, platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.platform()])(*args)
  assert "optimization_barrier" not in exported.mlir_module()
  got, want = exported.call(*args), jax.value_and_grad(plain, argnums=(0, 1, 2, 3, 4))(*args)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
