"""`tfm.generate`: prefill the prompt, then decode with the KV cache inside one compiled while loop.

One `jax.jit` function per (model, decoding settings) holds the whole generation: the prompt pass
(the encoder pass for encoder-decoder models), then a `lax.while_loop` that feeds one token per
step to the cached decoder and chooses the next one (greedy, sampled or by beam search). It is
compiled once per input shape: new prompt contents, seeds, temperatures or top-p values reuse it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfm.errors import UserError
from tfm.generate import beam as beam_search
from tfm.generate import sampling
from tfm.models import CROSS_CACHE_KEYS, cache_shapes, init_cache

STRATEGIES = ("greedy", "sample", "beam")
_COMPILED: dict = {}  # (model, settings) -> jitted generation function
_TRACES = 0  # how many times a generation function was traced (tests check it does not grow)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The static (compile-time) part of a generation call; each distinct value compiles once.

  Token values (eos, pad), the seed, temperature, top_p and length_penalty are traced arguments:
  changing them reuses the compiled loop.
  """

  strategy: str
  max_new_tokens: int
  top_k: Optional[int]
  use_top_p: bool
  num_beams: int
  early_stopping: Union[bool, str]
  has_eos: bool
  callback: Optional[Callable]


def generate(model: nn.Module, params: Any, input_ids, *, max_new_tokens: int, attention_mask=None,
             strategy: str = "greedy", temperature: Optional[float] = None, top_k: Optional[int] = None,
             top_p: Optional[float] = None, num_beams: Optional[int] = None, length_penalty: float = 1.0,
             early_stopping: Union[bool, str] = False, eos_token_id: Optional[int] = None,
             pad_token_id: Optional[int] = None, seed: int = 0,
             callback: Optional[Callable] = None) -> jax.Array:
  """Returns the generated token ids [batch, max_new_tokens] int32 (prompt not included).

  model, params: a decoder-only or encoder-decoder tfm model (`tfm.build`) and its params (boxed
    or not). For encoder-decoder models `input_ids` are the encoder inputs and decoding starts
    from `config.decoder_start_token_id`.
  input_ids: [batch, prompt_len] ints; `attention_mask` [batch, prompt_len] (1 = real token)
    marks padding, which may sit anywhere (left padding as in HF, or right padding).
  strategy: "greedy"; "sample" (softmax of logits / temperature, restricted to the top_k tokens
    and to the top_p probability mass, as HF applies them); "beam" (num_beams beams, default 4;
    scores are summed log probabilities / generated_length ** length_penalty; early_stopping
    True / False / "never" as in HF).
  eos_token_id: a sequence that emits it stops; its later positions hold pad_token_id
    (default: config.pad_token_id). With eos_token_id None every sequence runs max_new_tokens.
  seed: the sampling seed (changing it never recompiles).
  callback: optional host function called as callback(step, tokens [batch]) after each step of
    greedy or sampled decoding (streaming); it is part of the compiled function's identity.
  """
  c = model.config
  if c.family == "encoder":
    raise UserError("generate() needs a decoder: config.family must be 'decoder' or 'encoder_decoder'; "
                     "got 'encoder'")
  if c.num_labels or not c.lm_head:
    raise UserError("generate() needs LM logits: the config must have lm_head=True and num_labels=None")
  if strategy not in STRATEGIES:
    raise UserError(f"generate(): strategy must be one of {list(STRATEGIES)}; got {strategy!r}")
  if not (isinstance(max_new_tokens, int) and max_new_tokens > 0):
    raise UserError(f"generate(): max_new_tokens must be a positive integer; got {max_new_tokens!r}")
  input_ids = jnp.asarray(input_ids)
  if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise UserError(f"generate(): input_ids must be integers [batch, prompt_len]; got {input_ids.dtype}"
                     f"{list(input_ids.shape)}")
  if attention_mask is not None:
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
      raise UserError(f"generate(): attention_mask must have the shape of input_ids {list(input_ids.shape)}; "
                       f"got {list(attention_mask.shape)}")
    if not isinstance(attention_mask, jax.core.Tracer) and int(np.min(np.sum(attention_mask, axis=1))) == 0:
      raise UserError("generate(): every prompt needs at least one real token; attention_mask has a row of zeros")
  if c.position == "learned":
    longest = input_ids.shape[1] + max_new_tokens - 1 if c.family == "decoder" else max_new_tokens
    if longest > c.max_len:
      raise UserError(f"generate(): {'prompt_len (%d) + ' % input_ids.shape[1] if c.family == 'decoder' else ''}"
                       f"max_new_tokens ({max_new_tokens}){' - 1' if c.family == 'decoder' else ''} exceeds "
                       f"config.max_len ({c.max_len}), the number of learned positions")
  sampling_args = dict(temperature=temperature, top_k=top_k, top_p=top_p)
  if strategy != "sample":
    given = [k for k, v in sampling_args.items() if v is not None]
    if given:
      raise UserError(f"generate(): {given} apply to strategy='sample' only; got strategy={strategy!r}")
  if strategy != "beam" and num_beams not in (None, 1):
    raise UserError(f"generate(): num_beams applies to strategy='beam' only; got strategy={strategy!r}")
  if temperature is not None and not temperature > 0:
    raise UserError(f"generate(): temperature must be > 0; got {temperature!r}")
  if top_k is not None and not (isinstance(top_k, int) and 0 < top_k <= c.vocab_size):
    raise UserError(f"generate(): top_k must be an integer in [1, vocab_size={c.vocab_size}]; got {top_k!r}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise UserError(f"generate(): top_p must be in (0, 1]; got {top_p!r}")
  num_beams = (4 if num_beams is None else num_beams) if strategy == "beam" else 1
  if not (isinstance(num_beams, int) and num_beams > 0):
    raise UserError(f"generate(): num_beams must be a positive integer; got {num_beams!r}")
  if early_stopping not in (True, False, "never"):
    raise UserError(f"generate(): early_stopping must be True, False or 'never'; got {early_stopping!r}")
  pad_token_id = c.pad_token_id if pad_token_id is None else pad_token_id
  for name, tok in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
    if tok is not None and not (isinstance(tok, (int, np.integer)) and 0 <= tok < c.vocab_size):
      raise UserError(f"generate(): {name} must be a token id in [0, {c.vocab_size}); got {tok!r}")
  if callback is not None and strategy == "beam":
    raise UserError("generate(): callback (streaming) is for greedy and sampled decoding, not beam search")

  settings = Settings(strategy, max_new_tokens, top_k, top_p is not None and top_p < 1.0, num_beams,
                      early_stopping, eos_token_id is not None, callback)
  params = nn.meta.unbox(params)
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]  # a full variables dict
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  knobs = dict(seed=jnp.asarray(seed, jnp.uint32),
               temperature=jnp.asarray(1.0 if temperature is None else temperature, jnp.float32),
               top_p=jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
               length_penalty=jnp.asarray(length_penalty, jnp.float32),
               eos=jnp.asarray(-1 if eos_token_id is None else eos_token_id, jnp.int32),
               pad=jnp.asarray(pad_token_id, jnp.int32))
  fn = _compiled(model, settings)
  return fn(params, input_ids.astype(jnp.int32), attention_mask.astype(jnp.int32), knobs)


