"""The full training config with its defaults: every configs/*.py starts from `base_config()`.

Every field of every task is here, with one comment; a config file only changes values. The dict
is locked by `lock()`: an override naming a field that does not exist (`--config.train.stpes=10`)
fails, naming the field, and a field that was renamed (`data.text_column`) names its new name.
`model_overrides` holds every `tfm.ModelConfig` field, unset (None = keep the preset's value), so
any model field can be changed from the command line and a misspelt one is an error too.

The data fields are one vocabulary for every task: `data.name` says where the examples come from
(a TFDS name, the built-in `pydoc_topics`, or local files by format: text | csv | tsv | jsonl, listed
in `data.train_files` / `data.validation_files`), and the `*_key` fields name the feature / column of
each part of an example (`text_key` for language modelling, `text_key` / `text_pair_key` /
`label_key` for classification, `input_key` / `target_key` for pairs).

`check_config(c)` validates every choice field at load time (before any data is read), naming the
field and the allowed values; train_and_evaluate calls it first.
"""

from __future__ import annotations

import dataclasses
import difflib

import ml_collections
from ml_collections import config_dict

from tfm.config import ModelConfig
from tfm.data.sources import FORMATS
from tfm.data.tokenizers import KINDS
from tfm.presets import list_configs
from tfm.train.objectives import LOWER_IS_BETTER, TASKS, get_task
from tfm.train.optim import SCHEDULES

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

# Fields that were renamed when every task moved to one data vocabulary: using one is an error naming the new one.
RENAMED = {
    "data.train": "data.train_files",
    "data.validation": "data.validation_files",
    "data.test": "data.validation_files (the files evaluated on)",
    "data.text_column": "data.text_key",
    "data.text_b_column": "data.text_pair_key",
    "data.label_column": "data.label_key",
    "data.format": f"data.name (the format of local files: {' | '.join(FORMATS)})",
}


def _renamed_message(path: str) -> str:
  """Returns the one-line error for the renamed field `path`."""
  return f"config field '{path}' was renamed to {RENAMED[path]}"


class _DataFields(ml_collections.ConfigDict):
  """The `data` section: reading or setting a renamed field (also from the command line) names its new name."""

  def __getitem__(self, key):
    if f"data.{key}" in RENAMED and key not in self:
      raise KeyError(_renamed_message(f"data.{key}"))
    return super().__getitem__(key)

  def __setitem__(self, key, value):
    if f"data.{key}" in RENAMED and key not in self:
      raise KeyError(_renamed_message(f"data.{key}"))
    super().__setitem__(key, value)


def _model_overrides() -> ml_collections.ConfigDict:
  """Returns a ConfigDict with one unset, typed placeholder per ModelConfig field."""
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(ModelConfig):
    name = str(f.type).replace("Optional[", "").rstrip("]")
    out[f.name] = config_dict.placeholder(_TYPES.get(name, object))
  return out


