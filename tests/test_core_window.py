"""A sliding window is honoured by encoders too: bidirectional local attention, |query - key| < window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfm


@pytest.mark.parametrize("preset", ["bert-tiny", "llama-test"])
def test_one_layer_output_depends_only_on_tokens_inside_the_window(preset):
  window, length, i = 3, 12, 6
  c = tfm.get_config(preset, num_layers=1, sliding_window=window, dropout_rate=0.0, attention_dropout_rate=0.0)
  model = tfm.build(c)
  ids = jnp.asarray(np.random.default_rng(0).integers(5, c.vocab_size, (1, length)), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids)["params"]
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  base = np.asarray(apply(ids))[0, i]
  causal = c.family == "decoder"
  for j in range(length):
    changed = np.asarray(apply(ids.at[0, j].set(ids[0, j] + 1)))[0, i]
    inside = (i - window < j <= i) if causal else abs(i - j) < window
    assert (not np.allclose(changed, base, atol=1e-6)) == inside, f"{preset}: token {j} vs output {i}"


def test_export_of_an_encoder_window_is_refused():
  from tfm.hf.families import architecture_of
  with pytest.raises(ValueError, match="sliding_window"):
    architecture_of(tfm.get_config("bert-tiny", sliding_window=4))
