"""Fine-tune a classifier on GLUE SST-2 (any family; from scratch or from a checkpoint).

    python train.py --config configs/classify_sst2.py --workdir runs/sst2 \
        --config.data.manual_dir=../shared/data/sst2
    # another family: --config.model=gpt2-tiny (decoder: last token) or t5-tiny (encoder-decoder)
    # start from a pretraining run or a Hugging Face directory: --config.init_from=DIR
    # your own CSV: --config.data.name=csv --config.data.train=train.csv --config.data.validation=dev.csv
    #               [--config.data.text_column=text --config.data.label_column=label]

Offline, SST-2 is prepared as a TFDS dataset from the GLUE TSVs in data.manual_dir (train.tsv,
dev.tsv); online, TFDS downloads `glue/sst2`.
"""

from tfm.train.defaults import base_config, lock


def get_config():
  """Returns the SST-2 classification config."""
  c = base_config()
  c.task = "classify"
  c.model = "bert-tiny"              # any preset of the three families
  c.model_overrides.vocab_size = None
  c.model_overrides.dropout_rate = 0.1
  c.model_overrides.attention_dropout_rate = 0.0
  c.model_overrides.max_len = 128

  d = c.data
  d.name = "glue/sst2"               # TFDS name (glue/*, imdb_reviews, ag_news_subset) or csv | tsv | jsonl
  d.train = ""                       # csv / tsv / jsonl: the training file
  d.validation = ""                  # csv / tsv / jsonl: the validation file
  d.test = ""                        # csv / tsv / jsonl: an optional test file
  d.text_column = "text"             # column / feature of the text (TFDS glue: filled in per task)
  d.text_b_column = ""               # second text of pair tasks ("" = single sentence)
  d.label_column = "label"           # column / feature of the label (strings or integers)
  d.balanced_sampling = False        # draw every class equally often in training batches
  d.seq_len = 64                     # tokens per example (longer ones are truncated, and counted)
  d.tokenizer = "wordpiece"          # trained on the training split, saved in the workdir
  d.vocab_size = 8192

  t = c.train
  t.steps = 2000
  t.batch_size = 32
  t.eval_every = 250
  t.checkpoint_every = 250
  t.log_every = 50
  t.sample_tokens = 0
  t.best_metric = "accuracy"         # accuracy | macro_f1 | mcc | loss: picks the best checkpoint
  t.early_stopping_patience = 0      # stop after this many evals without improvement (0 = never)
  t.class_weights = "none"           # none | balanced (loss weights inverse to class frequency)

  o = c.optimizer
  o.learning_rate = 1e-3
  o.warmup_steps = 100
  o.weight_decay = 0.01
  return lock(c)
