"""The Transformer layer shared by all families, and the stack of layers (unrolled or scanned)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from tfm.config import ModelConfig
from tfm.layers.attention import Attention
from tfm.layers.mlp import Mlp
from tfm.layers.norms import Norm

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
  """Self-attention, optional cross-attention, MLP; each a residual sublayer, pre- or post-norm."""

  config: ModelConfig
  has_cross: bool = False
  causal: bool = False
  decode: bool = False
  deterministic: bool = True

  def _sublayer(self, x, fn, norm_name):
    c = self.config
    drop = nn.Dropout(c.dropout_rate)
    if c.norm_position == "pre":
      return x + drop(fn(Norm(c, name=norm_name)(x)), deterministic=self.deterministic)
    return Norm(c, name=norm_name)(x + drop(fn(x), deterministic=self.deterministic))

  @nn.compact
  def __call__(self, x, encoded, self_mask, self_bias, cross_mask, positions, cache_index):
    """Returns (x [batch, length, embed], None): the layer output, in the form nn.scan expects."""
    c = self.config
    attn = Attention(c, causal=self.causal, decode=self.decode, deterministic=self.deterministic, name="self_attention")
    x = self._sublayer(x, lambda h: attn(h, h, mask=self_mask, bias=self_bias, positions=positions,
                                         cache_index=cache_index), "attention_norm")
    if self.has_cross:
      cross = Attention(c, is_cross=True, decode=self.decode, deterministic=self.deterministic,
                        name="cross_attention")
      x = self._sublayer(x, lambda h: cross(h, encoded, mask=cross_mask), "cross_attention_norm")
    x = self._sublayer(x, Mlp(c, name="mlp"), "mlp_norm")
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class Stack(nn.Module):
  """`num_layers` Blocks, then the final norm when the config has one."""

  config: ModelConfig
  num_layers: int
  has_cross: bool = False
  causal: bool = False  # the self-attention mask is causal (tfm.attention.dot_product_attention's `causal`)

  @nn.compact
  def __call__(self, x, *, encoded=None, self_mask=None, self_bias=None, cross_mask=None,
               positions=None, cache_index=None, decode=False, deterministic=True):
    """Returns the hidden states [batch, length, embed] after every layer (and the final norm)."""
    c = self.config
    block = Block
    if c.remat != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
    kw = dict(has_cross=self.has_cross, causal=self.causal, decode=decode, deterministic=deterministic)
    args = (encoded, self_mask, self_bias, cross_mask, positions, cache_index)
    if c.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast,) * len(args), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(c, name="layers", **kw)(x, *args)
    else:
      for i in range(self.num_layers):
        x, _ = block(c, name=f"layer_{i}", **kw)(x, *args)
    if c.has_final_norm:
      x = Norm(c, name="final_norm")(x)
    return x