def base_config() -> ml_collections.ConfigDict:
  """Returns the default training config (the embedded default run: a tiny Llama-style decoder on pydoc topics)."""
  c = ml_collections.ConfigDict()
  c.task = "lm"                     # objective: lm | mlm | span | seq2seq | classify (tfm.train.objectives.TASKS)
  c.model = "llama-test"            # preset name (tfm.list_configs()): a 2-layer Llama-style decoder
  c.model_overrides = _model_overrides()  # ModelConfig fields to change (None: the preset's value)
  c.init_from = ""                  # model to start from: a run, params or Hugging Face dir (tfm.checkpoint.resolve_model);
                                    # its config replaces the preset, its tokenizer is used unless data.tokenizer is a path

  c.data = d = _DataFields()
  d.name = "pydoc_topics"           # a TFDS name (tiny_shakespeare, glue/sst2, ...), "pydoc_topics" (built in), or the
                                    # format of local files: text (one document per file) | csv | tsv | jsonl
  d.data_dir = ""                   # TFDS data_dir ("" = ~/tensorflow_datasets); local files are prepared there too
  d.manual_dir = ""                 # folder of already-downloaded source files (TFDS manual_dir)
  d.train_files = ""                # local files: comma-separated paths / globs of the training files
  d.validation_files = ""           # local files evaluated on ("" = hold out validation_fraction; classify needs them)
  d.train_split = "train"           # TFDS split to train on (local files: always "train", the train_files)
  d.eval_split = "validation"       # TFDS split to evaluate on (none: hold out the end of train; files: "validation")
  d.validation_fraction = 0.05      # share of train held out when there is no eval split (lm, mlm, span, seq2seq)
  d.text_key = "text"               # feature / column of the text (lm, mlm, span; classify: the first text)
  d.text_pair_key = ""              # classify: feature / column of the second text of pair tasks ("" = single text)
  d.label_key = "label"             # classify: feature / column of the label (strings or integers)
  d.input_key = "input"             # seq2seq: feature / column of the source text
  d.target_key = "target"           # seq2seq: feature / column of the target text
  d.seq_len = 128                   # tokens per example (encoder side for seq2seq / span; classify: longer ones cut)
  d.target_len = 128                # seq2seq: target tokens per example
  d.tokenizer = "byte"              # byte | char | bpe | wordpiece | unigram | path/to/tokenizer.json
  d.vocab_size = 2048               # bpe / wordpiece / unigram: vocabulary size to train
  d.balanced_sampling = False       # classify: draw every class equally often in training batches

  c.train = t = ml_collections.ConfigDict()
  t.steps = 600                     # optimizer steps
  t.batch_size = 16                 # examples per step (global)
  t.micro_batches = 1               # gradient accumulation: the batch is split into this many slices
  t.eval_every = 200                # evaluate every N steps (and at the end)
  t.eval_batches = 16               # batches per evaluation (fixed windows of the eval split)
  t.eval_at_start = False           # also evaluate the untrained model (step 0)
  t.checkpoint_every = 200          # save a checkpoint every N steps (and at the end)
  t.keep_checkpoints = 3            # periodic checkpoints kept (the best by train.best_metric is kept apart)
  t.log_every = 20                  # write train metrics every N steps
  t.seed = 0                        # seeds init, data order, masking and dropout
  t.sample_tokens = 160             # lm: tokens generated at each eval (0 = no sample)
  t.sample_prompt = ""              # lm: prompt of the sample ("" = the start of the eval split)
  t.sample_temperature = 0.8        # lm: sampling temperature of the sample, top-k 40 (0 = greedy)
  t.progress = True                 # show a progress bar (step, loss, tokens/s, ETA)
  t.max_wall_s = 0.0                # stop (with a checkpoint) after this many seconds (0 = no limit)
  t.best_metric = "loss"            # eval metric that picks the best checkpoint: loss | accuracy | perplexity
                                    # (classify also macro_f1 | mcc); loss and perplexity: lower is better
  t.early_stopping_patience = 0     # stop after this many evals without a better best_metric (0 = never)
  t.class_weights = "none"          # classify: none | balanced (loss weights inverse to class frequency)

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
  """Returns `c` locked (a misspelt override fails); raises ValueError on a field that base_config() does not have."""
  check_fields(c)
  c.lock()
  return c


