"""Fine-tune a classifier on GLUE SST-2 (any family; from scratch or from a checkpoint).

    python train.py --config configs/classify_sst2.py --workdir runs/sst2 \
        --config.data.manual_dir=../shared/data/sst2
    # another family: --config.model=gpt2-tiny (decoder: last token) or t5-tiny (encoder-decoder)
    # start from a pretraining run or a Hugging Face directory: --config.init_from=DIR
    # your own CSV: --config.data.name=csv --config.data.train_files=train.csv --config.data.validation_files=dev.csv
    #               [--config.data.text_key=text --config.data.label_key=label --config.data.text_pair_key=...]

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
  c.model_overrides.classifier_pooling = "max"  # max over the tokens, read by BERT's pooler (docs/classification.md:
                                                # +2.8 / +5.4 points on two small sets, -0.4 on SST-2; first = [CLS])

  d = c.data
  d.name = "glue/sst2"               # TFDS name (glue/*, imdb_reviews, ag_news_subset) or csv | tsv | jsonl files
  d.seq_len = 64                     # tokens per example (longer ones are truncated, and counted)
  d.tokenizer = "wordpiece"          # trained on the training split, saved in the workdir
  d.vocab_size = 8192                # WordPiece vocabulary size

  t = c.train
  t.steps = 2000                     # optimizer steps
  t.batch_size = 32                  # examples per step
  t.eval_every = 250                 # evaluate every N steps (every validation example once)
  t.checkpoint_every = 250           # checkpoint every N steps
  t.log_every = 50                   # train metrics every N steps
  t.sample_tokens = 0                # no generated sample (classifiers do not generate)
  t.best_metric = "accuracy"         # accuracy | macro_f1 | mcc | loss: picks the best checkpoint

  o = c.optimizer
  o.learning_rate = 1e-3             # peak learning rate
  o.warmup_steps = 100               # linear warm-up
  o.weight_decay = 0.01              # AdamW decay on matrices
  return lock(c)
