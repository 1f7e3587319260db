"""A short generated sample for LM runs: `tfm.generate` (KV cache, one compiled loop), or a plain greedy loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import tfm


def sample_continuation(model, params, prompt: np.ndarray, max_new_tokens: int, temperature: float = 0.0,
                        top_k: int = 40, seed: int = 0) -> np.ndarray:
  """Returns [max_new_tokens] ids continuing `prompt` [prompt_len]: greedy if temperature is 0, else sampled."""
  c = model.config
  if c.position == "learned":
    max_new_tokens = min(max_new_tokens, c.max_len - len(prompt) + 1)
  ids = jnp.asarray(prompt, jnp.int32)[None, :]  # [1, prompt_len]
  try:
    from tfm.generate import generate
  except ImportError:
    generate = None
  if generate is not None:
    if temperature > 0:
      out = generate(model, params, ids, max_new_tokens=max_new_tokens, strategy="sample", temperature=temperature,
                     top_k=min(top_k, c.vocab_size), seed=seed)
    else:
      out = generate(model, params, ids, max_new_tokens=max_new_tokens)
    return np.asarray(out)[0]
  return greedy_loop(model, params, ids, max_new_tokens)


def greedy_loop(model, params, ids, max_new_tokens: int) -> np.ndarray:
  """Returns greedily decoded ids [max_new_tokens]: prefill, then one token at a time through the KV cache."""
  total = ids.shape[1] + max_new_tokens
  cache = tfm.init_cache(model, 1, total)
  mask = jnp.ones((1, total), jnp.int32)
  step = jax.jit(lambda p, cache, x: model.apply({"params": p, "cache": cache}, x, attention_mask=mask, decode=True,
                                                 mutable=["cache"]))
  logits, upd = step(params, cache, ids)
  out = []
  for _ in range(max_new_tokens):
    nxt = jnp.argmax(logits[:, -1], axis=-1)[:, None]  # [1, 1]
    out.append(int(nxt[0, 0]))
    logits, upd = step(params, upd["cache"], nxt)
  return np.asarray(out, np.int32)
