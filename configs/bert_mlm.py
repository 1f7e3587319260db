"""Masked-language-model pretraining of a small BERT on tiny Shakespeare (15 % masked: 80/10/10).

    python train.py --config configs/bert_mlm.py --workdir runs/bert_mlm \
        --config.data.manual_dir=../shared/data/tiny_shakespeare

Packed windows of characters; attention stays inside each document (segment ids). Target: eval loss
falls by at least half from its first value within 5 minutes on 2 CPU cores.
"""

from tfm.train.defaults import base_config, lock


def get_config():
  """Returns the BERT masked-LM config."""
  c = base_config()
  c.task = "mlm"                             # masked language modelling
  c.model = "bert-tiny"                      # encoder-only, 2 layers, width 64, BERT's MLM head (tied)
  c.model_overrides.type_vocab_size = 0      # no segment A/B embeddings in pretraining on plain text
  c.model_overrides.position = "rope"        # rotary positions: neighbours are easy to find from step 0
  c.model_overrides.norm_position = "pre"    # pre-norm trains stably at a high learning rate
  c.data.name = "tiny_shakespeare"           # TFDS dataset
  c.data.tokenizer = "char"                  # characters
  c.data.seq_len = 128                       # window length
  c.train.steps = 1500                       # optimizer steps
  c.train.batch_size = 32                    # windows per step
  c.train.eval_every = 50                    # evaluate every N steps
  c.train.eval_batches = 8                   # 8 x 32 windows
  c.train.eval_at_start = True               # step-0 eval: the reference of the learning curve
  c.train.checkpoint_every = 500             # checkpoint every N steps
  c.train.log_every = 50                     # train metrics every N steps
  c.optimizer.learning_rate = 3e-3           # peak learning rate
  c.optimizer.warmup_steps = 30              # linear warm-up
  return lock(c)
