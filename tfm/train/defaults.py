"""The full training config with its defaults: every configs/*.py starts from `base_config()`.

Every field of every task is here, with one comment; a config file only changes values. The dict
is locked by `lock()`: an override naming a field that does not exist (`--config.train.stpes=10`)
fails, naming the field, and a field that was renamed (`data.text_column`) names its new name.
`data.train` / `data.validation` are aliases of `data.train_files` / `data.validation_files` (the
same value, stored once). `model_overrides` holds every `tfm.ModelConfig` field, unset (None = keep the preset's value), so
any model field can be changed from the command line and a misspelt one is an error too.

The data fields are one vocabulary for every task: `data.name` says where the examples come from
(a TFDS name, the built-in `pydoc_topics`, or local files by format: text | csv | tsv | jsonl, listed
in `data.train_files` / `data.validation_files`), and the `*_key` fields name the feature / column of
each part of an example (`text_key` for language modelling, `text_key` / `text_pair_key` /
`label_key` for classification, `input_key` / `target_key` for pairs).

`check_config(c)` validates every field at load time (before any data is read): each by its rule in
`RULES` (type and range, one line per field), then the rules between fields (the task's metrics,
local files, the preset and its overrides). A bad value is a tfm.errors.UserError (a ValueError)
naming the field and what is allowed; train_and_evaluate calls it first.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from typing import Any, Callable, Optional

import ml_collections
from ml_collections import config_dict

from tfm.config import ModelConfig
from tfm.errors import UserError
from tfm.data.sources import FORMATS
from tfm.data.tokenizers import KINDS
from tfm.presets import list_configs
from tfm.train.objectives import LOWER_IS_BETTER, TASKS, get_task
from tfm.train.optim import SCHEDULES

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

# Fields that were renamed when every task moved to one data vocabulary: using one is an error naming the new one.
RENAMED = {
    "data.test": "data.validation_files (the files evaluated on)",
    "data.text_column": "data.text_key",
    "data.text_b_column": "data.text_pair_key",
    "data.label_column": "data.label_key",
    "data.format": f"data.name (the format of local files: {' | '.join(FORMATS)})",
}


# Other names of a field (the same value: setting one sets the other; only the field itself is stored).
ALIASES = {"data.train": "data.train_files", "data.validation": "data.validation_files"}


def _renamed_message(path: str) -> str:
  """Returns the one-line error for the renamed field `path`."""
  return f"config field '{path}' was renamed to {RENAMED[path]}"


class _DataFields(ml_collections.ConfigDict):
  """The `data` section: an alias (data.train) reads and sets its field; a renamed field names its new name."""

  def __getitem__(self, key):
    if f"data.{key}" in ALIASES and key not in self:
      key = ALIASES[f"data.{key}"].split(".", 1)[1]
    if f"data.{key}" in RENAMED and key not in self:
      raise KeyError(_renamed_message(f"data.{key}"))
    return super().__getitem__(key)

  def __setitem__(self, key, value):
    if f"data.{key}" in ALIASES and key not in self:
      key = ALIASES[f"data.{key}"].split(".", 1)[1]
    if f"data.{key}" in RENAMED and key not in self:
      raise KeyError(_renamed_message(f"data.{key}"))
    super().__setitem__(key, value)

  def get_type(self, key):
    """Returns the type of field `key` (an alias: of its field), as the command-line parser asks."""
    if f"data.{key}" in ALIASES and key not in self:
      key = ALIASES[f"data.{key}"].split(".", 1)[1]
    return super().get_type(key)


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
  d.long_pairs = "truncate"         # seq2seq: training pairs over seq_len / target_len tokens: truncate | drop (counted)
  d.bucket_pairs = False            # seq2seq: batches of pairs of similar length, padded to their bucket, not seq_len
  d.empty_pairs = "error"           # seq2seq: a pair with an empty source or target: error (naming its file and line)
                                    # | skip (counted)
  d.input_prefix = ""               # seq2seq: text put before every source, in training, eval and tfm.generate --input
                                    # (T5: "translate English to German: ")
  d.tokenizer = "byte"              # byte | char | bpe | wordpiece | unigram | path/to/tokenizer.json
  d.vocab_size = 2048               # bpe / wordpiece / unigram: vocabulary size to train
  d.encoding_errors = "strict"      # bytes of a local file that are not UTF-8: strict (an error naming the file and
                                    # byte offset) | replace (read as U+FFFD)
  d.balanced_sampling = False       # classify: draw every class equally often in training batches
  d.holdout_fraction = 0.1          # classify: share of each label's training examples held out to pick the best
                                    # checkpoint and stop early (the evaluation split is never used for choosing)

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
  t.max_wall_s = 0.0                # stop (after an eval and a checkpoint) after this many seconds (0 = no limit)
  t.restart_if_unreadable = False   # every checkpoint unreadable: start from scratch (True) or stop naming them
  t.best_metric = "loss"            # eval metric that picks the best checkpoint: loss | accuracy | perplexity
                                    # (classify also macro_f1 | mcc); loss and perplexity: lower is better
  t.early_stopping_patience = 0     # stop after this many evals without a better best_metric (0 = never)
  t.class_weights = "none"          # classify: none | balanced (loss weights inverse to class frequency)
  t.label_smoothing = 0.0           # training loss: weight spread evenly over the vocabulary / labels (eval: plain NLL)
  t.eval_decode_examples = 0        # seq2seq: validation pairs translated at each eval, scored by BLEU / chrF
                                    # (0 = none, -1 = all); best_metric may then be bleu | chrf (higher is better)
  t.decode_num_beams = 1            # seq2seq eval decoding (and tfm.generate --input): beams (1 = greedy)
  t.decode_length_penalty = 1.0     # beam score = sum of log-probabilities / length ** decode_length_penalty
  t.decode_max_new_tokens = 0       # longest translation in tokens (0 = data.target_len)
  t.decode_batch_size = 64          # source sentences decoded together
  t.final_greedy_decode = False     # seq2seq with decode_num_beams > 1: also decode greedily at the last eval
                                    # (eval_bleu_greedy / eval_chrf_greedy in summary.json)
  t.baselines = True                # classify: fit majority-class and TF-IDF + logistic-regression baselines on the
                                    # same splits first (printed, in summary.json); off for huge datasets

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
  o.ema_decay = 0.0                 # > 0: evaluate and export an exponential moving average of the params (0 = off)

  c.mesh = m = ml_collections.ConfigDict()
  m.data = -1                       # data-parallel devices (-1: all devices left over)
  m.fsdp = 1                        # fully-sharded data-parallel devices
  m.tensor = 1                      # tensor-parallel devices
  c.parallel = "jit"                # jit (one program over the mesh: data / fsdp / tensor) | pmap (data only)
  c.logical_axis_rules = config_dict.placeholder(tuple)  # ((logical name, mesh axes), ...); None: tfm.axes.DEFAULT_RULES
  return c


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns `c` locked (a misspelt override fails); raises UserError on a field that base_config() does not have."""
  check_fields(c)
  c.lock()
  return c


