"""The full training config with its defaults: every configs/*.py starts from `base_config()`.

Every field has one comment. The dict is locked by `lock()`: an override naming a field that does
not exist (`--config.train.stpes=10`) fails, naming the field. `model_overrides` holds every
`tfm.ModelConfig` field, unset (None = keep the preset's value), so any model field can be changed
from the command line and a misspelt one is an error too.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from tfm.config import ModelConfig

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _model_overrides() -> ml_collections.ConfigDict:
  """Returns a ConfigDict with one unset, typed placeholder per ModelConfig field."""
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(ModelConfig):
    name = str(f.type).replace("Optional[", "").rstrip("]")
    out[f.name] = config_dict.placeholder(_TYPES.get(name, object))
  return out


def base_config() -> ml_collections.ConfigDict:
  """Returns the default training config (the embedded default run: a small GPT on pydoc topics)."""
  c = ml_collections.ConfigDict()
  c.task = "lm"                     # objective: lm | mlm | span | seq2seq (see tfm.train.objectives.TASKS)
  c.model = "llama-test"            # preset name (tfm.list_configs()): a 2-layer Llama-style decoder
  c.model_overrides = _model_overrides()  # ModelConfig fields to change (None: the preset's value)
  c.init_from = ""                  # dir of params to start from (tfm.hf.checkpoint.save_params); its config.json
                                    # replaces the preset and its tokenizer.json is used unless data.tokenizer is a path

  c.data = d = ml_collections.ConfigDict()
  d.name = "pydoc_topics"           # TFDS dataset name, "pydoc_topics" (built in) or "local_files"
  d.data_dir = ""                   # TFDS data_dir ("" = ~/tensorflow_datasets)
  d.manual_dir = ""                 # folder of already-downloaded source files (TFDS manual_dir)
  d.train_files = ""                # local_files: comma-separated paths / globs of the training files
  d.validation_files = ""           # local_files: validation files ("" = hold out validation_fraction)
  d.format = ""                     # local_files: text | csv | tsv | jsonl ("" = from the extension)
  d.text_key = "text"               # feature / column holding the text (lm, mlm, span)
  d.input_key = "input"             # seq2seq: feature / column of the source text
  d.target_key = "target"           # seq2seq: feature / column of the target text
  d.train_split = "train"           # split to train on
  d.eval_split = "validation"       # split to evaluate on (missing: hold out the end of train)
  d.validation_fraction = 0.05      # share of train held out when there is no eval split
  d.seq_len = 128                   # tokens per example (encoder side for seq2seq / span)
  d.target_len = 128                # seq2seq: target tokens per example
  d.tokenizer = "byte"              # byte | char | bpe | wordpiece | unigram | path/to/tokenizer.json
  d.vocab_size = 2048               # bpe / wordpiece / unigram: vocabulary size to train

  c.train = t = ml_collections.ConfigDict()
  t.steps = 600                     # optimizer steps
  t.batch_size = 16                 # examples per step (global)
  t.micro_batches = 1               # gradient accumulation: the batch is split into this many slices
  t.eval_every = 200                # evaluate every N steps (and at the end)
  t.eval_batches = 16               # batches per evaluation (fixed windows of the eval split)
  t.eval_at_start = False           # also evaluate the untrained model (step 0)
  t.checkpoint_every = 200          # save a checkpoint every N steps (and at the end)
  t.keep_checkpoints = 3            # periodic checkpoints kept (the best by eval loss is kept apart)
  t.log_every = 20                  # write train metrics every N steps
  t.seed = 0                        # seeds init, data order, masking and dropout
  t.sample_tokens = 160             # lm: tokens generated at each eval (0 = no sample)
  t.sample_prompt = ""              # lm: prompt of the sample ("" = the start of the eval split)
  t.sample_temperature = 0.8        # lm: sampling temperature of the sample, top-k 40 (0 = greedy)
  t.progress = True                 # show a progress bar (step, loss, tokens/s, ETA)
  t.max_wall_s = 0.0                # stop (with a checkpoint) after this many seconds (0 = no limit)

  c.optimizer = o = ml_collections.ConfigDict()
  o.name = "adamw"                  # the only optimizer (AdamW, decoupled weight decay)
  o.learning_rate = 3e-3            # peak learning rate
  o.warmup_steps = 50               # linear warm-up from 0
  o.schedule = "cosine"             # decay after warm-up: cosine | linear | constant
  o.end_learning_rate_factor = 0.1  # final learning rate = factor * peak
  o.b1 = 0.9                        # Adam beta1
  o.b2 = 0.99                       # Adam beta2
  o.eps = 1e-8                      # Adam epsilon
  o.weight_decay = 0.1              # decoupled weight decay (matrices only; no decay on norms, biases)
  o.grad_clip_norm = 1.0            # clip gradients to this global norm (0 = off)

  c.mesh = m = ml_collections.ConfigDict()
  m.data = -1                       # data-parallel devices (-1: all devices left over)
  m.fsdp = 1                        # fully-sharded data-parallel devices
  m.tensor = 1                      # tensor-parallel devices
  c.parallel = "jit"                # jit (one program over the mesh: data / fsdp / tensor) | pmap (data only)
  c.logical_axis_rules = config_dict.placeholder(tuple)  # ((logical name, mesh axes), ...); None: tfm.axes.DEFAULT_RULES
  return c


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns `c` locked: no new fields can be added (typos in overrides fail)."""
  c.lock()
  return c


def model_overrides(c: ml_collections.ConfigDict) -> dict:
  """Returns the model overrides that are set (not None) as a plain dict."""
  return {k: v for k, v in c.model_overrides.to_dict().items() if v is not None}


