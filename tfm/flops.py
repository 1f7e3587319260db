"""Analytic model FLOPs of the three families (encoder, decoder, encoder-decoder with cross-attention).

Convention (PaLM appendix B / nanoGPT `estimate_mfu`; the same as ../shared/bench/bench_common.py,
so MFU figures of tfm and of the PyTorch baselines are comparable):

* one multiply-add = 2 FLOPs; only matrix multiplications are counted;
* forward FLOPs = 2 x (weights of every matmul that multiplies an activation) per token that goes
  through it, plus the two attention matmuls (q kᵀ and probs v): 2 x 2 x heads x head_dim x kv_len
  per query token and layer, counted for the full q_len x kv_len score matrix (no causal discount,
  although tfm's causal kernel skips the blocks above the diagonal: MFU counts model FLOPs);
* training FLOPs = 3 x forward (the backward pass costs twice the forward);
* not counted: embedding lookups (token, position, token type), norms, biases, activations, softmax,
  the loss, the relative-position / ALiBi bias, and the optimizer update.

Per layer and token, with d = d_model, h = heads, k = kv heads, e = head_dim, f = d_ff:
  self-attention weights  d·e·(2h + 2k)       (q, k, v, out)
  MLP weights             2·d·f, gated 3·d·f  (wi / wi_0, wi_1, and wo)
  attention scores        2·h·e·kv_len        (q kᵀ and probs·v, in multiply-adds)
Cross-attention (encoder-decoder decoder layers): q and out (2·d·h·e) per decoder token, k and v
(2·d·k·e) per *encoder* token, scores 2·h·e·src_len per decoder token (counted per stream, as
bench_common's T5 formula does).
Heads: the LM head d·vocab per output token (tied or not; an MLM transform adds d·d); a classifier
(pooler d·d, hidden d·d, out d·num_labels) once per sequence.

For GPT-2 shapes this gives the familiar 6·N + 12·L·T·d training FLOPs per token.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from tfm.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Model FLOPs of one step on a [batch, seq_len] (and [batch, tgt_len]) input."""

  forward: int           # FLOPs of one forward pass over the whole batch
  tokens: int            # tokens per step (encoder + decoder tokens for encoder-decoder)
  matmul_params: int     # weights that multiply activations (the tied head counted once)

  @property
  def train(self) -> int:
    """Returns the FLOPs of one training step (forward + backward = 3 x forward)."""
    return 3 * self.forward

  @property
  def train_per_token(self) -> float:
    """Returns the training FLOPs per token (the MFU numerator per token)."""
    return self.train / self.tokens

  @property
  def forward_per_token(self) -> float:
    """Returns the forward FLOPs per token."""
    return self.forward / self.tokens


def _layer_weights(c: ModelConfig) -> tuple[int, int]:
  """Returns (self-attention weights, MLP weights) of one layer."""
  d, h, k, e = c.d_model, c.num_heads, c.kv_heads, c.dim_per_head
  attn = d * e * (2 * h + 2 * k)
  mlp = (3 if c.gated_mlp else 2) * d * c.d_ff
  return attn, mlp


def _stack_forward(c: ModelConfig, layers: int, tokens: int, q_len: int, kv_len: int) -> int:
  """Returns forward FLOPs of `layers` self-attention + MLP layers over `tokens` tokens."""
  attn, mlp = _layer_weights(c)
  scores = 2 * c.num_heads * c.dim_per_head * kv_len  # multiply-adds per query token
  del q_len
  return 2 * layers * tokens * (attn + mlp + scores)


def _head_forward(c: ModelConfig, out_tokens: int, sequences: int) -> tuple[int, int]:
  """Returns (forward FLOPs, matmul weights) of the LM or classification head."""
  d = c.d_model
  if c.num_labels:
    w_seq = d * c.num_labels + (d * d if c.pooler and c.family == "encoder" else 0)
    w_seq += d * d if c.classifier_hidden else 0
    return 2 * sequences * w_seq, w_seq
  if not c.lm_head:
    return 0, 0
  w_tok = d * c.vocab_size + (d * d if c.lm_transform else 0)
  return 2 * out_tokens * w_tok, w_tok


def model_flops(config: ModelConfig, batch_size: int, seq_len: int, tgt_len: Optional[int] = None) -> FlopCount:
  """Returns the analytic FlopCount of `config` on [batch, seq_len] inputs ([batch, tgt_len] decoder inputs).

  `tgt_len` is the decoder length of an encoder-decoder model (required for that family unless it
  classifies from the encoder); other families ignore it.
  """
  c = config
  if batch_size <= 0 or seq_len <= 0:
    raise ValueError(f"batch_size and seq_len must be positive; got {batch_size}, {seq_len}")
  attn, mlp = _layer_weights(c)
  src_tok = batch_size * seq_len
  fwd = _stack_forward(c, c.num_layers, src_tok, seq_len, seq_len)
  weights = c.num_layers * (attn + mlp)
  tokens = src_tok
  out_tokens = src_tok
  if c.family == "encoder_decoder" and not (c.num_labels and c.classifier_source == "encoder"):
    if tgt_len is None and c.num_labels:
      tgt_len = seq_len  # the classifying decoder reads shift_right(input_ids)
    if tgt_len is None or tgt_len <= 0:
      raise ValueError(f"encoder-decoder FLOPs need a positive tgt_len (decoder length); got {tgt_len!r}")
    d, h, k, e = c.d_model, c.num_heads, c.kv_heads, c.dim_per_head
    L = c.decoder_layers
    tgt_tok = batch_size * tgt_len
    fwd += _stack_forward(c, L, tgt_tok, tgt_len, tgt_len)
    # cross-attention: q, out on decoder tokens; k, v on encoder tokens; scores over the source
    fwd += 2 * L * tgt_tok * (2 * d * h * e + 2 * h * e * seq_len)
    fwd += 2 * L * src_tok * (2 * d * k * e)
    weights += L * (attn + mlp + 2 * d * h * e + 2 * d * k * e)
    tokens += tgt_tok
    out_tokens = tgt_tok
  head_fwd, head_w = _head_forward(c, out_tokens, batch_size)
  return FlopCount(forward=int(fwd + head_fwd), tokens=int(tokens), matmul_params=int(weights + head_w))
