"""A short generated sample for LM runs, through `tfm.generate` (KV cache, one compiled loop)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from tfm.generate import generate


def sample_continuation(model, params, prompt: np.ndarray, max_new_tokens: int, temperature: float = 0.0,
                        top_k: int = 40, seed: int = 0) -> np.ndarray:
  """Returns [max_new_tokens] ids continuing `prompt` [prompt_len]: greedy if temperature is 0, else sampled."""
  c = model.config
  if c.position == "learned":  # a sample never runs past the learned position table
    max_new_tokens = min(max_new_tokens, c.max_len - len(prompt) + 1)
  ids = jnp.asarray(prompt, jnp.int32)[None, :]  # [1, prompt_len]
  if temperature > 0:
    out = generate(model, params, ids, max_new_tokens=max_new_tokens, strategy="sample", temperature=temperature,
                   top_k=min(top_k, c.vocab_size), seed=seed)
  else:
    out = generate(model, params, ids, max_new_tokens=max_new_tokens)
  return np.asarray(out)[0]
