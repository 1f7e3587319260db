"""The embedded default run: a tiny Llama-style decoder (`llama-test`) on the text of Python's own help topics (no network).

    python train.py                      # same as: python train.py --config configs/default.py
    python train.py --workdir runs/default --config.train.steps=1000

Data: `pydoc_data.topics` from the standard library, made into the TFDS dataset `pydoc_topics`
(train: 90 % of the topics, validation: every 10th topic). Byte-level tokens. It stops at 240 s with a resumable checkpoint if the
600 steps take longer (a busy machine), so the command ends within 5 minutes.
"""

from tfm.train.defaults import base_config, lock


def get_config():
  """Returns the default config (see tfm/train/defaults.py for every field)."""
  c = base_config()
  c.train.max_wall_s = 240.0  # on a slow or busy machine, stop (after an eval, with a resumable checkpoint) before 5 minutes
  return lock(c)
