"""Dtype names used in configs, mapped to jnp dtypes."""

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name):
  """Returns the jnp dtype for a config dtype name (or passes a dtype through)."""
  return _DTYPES[name] if isinstance(name, str) else name