def check_fields(c: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first field of `c` that base_config() does not have (renamed: its new name)."""
  def walk(node, ref, prefix):
    for key in node.keys():
      path = f"{prefix}{key}"
      if key not in ref:
        if path in ALIASES:
          continue  # an unlocked plain ConfigDict may hold an alias itself: data.train
        raise UserError(_unknown_message(path, ref, prefix))
      if isinstance(ref[key], ml_collections.ConfigDict) and isinstance(node[key], ml_collections.ConfigDict):
        walk(node[key], ref[key], f"{path}.")
  walk(c, base_config(), "")


def _unknown_message(path: str, ref: ml_collections.ConfigDict, prefix: str) -> str:
  """Returns the one-line error of field `path` missing from section `ref` (named `prefix`) of base_config()."""
  if path in RENAMED:
    return _renamed_message(path)
  key = path[len(prefix):]
  names = [str(k) for k in ref.keys()] + [a[len(prefix):] for a in ALIASES if a.startswith(prefix)]
  near = difflib.get_close_matches(key, names, 1, 0.75)
  hint = (f"; did you mean '{prefix}{near[0]}'?" if near else
          f"; the fields of '{prefix[:-1] or 'config'}' are {sorted(ref.keys())}")
  return f"config field '{path}' does not exist{hint}"


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def field_problem(path: str, value: Optional[str] = None) -> Optional[str]:
  """Returns the one-line error of a command-line override `--config.PATH[=VALUE]`, or None if it is fine.

  An unknown field is named with its closest field; a renamed one with its new name; a VALUE that does
  not parse as the field's type names the type.
  """
  node, prefix = base_config(), ""
  parts = ALIASES.get(path, path).split(".")
  for i, key in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"config field '{prefix[:-1]}' has no sub-fields; got '{path}'"
    if key not in node:
      return _unknown_message(prefix + key, node, prefix)
    if i == len(parts) - 1:
      kind = node.get_type(key)
      if value is not None and kind in (int, float):
        try:
          kind(value)
        except ValueError:
          return f"config field '{path}' must be {_KIND_WORDS[kind]}; got {value!r}"
      if value is not None and kind is bool and value.lower() not in ("true", "false", "1", "0"):
        return f"config field '{path}' must be {_KIND_WORDS[bool]}; got {value!r}"
      return None
    node, prefix = node[key], f"{prefix}{key}."
  return None


def model_overrides(c: ml_collections.ConfigDict) -> dict:
  """Returns the model overrides that are set (not None) as a plain dict."""
  return {k: v for k, v in c.model_overrides.to_dict().items() if v is not None}


# ------------------------------------------------------------------------------------------------
# Validation at load time
# ------------------------------------------------------------------------------------------------


def _bad(path: str, allowed: str, value) -> UserError:
  return UserError(f"config field '{path}' must be {allowed}; got {value!r}")


def _one_of(path: str, value, allowed) -> None:
  if value not in allowed:
    raise _bad(path, f"one of {list(allowed)}", value)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one config field allows: a test of its value, the words for it, and values of its type it refuses."""

  ok: Callable[[Any], bool]   # value -> allowed?
  allowed: str                # "an integer >= 1", "one of [...]" (the error says: must be <allowed>)
  refused: tuple = ()         # values of the right type that are out of range (tests set each one)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(lo: Optional[int] = None, also: tuple = ()) -> Rule:
  """Returns the Rule of an integer field >= `lo` (any integer when None), or one of the values `also`."""
  words = "an integer" + (f" >= {lo}" if lo is not None else "") + "".join(f" or {a}" for a in also)
  refused = tuple(v for v in ((lo - 1,) if lo is not None else ()) if v not in also)
  refused += tuple(v for v in ((min(also) - 1,) if also else ()) if v not in also and (lo is None or v < lo))
  return Rule(lambda v: _is_int(v) and (v in also or lo is None or v >= lo), words, refused)


def number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
  """Returns the Rule of a number field (an int or float) in the interval from `lo` to `hi` (None: unbounded)."""
  if hi is None:
    words = "a number" + ("" if lo is None else f" {'>' if lo_open else '>='} {lo}")
  else:
    words = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  refused = ((lo if lo_open else lo - 0.5,) if lo is not None else ()) +             ((hi if hi_open else hi + 0.5,) if hi is not None else ())
  def ok(v):
    return (_is_number(v) and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))
  return Rule(ok, words, refused)


