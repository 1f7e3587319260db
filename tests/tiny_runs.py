"""The config of a few-second language-model run on pydoc_topics, shared by the tests that train one."""

from tfm.train.defaults import base_config


def lm_config(tmp_path, model="gpt2-tiny", **train):
  """Returns a locked config: `model` cut to 1 layer, width 32, 2 heads; 6 steps unless `train` says otherwise."""
  c = base_config()
  c.model = model
  c.model_overrides.update(dict(num_layers=1, d_model=32, d_ff=64, num_heads=2))
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.seq_len = 32
  c.train.update(dict(steps=6, batch_size=4, eval_every=6, eval_batches=2, checkpoint_every=6, log_every=3,
                      sample_tokens=0, progress=False, eval_at_start=False))
  c.train.update(train)
  c.optimizer.warmup_steps = 1
  c.lock()
  return c