def _compiled(model: nn.Module, settings: Settings) -> Callable:
  """Returns the jitted generation function of (model, settings), built once."""
  key = (model, settings)
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(functools.partial(_generate, model, settings))
  return _COMPILED[key]


# ----------------------------------------------------------------------------------------------
# The two families: a prompt pass returning the first logits and a cache, and one cached step
# ----------------------------------------------------------------------------------------------


def _decoder_only(model, params, input_ids, mask, num_beams, max_new_tokens):
  """Returns (first logits [B, vocab], cache, forward(cache, tokens [B], t) -> (logits, cache), cache slots)."""
  # Left-align every prompt (stable sort puts pads first), so that the last column is each row's
  # last real token; pad slots are masked out of the cache and positions count real tokens only.
  order = jnp.argsort(mask, axis=1, stable=True)  # [b, P]
  ids = jnp.take_along_axis(input_ids, order, axis=1)
  mask = jnp.take_along_axis(mask, order, axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)  # [b, P]
  lengths = jnp.sum(mask, axis=1)  # [b]: real prompt tokens
  ids, mask, positions, lengths = (jnp.repeat(x, num_beams, axis=0) for x in (ids, mask, positions, lengths))
  batch, prompt_len = ids.shape
  max_len = prompt_len + max_new_tokens - 1  # the last new token is never fed back
  slot_mask = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens - 1), mask.dtype)], axis=1)  # [B, max_len]
  cache = init_cache(model, batch, max_len)

  def run(cache, tokens, pos):
    logits, out = model.apply({"params": params, "cache": cache}, tokens, attention_mask=slot_mask,
                              position_ids=pos, decode=True, mutable=["cache"])
    return logits[:, -1].astype(jnp.float32), out["cache"]

  def forward(cache, tokens, t):
    return run(cache, tokens[:, None], (lengths + t)[:, None])

  logits, cache = run(cache, ids, positions)
  return logits, cache, forward, max_len