def boolean() -> Rule:
  """Returns the Rule of a True / False field."""
  return Rule(lambda v: isinstance(v, bool), "True or False")


def text(nonempty: bool = False) -> Rule:
  """Returns the Rule of a string field (`nonempty`: "" is refused)."""
  return Rule(lambda v: isinstance(v, str) and (bool(v) or not nonempty),
              "a non-empty string" if nonempty else "a string", ("",) if nonempty else ())


def choice(options) -> Rule:
  """Returns the Rule of a field that is one of `options` (strings)."""
  options = list(options)
  return Rule(lambda v: isinstance(v, str) and v in options, f"one of {options}", (options[0] + "?",))


def _axis_rules(v) -> bool:
  return v is None or (isinstance(v, (tuple, list)) and all(
      isinstance(r, (tuple, list)) and len(r) == 2 and isinstance(r[0], str) for r in v))


# One rule per field of base_config() (model_overrides.* are checked by tfm.ModelConfig itself). A new
# field needs one line here: tests/test_errors.py sets a bad value in every field and expects its name.
# Rules that depend on other fields (the task, local files) are in check_config below.
RULES = {
    "task": choice(sorted(TASKS)),
    "model": text(nonempty=True),  # a preset name, checked with the close matches by _check_model
    "init_from": text(),
    "data.name": Rule(lambda v: isinstance(v, str) and bool(v),
                      f"a TFDS dataset name, 'pydoc_topics' or one of {list(FORMATS)}", ("",)),
    "data.data_dir": text(),
    "data.manual_dir": text(),
    "data.train_files": text(),
    "data.validation_files": text(),
    "data.train_split": text(nonempty=True),
    "data.eval_split": text(nonempty=True),
    "data.validation_fraction": number(0, 1, lo_open=True, hi_open=True),
    "data.text_key": text(),
    "data.text_pair_key": text(),
    "data.label_key": text(),
    "data.input_key": text(),
    "data.target_key": text(),
    "data.seq_len": integer(2),
    "data.target_len": integer(1),
    "data.tokenizer": Rule(lambda v: isinstance(v, str) and (v in KINDS or v.endswith(".json")),
                           f"one of {list(KINDS)} or a path to a tokenizer.json", ("sentencepiece",)),
    "data.vocab_size": integer(1),
    "data.balanced_sampling": boolean(),
    "data.holdout_fraction": number(0, 0.5, lo_open=True),
    "data.encoding_errors": choice(("strict", "replace")),
    "data.long_pairs": choice(("truncate", "drop")),
    "data.bucket_pairs": boolean(),
    "data.empty_pairs": choice(("error", "skip")),
    "data.input_prefix": text(),
    "train.steps": integer(1),
    "train.batch_size": integer(1),
    "train.micro_batches": integer(1),
    "train.eval_every": integer(1),
    "train.eval_batches": integer(1),
    "train.eval_at_start": boolean(),
    "train.checkpoint_every": integer(1),
    "train.keep_checkpoints": integer(1),
    "train.log_every": integer(1),
    "train.seed": integer(0),
    "train.sample_tokens": integer(0),
    "train.sample_prompt": text(),
    "train.sample_temperature": number(0),
    "train.progress": boolean(),
    "train.max_wall_s": number(0),
    "train.restart_if_unreadable": boolean(),
    "train.best_metric": text(nonempty=True),  # which metrics: by task, in _check_train
    "train.early_stopping_patience": integer(0),
    "train.class_weights": choice(("none", "balanced")),
    "train.baselines": boolean(),
    "train.label_smoothing": number(0, 1, hi_open=True),
    "train.eval_decode_examples": integer(-1),
    "train.decode_num_beams": integer(1),
    "train.decode_length_penalty": number(),
    "train.decode_max_new_tokens": integer(0),
    "train.decode_batch_size": integer(1),
    "train.final_greedy_decode": boolean(),
    "optimizer.name": choice(("adamw",)),
    "optimizer.learning_rate": number(0),
    "optimizer.warmup_steps": integer(0),
    "optimizer.schedule": choice(SCHEDULES),
    "optimizer.end_learning_rate_factor": number(0),
    "optimizer.b1": number(0, 1, hi_open=True),
    "optimizer.b2": number(0, 1, hi_open=True),
    "optimizer.eps": number(0, lo_open=True),
    "optimizer.weight_decay": number(0),
    "optimizer.grad_clip_norm": number(0),
    "optimizer.ema_decay": number(0, 1, hi_open=True),
    "mesh.data": integer(1, also=(-1,)),
    "mesh.fsdp": integer(1, also=(-1,)),
    "mesh.tensor": integer(1, also=(-1,)),
    "parallel": choice(("jit", "pmap")),
    "logical_axis_rules": Rule(_axis_rules, "None or a tuple of (logical axis name, mesh axes) pairs",
                               ((("batch",),),)),
}


