"""Weight decay is decided by what a parameter is: no norm scale or bias is ever decayed, scanned or not."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import tfm
from tfm.train.defaults import base_config
from tfm.train.optim import make_optimizer

FAMILY_PRESETS = ["gpt2-tiny", "llama-test", "bert-tiny", "t5-tiny", "bart-tiny", "transformer-tiny"]


def _params(preset, scan):
  """Returns the model's params tree filled with random non-zero values (biases start at zero)."""
  c = tfm.get_config(preset, scan_layers=scan)
  model = tfm.build(c)
  ids = jnp.zeros((1, 8), jnp.int32)
  kw = dict(decoder_input_ids=ids) if c.family == "encoder_decoder" else {}
  shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, **kw))["params"])
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), shapes)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_adamw_zero_gradient_step_decays_no_norm_or_bias(preset, scan):
  o = ConfigDict(base_config().optimizer.to_dict())
  o.weight_decay, o.learning_rate, o.warmup_steps, o.schedule = 0.1, 1.0, 0, "constant"
  params = _params(preset, scan)
  tx = make_optimizer(o, total_steps=10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  kept, decayed = [], []
  for (path, p), q in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(new)):
    name = path[-1].key
    changed = not np.array_equal(np.asarray(p), np.asarray(q))
    if name in ("bias", "scale"):
      assert not changed, f"{jax.tree_util.keystr(path)} {p.shape} was decayed"
      kept.append(name)
    else:
      # A zero gradient leaves only the decay term: p - lr * wd * p.
      np.testing.assert_allclose(np.asarray(q), np.asarray(p) * (1 - 0.1), rtol=1e-6, err_msg=jax.tree_util.keystr(path))
      decayed.append(name)
  assert "scale" in kept and "kernel" in decayed and "embedding" in decayed
