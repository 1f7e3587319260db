"""Beam search as a pure state update, one call per decoding step (runs inside a lax.while_loop).

The rules are those of Hugging Face `transformers` (generation/utils.py, `_beam_search`), so
that token ids match `generate(num_beams=B, do_sample=False)`:
- each step keeps the 2 * num_beams best continuations over all beams (scores are summed log
  probabilities); the best num_beams that did not just hit EOS (or the length limit) keep running;
- a continuation among the top num_beams that hits EOS, or every one at the last step, is a
  finished hypothesis scored sum_logprob / generated_length ** length_penalty (the length counts
  the EOS token); the best num_beams finished hypotheses are kept;
- `early_stopping`: True stops a batch row once it has num_beams finished hypotheses; False stops
  it when the best running beam, scored at its current length, cannot beat the worst finished one;
  "never" scores it at the longest possible length when length_penalty > 0.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

_NEG = -1.0e9  # HF's "impossible" score; finite so that sums stay ordered


class BeamState(NamedTuple):
  """All beam-search bookkeeping; b = batch, n = num_beams, T = max_new_tokens."""

  running_tokens: jax.Array   # [b, n, T] int32: tokens of the live beams (pad beyond the step)
  running_scores: jax.Array   # [b, n] float32: summed log probabilities of the live beams
  finished_tokens: jax.Array  # [b, n, T] int32: the best finished hypotheses
  finished_scores: jax.Array  # [b, n] float32: their length-penalised scores (best first)
  is_finished: jax.Array      # [b, n] bool: the slot holds a real finished hypothesis
  improvable: jax.Array       # [b] bool: running beams may still beat the finished ones
  done: jax.Array             # [] bool: the whole batch has stopped


def init_state(batch: int, num_beams: int, max_new_tokens: int, pad_token_id: jax.Array) -> BeamState:
  """Returns the state before the first step: only beam 0 is live, so beams start distinct."""
  tokens = jnp.full((batch, num_beams, max_new_tokens), pad_token_id, jnp.int32)  # pad_token_id may be traced
  running_scores = jnp.zeros((batch, num_beams), jnp.float32).at[:, 1:].set(_NEG)
  return BeamState(tokens, running_scores, tokens, jnp.full((batch, num_beams), _NEG, jnp.float32),
                   jnp.zeros((batch, num_beams), bool), jnp.ones((batch,), bool), jnp.zeros((), bool))


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """Returns x[i, idx[i, j], ...]: beams of each row picked by idx [b, k]."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def step(state: BeamState, log_probs: jax.Array, t: jax.Array, *, max_new_tokens: int,
         eos_token_id: Optional[jax.Array], length_penalty: jax.Array,
         early_stopping: Union[bool, str]) -> tuple[BeamState, jax.Array, jax.Array]:
  """Returns (new state, parent [b*n] rows of the old beams to keep, next tokens [b*n]).

  `log_probs`: [b*n, vocab] log-softmax of the step's logits; `t`: index of the token being chosen;
  `eos_token_id` (None: no EOS) and `length_penalty` may be traced scalars.
  The caller reorders its KV cache by `parent` and feeds `next tokens` to the model.
  """
  b, n, _ = state.running_tokens.shape
  vocab = log_probs.shape[-1]
  keep = 2 * n  # HF: max(2, 1 + number of EOS ids) * num_beams
  scores = log_probs.reshape(b, n, vocab) + state.running_scores[:, :, None]
  top_scores, top_idx = jax.lax.top_k(scores.reshape(b, n * vocab), keep)  # [b, 2n]
  top_beam = top_idx // vocab
  top_token = (top_idx % vocab).astype(jnp.int32)
  write = jnp.arange(state.running_tokens.shape[-1]) == t  # [T]
  top_tokens = jnp.where(write, top_token[:, :, None], _gather(state.running_tokens, top_beam))  # [b, 2n, T]
  hits = jnp.broadcast_to(t + 1 >= max_new_tokens, top_token.shape)
  if eos_token_id is not None:
    hits = hits | (top_token == eos_token_id)

  # Live beams: the best n continuations that did not just finish.
  live_scores = top_scores + hits.astype(jnp.float32) * _NEG
  _, live = jax.lax.top_k(live_scores, n)  # [b, n]
  running_tokens = _gather(top_tokens, live)
  running_scores = _gather(live_scores, live)
  parent = _gather(top_beam, live) + jnp.arange(b)[:, None] * n  # [b, n] rows of the flat batch

  # Finished hypotheses: merge the ones that just finished (among the top n) into the kept ones.
  just_finished = hits & (jnp.arange(keep) < n)[None, :]
  cand = top_scores / (t + 1).astype(jnp.float32) ** length_penalty
  if early_stopping is True:
    cand = cand + jnp.all(state.is_finished, axis=-1, keepdims=True).astype(jnp.float32) * _NEG
  cand = cand + (~state.improvable)[:, None].astype(jnp.float32) * _NEG
  cand = cand + (~just_finished).astype(jnp.float32) * _NEG
  merged_scores = jnp.concatenate([state.finished_scores, cand], axis=1)  # [b, 3n]
  _, best = jax.lax.top_k(merged_scores, n)
  finished_tokens = _gather(jnp.concatenate([state.finished_tokens, top_tokens], axis=1), best)
  finished_scores = _gather(merged_scores, best)
  is_finished = _gather(jnp.concatenate([state.is_finished, just_finished], axis=1), best)

  # Can a live beam still beat the worst finished hypothesis?
  best_len = (t + 1).astype(jnp.float32)
  if early_stopping == "never":
    best_len = jnp.where(length_penalty > 0.0, jnp.float32(max_new_tokens), best_len)
  best_possible = running_scores[:, :1] / best_len ** length_penalty  # [b, 1]
  worst = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _NEG)  # [b, n]
  improvable = state.improvable & jnp.any(best_possible > worst, axis=-1)

  go_on = jnp.any(improvable) & ~jnp.all(hits)
  if early_stopping is True:
    go_on = go_on & ~jnp.all(is_finished)
  new = BeamState(running_tokens, running_scores, finished_tokens, finished_scores, is_finished,
                  improvable, ~go_on)
  return new, parent.reshape(-1), _at(running_tokens, t)


def _at(tokens: jax.Array, t: jax.Array) -> jax.Array:
  """Returns tokens[:, :, t] flattened to [b*n]."""
  return jax.lax.dynamic_index_in_dim(tokens, t, axis=2, keepdims=False).reshape(-1)


def best(state: BeamState) -> jax.Array:
  """Returns the best finished hypothesis of each row: [b, T] int32."""
  return state.finished_tokens[:, 0]