def leaf_paths(c: ml_collections.ConfigDict, prefix: str = "") -> list:
  """Returns the dotted paths of the leaf fields of `c` (model_overrides.* included), in order."""
  out = []
  for k in c.keys():
    if isinstance(c[k], ml_collections.ConfigDict):
      out += leaf_paths(c[k], f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


def _get(c: ml_collections.ConfigDict, path: str):
  node = c
  for key in path.split("."):
    node = node[key]
  return node


def _check_rules(c: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first field of `c` whose value its rule (RULES) refuses."""
  for path in leaf_paths(c):
    rule = RULES.get(path)
    if rule is None:  # model_overrides.* (tfm.ModelConfig checks them); a field without a rule fails its test
      continue
    value = _get(c, path)
    if not rule.ok(value):
      raise _bad(path, rule.allowed, value)


def _check_model(c: ml_collections.ConfigDict) -> None:
  """Raises UserError naming an unknown preset (with its close matches) or a bad model override."""
  if c.init_from:
    return  # the model comes from init_from; its overrides are checked when it is read
  presets = list_configs()
  if c.model not in presets:
    near = difflib.get_close_matches(c.model, presets, 3, 0.5)
    hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
    raise UserError(f"config field 'model' must be a preset name; {hint}got {c.model!r}; the presets are {presets}")
  import tfm  # noqa: PLC0415 (the preset table, at check time only)
  overrides = model_overrides(c)
  try:
    tfm.get_config(c.model).replace(**overrides)
  except UserError as e:
    raise override_error(e, c.model, overrides) from None


def override_error(error: Exception, model: str, overrides: dict) -> UserError:
  """Returns the UserError of a ModelConfig `error` under config.model_overrides (the field named as an override)."""
  msg = str(error)
  m = re.search(r"model config field '(\w+)'", msg)
  if m and m.group(1) in overrides:
    return UserError(msg.replace(f"model config field '{m.group(1)}'", f"config field 'model_overrides.{m.group(1)}'",
                                 1) + f" (model {model!r})")
  return UserError(f"{msg} (model {model!r} with model_overrides {overrides})")


def check_config(c: ml_collections.ConfigDict) -> None:
  """Raises UserError (a ValueError) naming the field and what is allowed when a field of config `c` is not allowed."""
  check_fields(c)
  _check_rules(c)  # each field alone: its type and range
  task = get_task(c.task)
  _check_model(c)
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
    raise UserError(f"config field 'train.batch_size' ({t.batch_size}) must be divisible by "
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
    raise UserError(f"config field 'train.class_weights'={t.class_weights!r} applies to task 'classify' only; "
                     f"task is {task.name!r}")
  _check_decoding(c, task)


def _check_decoding(c, task) -> None:
  """Raises UserError naming the field when label smoothing or the decoding eval is set wrongly."""
  t = c.train
  if not 0.0 <= t.label_smoothing < 1.0:
    raise _bad("train.label_smoothing", "a number in [0, 1)", t.label_smoothing)
  if not (isinstance(t.eval_decode_examples, int) and t.eval_decode_examples >= -1):
    raise _bad("train.eval_decode_examples", "an integer >= -1 (0 = no decoding, -1 = all)", t.eval_decode_examples)
  if t.eval_decode_examples and task.name != "seq2seq":
    raise UserError(f"config field 'train.eval_decode_examples' applies to task 'seq2seq' only; task is {task.name!r}")
  if t.best_metric in ("bleu", "chrf") and not t.eval_decode_examples:
    raise UserError(f"config field 'train.best_metric'={t.best_metric!r} needs decoding at each eval: set "
                    f"train.eval_decode_examples (-1 = the whole validation split)")
  for name, low in (("decode_num_beams", 1), ("decode_max_new_tokens", 0), ("decode_batch_size", 1)):
    if not (isinstance(t[name], int) and t[name] >= low):
      raise _bad(f"train.{name}", f"an integer >= {low}", t[name])
  if not isinstance(t.decode_length_penalty, (int, float)):
    raise _bad("train.decode_length_penalty", "a number", t.decode_length_penalty)
  _one_of("data.long_pairs", c.data.long_pairs, ("truncate", "drop"))


def _check_data(c, task) -> None:
  d = c.data
  files = d.name in FORMATS
  if d.name == "local_files":
    raise UserError(f"config field 'data.name'='local_files' was renamed: data.name is the format of the files, one "
                     f"of {list(FORMATS)}")
  if not d.name:
    raise _bad("data.name", f"a TFDS dataset name, 'pydoc_topics' or one of {list(FORMATS)}", d.name)
  if files:
    if not d.train_files:
      raise UserError(f"config field 'data.train_files' must name the training files (comma-separated paths or "
                       f"globs) when data.name={d.name!r}")
    for name, split in (("train_split", "train"), ("eval_split", "validation")):
      if d[name] != split:
        raise UserError(f"config field 'data.{name}' must be {split!r} for local files (data.name={d.name!r}: "
                         f"{'data.train_files' if split == 'train' else 'data.validation_files'} hold that split); "
                         f"got {d[name]!r}")
  else:
    for name in ("train_files", "validation_files"):
      if d[name]:
        raise UserError(f"config field 'data.{name}' applies to local files (data.name one of {list(FORMATS)}); "
                         f"data.name={d.name!r} is a dataset")
  if task.source == "labelled":
    if d.name == "text":
      raise UserError(f"config field 'data.name'='text' has no labels: task 'classify' reads one of "
                       f"{[f for f in FORMATS if f != 'text']} or a TFDS dataset")
    if files and not d.validation_files:
      raise UserError("config field 'data.validation_files' must name the files to evaluate on for task 'classify'")
  elif d.balanced_sampling:
    raise UserError(f"config field 'data.balanced_sampling' applies to task 'classify' only; task is {task.name!r}")
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
  if not (isinstance(d.holdout_fraction, float) and 0 < d.holdout_fraction <= 0.5):
    raise _bad("data.holdout_fraction", "a number in (0, 0.5]", d.holdout_fraction)
  if d.tokenizer not in KINDS and not d.tokenizer.endswith(".json"):
    raise _bad("data.tokenizer", f"one of {list(KINDS)} or a path to a tokenizer.json", d.tokenizer)
  if not (isinstance(d.vocab_size, int) and d.vocab_size > 0):
    raise _bad("data.vocab_size", "a positive integer", d.vocab_size)
