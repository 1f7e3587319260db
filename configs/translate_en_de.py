"""English -> German translation with the original Transformer (Vaswani et al. 2017), sized for 2 CPU cores.

    python train.py --config configs/translate_en_de.py --workdir runs/en_de \
        --config.data.manual_dir=../shared/data/gnu_l10n/en_de
    # English -> French: the same config, the other folder and its target column
    python train.py --config configs/translate_en_de.py --workdir runs/en_fr \
        --config.data.manual_dir=../shared/data/gnu_l10n/en_fr --config.data.target_key=fr

`data.manual_dir` holds train.tsv and valid.tsv (columns en, de / fr, catalog: plain TSV, no quoting);
the train and validation files follow it (`data.train_files` = MANUAL_DIR/train.tsv unless set).
A joint byte-level BPE vocabulary is trained on both sides of the training pairs; the encoder, the
decoder and the output layer share its embedding. Post-norm encoder-decoder, 3 + 3 layers, width
256, sinusoidal positions; label smoothing 0.1; length-bucketed batches. At each eval (halfway and at the end) the whole
validation split is translated with beam search (4 beams) and scored with sacreBLEU: eval_bleu /
eval_chrf in metrics.jsonl (split eval: bleu, chrf), TensorBoard and summary.json (with the
signatures), greedy beside it at the last eval (eval_bleu_greedy); the best checkpoint is the one
with the best BLEU; eval_translations.json holds the translations of the last eval. The whole
command takes about 22 minutes on 2 CPU cores (en-de, AVX-512: BLEU 44.3, chrF 62.0).
"""

from tfm.train.defaults import base_config, lock


def get_config():
  """Returns the English -> German translation config."""
  c = base_config()
  c.task = "seq2seq"                         # (input, target) pairs, teacher-forced loss
  c.model = "transformer-base"               # the Vaswani family (post-norm, sinusoidal, tied embeddings), resized:
  m = c.model_overrides
  m.d_model = 256                            # width
  m.num_layers = 3                           # encoder layers
  m.num_decoder_layers = 3                   # decoder layers
  m.num_heads = 4                            # attention heads (64 per head)
  m.d_ff = 1024                              # MLP width
  m.dropout_rate = 0.1                       # residual and embedding dropout
                                             # weights: the preset's init_std 0.02 (with d_model ** -0.5 the loss at
                                             # step 800 was 5.29 instead of 4.05: relative Adam steps 3x smaller)
  d = c.data
  d.name = "tsv"                             # local tab-separated files with a header line
  d.manual_dir = "../shared/data/gnu_l10n/en_de"
  d.train_files = d.get_ref("manual_dir") + "/train.tsv"
  d.validation_files = d.get_ref("manual_dir") + "/valid.tsv"
  d.input_key = "en"                         # source column
  d.target_key = "de"                        # target column (en_fr: fr)
  d.tokenizer = "bpe"                        # joint byte-level BPE trained on both sides
  d.vocab_size = 8000
  d.seq_len = 96                             # source tokens ([EOS] included)
  d.target_len = 96                          # target tokens
  d.long_pairs = "drop"                      # longer training pairs are dropped (and counted), never cut
  d.bucket_pairs = True                      # batches of pairs of similar length
  t = c.train
  t.steps = 3400                             # ~21 minutes of training on 2 quiet AVX-512 cores (2.7 steps/s)
  t.batch_size = 64
  t.label_smoothing = 0.1
  t.eval_every = 1700                        # an eval halfway and one at the end (each translates the 1,590
                                             # validation sentences: ~40 s with 4 beams on 2 cores)
  t.eval_batches = 8                         # teacher-forced eval loss on 8 x 64 validation pairs
  t.eval_decode_examples = -1                # translate the whole validation split at each eval
  t.final_greedy_decode = True               # the last eval also decodes greedily: eval_bleu_greedy in summary.json
  t.best_metric = "bleu"                     # keep the checkpoint with the best BLEU
  t.checkpoint_every = 600
  t.log_every = 100
  t.max_wall_s = 1380.0                      # on a slower machine: stop after 23 minutes, with the final eval then
  t.decode_num_beams = 4                     # beam search at each eval (and in tfm.generate --input)
  t.decode_length_penalty = 0.6              # Vaswani et al.'s alpha
  t.decode_max_new_tokens = 96
  t.decode_batch_size = 128
  o = c.optimizer
  o.learning_rate = 1e-3
  o.warmup_steps = 400
  o.schedule = "cosine"
  o.end_learning_rate_factor = 0.05
  o.b2 = 0.98
  o.weight_decay = 0.01
  return lock(c)