def check_fields(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first field of `c` that base_config() does not have (renamed: its new name)."""
  def walk(node, ref, prefix):
    for key in node.keys():
      path = f"{prefix}{key}"
      if key not in ref:
        if path in RENAMED:
          raise ValueError(_renamed_message(path))
        near = difflib.get_close_matches(str(key), [str(k) for k in ref.keys()], 1, 0.75)
        hint = (f"; did you mean '{prefix}{near[0]}'?" if near else
                f"; the fields of '{prefix or '.'}' are {sorted(ref.keys())}")
        raise ValueError(f"config field '{path}' does not exist{hint}")
      if isinstance(ref[key], ml_collections.ConfigDict) and isinstance(node[key], ml_collections.ConfigDict):
        walk(node[key], ref[key], f"{path}.")
  walk(c, base_config(), "")


def model_overrides(c: ml_collections.ConfigDict) -> dict:
  """Returns the model overrides that are set (not None) as a plain dict."""
  return {k: v for k, v in c.model_overrides.to_dict().items() if v is not None}


# ------------------------------------------------------------------------------------------------
# Validation at load time
# ------------------------------------------------------------------------------------------------


def _bad(path: str, allowed: str, value) -> ValueError:
  return ValueError(f"config field '{path}' must be {allowed}; got {value!r}")


def _one_of(path: str, value, allowed) -> None:
  if value not in allowed:
    raise _bad(path, f"one of {list(allowed)}", value)


def check_config(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field and the allowed values when a field of training config `c` is not allowed."""
  check_fields(c)
  _one_of("task", c.task, sorted(TASKS))
  task = get_task(c.task)
  if not c.init_from:
    _one_of("model", c.model, list_configs())
  _one_of("parallel", c.parallel, ("jit", "pmap"))
  _check_train(c, task)
  _check_data(c, task)
  o = c.optimizer
  _one_of("optimizer.name", o.name, ("adamw",))
  _one_of("optimizer.schedule", o.schedule, SCHEDULES)
  for name in ("learning_rate", "weight_decay", "grad_clip_norm", "end_learning_rate_factor"):
    if not o[name] >= 0:
      raise _bad(f"optimizer.{name}", "a number >= 0", o[name])
  if not (isinstance(o.warmup_steps, int) and o.warmup_steps >= 0):
    raise _bad("optimizer.warmup_steps", "an integer >= 0", o.warmup_steps)
  # mesh sizes are checked against the device count by tfm.parallel.mesh_shape


def _check_train(c, task) -> None:
  t = c.train
  for name in ("steps", "batch_size", "micro_batches", "eval_every", "eval_batches", "checkpoint_every",
               "keep_checkpoints", "log_every"):
    v = t[name]
    if not (isinstance(v, int) and v > 0):
      raise _bad(f"train.{name}", "a positive integer", v)
  if t.batch_size % t.micro_batches:
    raise ValueError(f"config field 'train.batch_size' ({t.batch_size}) must be divisible by "
                     f"'train.micro_batches' ({t.micro_batches})")
  for name in ("sample_tokens", "early_stopping_patience"):
    if not (isinstance(t[name], int) and t[name] >= 0):
      raise _bad(f"train.{name}", "an integer >= 0", t[name])
  for name in ("sample_temperature", "max_wall_s"):
    if not t[name] >= 0:
      raise _bad(f"train.{name}", "a number >= 0", t[name])
  allowed = ", ".join(f"{m} ({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)" for m in task.metrics)
  if t.best_metric not in task.metrics:
    raise _bad("train.best_metric", f"an eval metric of task {task.name!r}: {allowed}", t.best_metric)
  _one_of("train.class_weights", t.class_weights, ("none", "balanced"))
  if t.class_weights != "none" and task.source != "labelled":
    raise ValueError(f"config field 'train.class_weights'={t.class_weights!r} applies to task 'classify' only; "
                     f"task is {task.name!r}")


def _check_data(c, task) -> None:
  d = c.data
  files = d.name in FORMATS
  if d.name == "local_files":
    raise ValueError(f"config field 'data.name'='local_files' was renamed: data.name is the format of the files, one "
                     f"of {list(FORMATS)}")
  if not d.name:
    raise _bad("data.name", f"a TFDS dataset name, 'pydoc_topics' or one of {list(FORMATS)}", d.name)
  if files:
    if not d.train_files:
      raise ValueError(f"config field 'data.train_files' must name the training files (comma-separated paths or "
                       f"globs) when data.name={d.name!r}")
    for name, split in (("train_split", "train"), ("eval_split", "validation")):
      if d[name] != split:
        raise ValueError(f"config field 'data.{name}' must be {split!r} for local files (data.name={d.name!r}: "
                         f"{'data.train_files' if split == 'train' else 'data.validation_files'} hold that split); "
                         f"got {d[name]!r}")
  else:
    for name in ("train_files", "validation_files"):
      if d[name]:
        raise ValueError(f"config field 'data.{name}' applies to local files (data.name one of {list(FORMATS)}); "
                         f"data.name={d.name!r} is a dataset")
  if task.source == "labelled":
    if d.name == "text":
      raise ValueError(f"config field 'data.name'='text' has no labels: task 'classify' reads one of "
                       f"{[f for f in FORMATS if f != 'text']} or a TFDS dataset")
    if files and not d.validation_files:
      raise ValueError("config field 'data.validation_files' must name the files to evaluate on for task 'classify'")
  elif d.balanced_sampling:
    raise ValueError(f"config field 'data.balanced_sampling' applies to task 'classify' only; task is {task.name!r}")
  keys = {"stream": ("text_key",), "pairs": ("input_key", "target_key"), "labelled": ("text_key", "label_key")}
  for name in keys[task.source]:
    if not (isinstance(d[name], str) and d[name]):
      raise _bad(f"data.{name}", "a feature / column name", d[name])
  if not (isinstance(d.seq_len, int) and d.seq_len > 1):
    raise _bad("data.seq_len", "an integer > 1", d.seq_len)
  if not (isinstance(d.target_len, int) and d.target_len > 0):
    raise _bad("data.target_len", "a positive integer", d.target_len)
  if not 0 < d.validation_fraction < 1:
    raise _bad("data.validation_fraction", "a number in (0, 1)", d.validation_fraction)
  if d.tokenizer not in KINDS and not d.tokenizer.endswith(".json"):
    raise _bad("data.tokenizer", f"one of {list(KINDS)} or a path to a tokenizer.json", d.tokenizer)
  if not (isinstance(d.vocab_size, int) and d.vocab_size > 0):
    raise _bad("data.vocab_size", "a positive integer", d.vocab_size)
