"""Task-adaptive pretraining: masked-LM on a classification task's own training texts (labels unused).

Step 1 of the pretrain-then-fine-tune workflow; step 2 fine-tunes with configs/classify_sst2.py:

    python train.py --config configs/classify_pretrain.py --workdir runs/sst2_mlm \
        --config.data.train_files=../shared/data/sst2/train.tsv --config.data.text_key=sentence
    python train.py --config configs/classify_sst2.py --workdir runs/sst2_ft \
        --config.data.manual_dir=../shared/data/sst2 --config.init_from=runs/sst2_mlm

Any text works as the pretraining corpus (`--config.data.name=text` for plain text files, csv / jsonl
with `data.text_key`). The encoder is the classification recipe's (tests/test_classify_pretrain.py
checks that the two configs agree), so the fine-tuning run loads every backbone weight and adds
only the classification head; the MLM head is left behind. The tokenizer is trained here and
reused by the fine-tuning run (init_from brings it along).
"""

from tfm.train.defaults import base_config, lock


def get_config():
  """Returns the masked-LM pretraining config of the classification recipe's encoder."""
  c = base_config()
  c.task = "mlm"                     # 15 % of tokens masked (80 / 10 / 10)
  c.model = "bert-tiny"              # the classification recipe's encoder (configs/classify_sst2.py)
  c.model_overrides.vocab_size = None
  c.model_overrides.dropout_rate = 0.1
  c.model_overrides.attention_dropout_rate = 0.0
  c.model_overrides.max_len = 128

  d = c.data
  d.name = "tsv"                     # local files (text | csv | tsv | jsonl) or a TFDS dataset
  d.text_key = "sentence"            # the column of the text (SST-2's GLUE TSVs)
  d.seq_len = 128                    # packed windows of whole sentences (attention stays in each sentence)
  d.tokenizer = "wordpiece"          # trained on these texts; the fine-tuning run reuses it
  d.vocab_size = 8192                # as the classification recipe
  d.validation_fraction = 0.02       # the tail of the texts held out for the MLM eval loss

  t = c.train
  t.steps = 2000                     # optimizer steps (about 10 passes over SST-2's 67k training texts)
  t.batch_size = 32                  # windows per step
  t.eval_every = 500                 # evaluate every N steps
  t.eval_batches = 8                 # windows per eval: 8 x 32
  t.checkpoint_every = 500           # checkpoint every N steps
  t.log_every = 100                  # train metrics every N steps
  t.sample_tokens = 0                # an encoder does not generate

  o = c.optimizer
  o.learning_rate = 1e-3             # peak learning rate
  o.warmup_steps = 200               # linear warm-up
  o.weight_decay = 0.01              # AdamW decay on matrices
  return lock(c)