def _encoder_decoder(model, params, input_ids, mask, num_beams, max_new_tokens):
  """Returns (first logits [B, vocab], cache, forward(cache, tokens [B], t) -> (logits, cache), cache slots)."""
  encoded = model.apply({"params": params}, input_ids, mask, method=model.encode)  # [b, S, embed]
  encoded, mask = (jnp.repeat(x, num_beams, axis=0) for x in (encoded, mask))
  batch = encoded.shape[0]
  cache = init_cache(model, batch, max_new_tokens)  # the first step adds the cross-attention keys / values

  def run(cache, tokens, enc):
    logits, out = model.apply({"params": params, "cache": cache}, enc, tokens[:, None], mask, decode=True,
                              mutable=["cache"], method=model.decode)
    return logits[:, -1].astype(jnp.float32), out["cache"]

  def forward(cache, tokens, t):
    del t  # decoder positions follow the cache index
    return run(cache, tokens, None)  # cross-attention keys and values come from the cache

  start = jnp.full((batch,), model.config.decoder_start_token_id, jnp.int32)
  logits, cache = run(cache, start, encoded)  # projects the encoder output into the cache once
  return logits, cache, forward, max_new_tokens


def _cache_batch_axes(model, max_len, encoder_len):
  """Returns a pytree like the cache holding each leaf's batch axis (None: not reordered by beam search).

  Cross-attention keys and values are left alone: beams of one prompt share its encoder output,
  so a parent beam's rows equal its children's.
  """
  a = cache_shapes(model, 1, max_len, encoder_len)  # the full cache, as it is after the first step
  b = cache_shapes(model, 2, max_len, encoder_len)
  def axis(path, x, y):
    if any(getattr(k, "key", None) in CROSS_CACHE_KEYS for k in path):
      return None
    diff = [i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
    return diff[0] if diff else None
  return jax.tree_util.tree_map_with_path(axis, a, b)


def _reorder(cache, axes, rows):
  """Returns the cache with its batch rows gathered by `rows` [B] (beam search)."""
  return jax.tree_util.tree_map(lambda x, ax: x if ax is None else jnp.take(x, rows, axis=ax), cache, axes)


# ----------------------------------------------------------------------------------------------
# The compiled generation
# ----------------------------------------------------------------------------------------------


def _generate(model, s: Settings, params, input_ids, mask, knobs):
  """Returns [batch, max_new_tokens] generated ids (traced once per input shape)."""
  global _TRACES
  _TRACES += 1
  batch = input_ids.shape[0]
  n = s.num_beams
  prefill = _decoder_only if model.config.family == "decoder" else _encoder_decoder
  logits, cache, forward, cache_len = prefill(model, params, input_ids, mask, n, s.max_new_tokens)
  key = jax.random.key(knobs["seed"])
  eos = knobs["eos"] if s.has_eos else None
  pad = knobs["pad"]

  if s.strategy == "beam":
    axes = _cache_batch_axes(model, cache_len, input_ids.shape[1])

    def choose(state, logits, t, cache):
      state, parent, tokens = beam_search.step(
          state, jax.nn.log_softmax(logits, axis=-1), t, max_new_tokens=s.max_new_tokens,
          eos_token_id=eos, length_penalty=knobs["length_penalty"], early_stopping=s.early_stopping)
      return state, tokens, _reorder(cache, axes, parent)

    state = beam_search.init_state(batch, n, s.max_new_tokens, pad)
    done_of = lambda st: st.done
    finish = beam_search.best
  else:
    def choose(state, logits, t, cache):
      out, done = state
      if s.strategy == "greedy":
        tokens = sampling.greedy(logits)
      else:
        tokens = sampling.sample(logits, jax.random.fold_in(key, t), temperature=knobs["temperature"],
                                 top_k=s.top_k, top_p=knobs["top_p"] if s.use_top_p else None)
      tokens = jnp.where(done, pad, tokens)  # [batch]
      if s.callback is not None:
        jax.debug.callback(s.callback, t, tokens, ordered=True)
      out = jax.lax.dynamic_update_slice(out, tokens[:, None], (jnp.zeros((), jnp.int32), t))
      if eos is not None:
        done = done | (tokens == eos)
      return (out, done), tokens, cache

    state = (jnp.full((batch, s.max_new_tokens), pad, jnp.int32), jnp.zeros((batch,), bool))
    done_of = lambda st: jnp.all(st[1])
    finish = lambda st: st[0]

  t0 = jnp.zeros((), jnp.int32)
  state, tokens, cache = choose(state, logits, t0, cache)

  def cond(carry):
    t, state, _, _ = carry
    return (t < s.max_new_tokens) & ~done_of(state)

  def body(carry):
    t, state, tokens, cache = carry
    logits, cache = forward(cache, tokens, t - 1)  # feed the token chosen at step t - 1
    state, tokens, cache = choose(state, logits, t, cache)
    return t + 1, state, tokens, cache

  _, state, _, _ = jax.lax.while_loop(cond, body, (t0 + 1, state, tokens, cache))
  return finish(state)

