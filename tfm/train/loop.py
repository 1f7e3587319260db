"""The training loop: `train_and_evaluate(config, workdir)`, the one function train.py and tests call.

Order of work: load data and tokenizer -> build the model -> create (or restore) the train state ->
loop { batch(step) -> compiled step -> log / eval / checkpoint } -> summary.json and loss.png.

Seam for multi-device runs: `make_runtime` is the one place where the state is created and the
steps are compiled. On one device it uses plain jax.jit with the state donated; with several
devices (or parallel="pmap") it asks tfm.parallel for the sharded versions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import tfm
from tfm import hostmem
from tfm.checkpoint import Checkpoints, abstract_like, resolve_model
from tfm.data.dataset import ClassifyData, RunData
from tfm.data.tokenizers import check_for_training, save_tokenizer
from tfm.errors import UserError, one_line
from tfm.train import defaults
from tfm.train.classify_metrics import classification_eval, make_predict
from tfm.train.objectives import LOWER_IS_BETTER, Task, get_task
from tfm.train.optim import learning_rate_schedule, make_optimizer
from tfm.train.sample import sample_continuation
from tfm.train.state import TrainState, create_train_state, eval_params
from tfm.train.step import EXAMPLE_ROWS, eval_step, train_step
from tfm.train.translate_metrics import translation_eval
from tfm.train.writers import MetricsWriter, plot_losses, write_json


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the run stopped without saving the bad state."""


# ------------------------------------------------------------------------------------------------
# The model config (the training config is checked by tfm.train.defaults.check_config)
# ------------------------------------------------------------------------------------------------


def model_config(config, task: Task, tokenizer, base: Optional[tfm.ModelConfig] = None,
                 num_labels: Optional[int] = None) -> tfm.ModelConfig:
  """Returns the validated ModelConfig: the preset (or `base`), the overrides, the tokenizer's vocabulary size."""
  overrides = defaults.model_overrides(config)
  user = dict(overrides)  # what the command line asked for (named in errors)
  preset = base if base is not None else tfm.get_config(config.model)
  own_vocab = "vocab_size" not in overrides and not config.init_from  # the data's tokenizer sizes the model
  if own_vocab:
    overrides["vocab_size"] = tokenizer.vocab_size
    if "pad_token_id" not in overrides and tokenizer.pad_id is not None:
      overrides["pad_token_id"] = tokenizer.pad_id  # a preset's own ids (GPT-2: 50256) mean nothing here
  if num_labels:
    overrides["num_labels"] = num_labels
  try:
    mc = preset.replace(**overrides) if overrides else preset
  except UserError as e:
    raise defaults.override_error(e, config.model, user) from None
  if task.family != "any" and mc.family != task.family:
    raise UserError(f"config field 'task'={task.name!r} trains {task.family!r} models; model {config.model!r} is "
                    f"{mc.family!r} (pick a matching preset, or another task)")
  if mc.vocab_size < tokenizer.vocab_size:
    raise UserError(f"model vocab_size ({mc.vocab_size}) is smaller than the tokenizer's ({tokenizer.vocab_size}); "
                    f"leave config field 'model_overrides.vocab_size' unset or make it >= {tokenizer.vocab_size}")
  if mc.pad_token_id != tokenizer.pad_id and task.family == "encoder_decoder":
    mc = mc.replace(pad_token_id=tokenizer.pad_id, decoder_start_token_id=tokenizer.pad_id)
  for name in ("pad_token_id", "decoder_start_token_id"):
    if getattr(mc, name) >= mc.vocab_size:
      raise UserError(f"model field {name}={getattr(mc, name)} is not a token id of the model's vocabulary "
                      f"(vocab_size {mc.vocab_size}, tokenizer {getattr(tokenizer, 'kind', '?')}); set "
                      f"--config.model_overrides.{name} below {mc.vocab_size}")
  if mc.position == "learned":  # the one position scheme with a largest position (rope, alibi, ...: none)
    lengths = [("data.seq_len", config.data.seq_len)]
    if task.source == "pairs":
      lengths.append(("data.target_len", config.data.target_len))
    for field, length in lengths:
      need = length + mc.position_offset
      if need > mc.max_len:
        raise UserError(f"config field '{field}' ({length}) exceeds the model's learned positions (max_len="
                        f"{mc.max_len}); set --config.model_overrides.max_len={need} or a shorter {field}")
  return mc


def check_workdir(config, workdir: str, mc: Optional[tfm.ModelConfig] = None) -> None:
  """Raises UserError when `workdir` holds a run of another model than `config` (and `mc`, once known) trains.

  Before the data is read it compares the model fields of WORKDIR/config.json (model, init_from,
  model_overrides); with `mc` it compares the resolved model configs too, before config.json is written.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} is a file; choose a directory (new, or a run to resume)")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
    old_config, old_model = saved["config"], saved["model_config"]
  except (ValueError, KeyError, TypeError, OSError):
    raise UserError(f"--workdir {workdir} holds a config.json that is not a training run's; choose another "
                    f"--workdir") from None
  # how the model runs, not what it is: a resumed run may change these
  not_compared = {"attention_impl", "remat", "dtype", "dropout_rate", "attention_dropout_rate", "pad_token_id",
                  "decoder_start_token_id"}
  overrides = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in (d or {}).items()
                         if v is not None and k not in not_compared}
  here = {"model": config.model, "init_from": config.init_from,
          "model_overrides": overrides(defaults.model_overrides(config))}
  there = {"model": old_config.get("model"), "init_from": old_config.get("init_from", ""),
           "model_overrides": overrides(old_config.get("model_overrides"))}
  differ = [f"{k}: {there[k]!r} there, {here[k]!r} here" for k in here if here[k] != there[k]]
  if mc is not None and not differ:
    differ = [f"model_config.{k}: {old_model.get(k)!r} there, {v!r} here" for k, v in mc.to_dict().items()
              if k not in not_compared and old_model.get(k) != v]
  if differ:
    raise UserError(f"--workdir {workdir} holds a run of another model ({'; '.join(differ[:4])}): to resume it, run "
                    f"the command that started it again; to train this model, choose another --workdir")
  old_ema = float(old_config.get("optimizer", {}).get("ema_decay", 0.0))
  if bool(old_ema) != bool(config.optimizer.ema_decay):  # the checkpoints hold the average, or do not
    raise UserError(f"--workdir {workdir} holds a run with optimizer.ema_decay={old_ema}, this config has "
                    f"{config.optimizer.ema_decay}: a run keeps or lacks its average from the start; resume with "
                    f"{'a decay > 0' if old_ema else '0'}, or choose another --workdir")


def init_params(model, batch: dict, rng):
  """Returns boxed params of `model` initialised from the shapes of one example of `batch`."""
  inputs = jnp.asarray(batch["inputs"][:1])
  if model.config.family == "encoder_decoder" and "targets" in batch:
    return model.init(rng, inputs, decoder_input_ids=jnp.asarray(batch["targets"][:1]))["params"]
  return model.init(rng, inputs)["params"]


# ------------------------------------------------------------------------------------------------
# The seam: state creation and step compilation
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Runtime:
  """The compiled pieces of a run (single device, or sharded by tfm.parallel)."""

  state: TrainState                                 # the initial state (placed on the devices)
  train_step: Callable[[TrainState, dict], tuple]   # (state, numpy batch) -> (state, metrics)
  eval_step: Callable[[Any, dict], dict]            # (params, numpy batch) -> loss sums
  abstract_state: Any                               # restore target (shapes, dtypes, shardings)
  description: str                                  # how it runs, for the log


def _step_fn(model, tx, task, micro_batches, axis_name=None):
  def fn(state, batch):
    # The step's key (resume gives the same keys), the same on every device: dropout masks follow each
    # example's global row (tfm.train.step), so every topology draws the same ones.
    rng = jax.random.fold_in(state.rng, state.step)
    return train_step(state, batch, rng, model=model, tx=tx, task=task, micro_batches=micro_batches,
                      axis_name=axis_name)
  return fn


def make_runtime(config, model, tx, task: Task, example_batch: dict) -> Runtime:
  """Returns the Runtime: the initial state and the compiled train / eval steps."""
  key = jax.random.PRNGKey(config.train.seed)
  init_rng, state_rng = jax.random.split(key)
  init_fn = lambda: create_train_state(init_params(model, example_batch, init_rng), tx, state_rng,
                                       ema_decay=config.optimizer.ema_decay)
  step = functools.partial(_step_fn, model, tx, task, config.train.micro_batches)  # axis_name -> step
  evaluate = functools.partial(eval_step, model=model, task=task)
  m = config.mesh
  single = jax.device_count() == 1 and config.parallel == "jit" and all(v in (1, -1) for v in (m.data, m.fsdp, m.tensor))
  if single:
    state = jax.jit(lambda: nn.meta.unbox(init_fn()))()
    abstract = abstract_like(state)  # with the sharding (one device here): restores checkpoints of any mesh
    return Runtime(state, jax.jit(step(), donate_argnums=0), jax.jit(evaluate), abstract,
                   f"jit on {jax.devices()[0].platform}")
  return _parallel_runtime(config, init_fn, step, evaluate)


def _parallel_runtime(config, init_fn, step, evaluate) -> Runtime:
  """Returns a Runtime from tfm.parallel: jit over the config's mesh, or pmap over the local devices.

  Batches arrive as the global batch; each process keeps the rows its devices hold.
  Either way the state the loop sees is a tree of ordinary (global) arrays, so checkpoints, eval
  and sampling do not depend on the topology, and a checkpoint restores onto any other one.
  """
  from tfm import parallel
  rows = parallel.process_batch_slice(config.train.batch_size)  # pmap: 1 / process_count of the batch
  local = lambda b: jax.tree_util.tree_map(lambda x: x[rows], b)  # this process's rows of the global batch
  if config.parallel == "pmap":
    state = parallel.replicate(jax.jit(lambda: nn.meta.unbox(init_fn()))())
    abstract = abstract_like(state)
    train = parallel.pmap_step(step(parallel.PMAP_AXIS), axis_name_kwarg=None)
    evaluate_p = parallel.pmap_step(lambda p, b: evaluate(p, b, axis_name=parallel.PMAP_AXIS), axis_name_kwarg=None,
                                    donate=False)
    split = lambda b: parallel.split_batch(local(b))
    # Each row's index in the global batch travels with it (the key of its dropout masks).
    with_rows = lambda b: dict(b, **{EXAMPLE_ROWS: np.arange(config.train.batch_size, dtype=np.int32)})
    return Runtime(state, lambda s, b: train(s, split(with_rows(b))), lambda p, b: evaluate_p(p, split(b)), abstract,
                   f"pmap over {jax.local_device_count()} local devices x {jax.process_count()} process(es)")
  mesh = parallel.mesh_from_config(config)
  rules = parallel.logical_rules(config)
  rows = parallel.process_rows(config.train.batch_size, mesh, rules)  # jit: the rows this process's devices hold
  state, shardings = parallel.sharded_init(init_fn, mesh, rules)
  abstract = abstract_like(state, shardings)
  train = parallel.jit_step(step(), mesh, shardings, rules)
  evaluate_c = parallel.jit_step(lambda params, batch: evaluate(params, batch), mesh, shardings.params, rules,
                                 returns_state=False)
  put = lambda b: parallel.shard_batch(local(b), mesh, rules, config.train.batch_size)
  return Runtime(state, lambda s, b: train(s, put(b)), lambda p, b: evaluate_c(p, put(b)), abstract,
                 f"jit over mesh {dict(mesh.shape)} ({jax.process_count()} process(es))")


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


NEW_HEAD_MODULES = ("classifier", "pooler")  # parameters a classifier may add to the model it starts from


def start_params(fresh, loaded, source: str, log=print):
  """Returns `fresh` params with every parameter taken from `loaded` (shapes checked, cast to fresh's dtypes).

  Only a classification head is new: the label projection always (its labels are this run's), the
  pooler when `loaded` has none. Any other parameter missing from `loaded` is a ValueError.
  """
  flat_new = dict(jax.tree_util.tree_flatten_with_path(nn.meta.unbox(fresh))[0])
  flat_old = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(nn.meta.unbox(loaded))[0]}
  out, new = {}, []
  for k, v in flat_new.items():
    name = jax.tree_util.keystr(k)
    if name in flat_old and "['classifier']" not in name:  # the label projection is always this run's own
      if tuple(np.shape(flat_old[name])) != tuple(v.shape):
        raise ValueError(f"init_from={source}: parameter {name} has shape {tuple(np.shape(flat_old[name]))} in the "
                         f"checkpoint but {tuple(v.shape)} in the model; the checkpoint and the model config differ")
      arr = jnp.asarray(flat_old[name], v.dtype)
      out[k] = jax.device_put(arr, v.sharding) if hasattr(v, "sharding") else arr
    elif any(f"['{h}']" in name for h in NEW_HEAD_MODULES):
      out[k] = v
      new.append(name)
    else:
      raise ValueError(f"init_from={source}: the checkpoint has no parameter {name}; it does not match the model "
                       f"(checkpoint parameters: {sorted(flat_old)[:8]} ...)")
  log(f"initialised params from {source}" + (f"; new (randomly initialised) head parameters: {new}" if new else ""))
  treedef = jax.tree_util.tree_structure(nn.meta.unbox(fresh))
  return jax.tree_util.tree_unflatten(treedef, [out[k] for k in flat_new])


def _keep_tokenizer(tokenizer, workdir: str, config) -> None:
  """Saves the start point's tokenizer as WORKDIR/tokenizer.json, where the run's data reads it.

  A run that already has one keeps it (resume); an explicit `data.tokenizer` file wins.
  """
  path = os.path.join(workdir, "tokenizer.json")
  if not os.path.exists(path) and not config.data.tokenizer.endswith(".json"):
    save_tokenizer(check_for_training(tokenizer, f"init_from={config.init_from!r}"), path)


def evaluate(runtime: Runtime, params, data: RunData) -> dict:
  """Returns eval loss, accuracy and perplexity over the fixed eval batches."""
  loss = weight = correct = 0.0
  for batch in data.eval_batches():
    s = jax.device_get(runtime.eval_step(params, batch))
    loss, weight, correct = loss + float(s["loss"]), weight + float(s["weight"]), correct + float(s["correct"])
  mean = loss / max(weight, 1.0)
  return {"loss": mean, "accuracy": correct / max(weight, 1.0), "perplexity": math.exp(min(mean, 80.0)),
          "tokens": weight}


class _Signals:
  """Turns SIGTERM into a flag the loop checks after each step (it then saves and stops)."""

  def __init__(self):
    self.stop = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.stop = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _progress(config, start: int, total: int):
  if not config.train.progress:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, smoothing=0.1)


def train_and_evaluate(config, workdir: str, log: Callable[[str], None] = print) -> dict:
  """Trains and evaluates as `config` says, in `workdir` (resuming from its checkpoints); returns the summary.

  Writes WORKDIR/{config.json, tokenizer.json, metrics.jsonl, tensorboard/, checkpoints/, best/,
  loss.png, summary.json}. Raises NonFiniteLossError (after keeping the last good checkpoint) when the
  loss becomes NaN / inf. On SIGTERM it saves a checkpoint and returns with summary["stopped"]="sigterm".
  """
  t_start = time.time()
  defaults.check_config(config)  # every field, before any data is read
  workdir = os.path.abspath(workdir)
  check_workdir(config, workdir)  # a run of another model there: refused before anything is written
  os.makedirs(workdir, exist_ok=True)
  t = config.train
  task = dataclasses.replace(get_task(config.task), label_smoothing=float(t.label_smoothing))
  # The model to start from (a run, params or Hugging Face directory): its architecture replaces the
  # preset, its tokenizer becomes the run's.
  pretrained = resolve_model(config.init_from) if config.init_from else None
  if pretrained is not None and pretrained.tokenizer is not None:
    _keep_tokenizer(pretrained.tokenizer, workdir, config)
  base = pretrained.config if pretrained is not None else None
  baselines = None
  if task.source == "labelled":
    data = ClassifyData(config, task, workdir, log=log)
    mc = model_config(config, task, data.tokenizer, base=base, num_labels=len(data.label_names))
    if t.baselines:
      baselines = _baselines(data, workdir, log)
  else:
    data = RunData(config, task, workdir, log=log)
    mc = model_config(config, task, data.tokenizer, base=base)
  best_metric = t.best_metric  # eval metric that picks the best checkpoint
  higher_better = best_metric not in LOWER_IS_BETTER
  patience = t.early_stopping_patience  # evals without improvement before stopping (0: off)
  model = tfm.build(mc)
  tx = make_optimizer(config.optimizer, t.steps)
  schedule = learning_rate_schedule(config.optimizer, t.steps)
  check_workdir(config, workdir, mc)
  write_json(os.path.join(workdir, "config.json"), {"config": config.to_dict(), "model_config": mc.to_dict()})

  runtime = make_runtime(config, model, tx, task, data.train_batch(0))
  num_params = tfm.count_params(runtime.state.params)
  ckpts = Checkpoints(workdir, t.keep_checkpoints)
  restored = ckpts.restore(runtime.abstract_state, restart_if_unreadable=t.restart_if_unreadable)
  tokens_seen, best_eval, evals_since_best, best_record = 0, (-math.inf if higher_better else math.inf), 0, None
  if restored is not None:
    state, meta = restored
    tokens_seen = int(meta.get("tokens_seen", 0))
    best_eval = float(meta.get("best_eval", meta.get("best_eval_loss", math.inf)))
    evals_since_best = int(meta.get("evals_since_best", 0))
    best_record = meta.get("best_record")
    log(f"resumed from {ckpts.dir}/{int(state.step)} (step {int(state.step)}, data position {meta['data_position']})")
  else:
    state = runtime.state
    if pretrained is not None:
      params = start_params(state.params, pretrained.params, config.init_from, log)
      ema = None if state.ema_params is None else jax.tree_util.tree_map(jnp.copy, params)  # the EMA starts there too
      state = state.replace(params=params, opt_state=tx.init(params), ema_params=ema)
  del runtime.state, pretrained  # the state holds the params now
  start = int(state.step)
  writer = MetricsWriter(workdir, resume_step=start, start_time=t_start)
  log(f"model {config.model} ({mc.family}, {num_params:,} params), task {task.name}, {runtime.description}; "
      f"{t.steps} steps of {t.batch_size} x {config.data.seq_len} tokens; workdir {workdir}")

  def meta(step):
    return {"step": step, "data_position": step, "tokens_seen": tokens_seen, "best_eval": best_eval,
            "best_metric": best_metric, "evals_since_best": evals_since_best, "best_record": best_record,
            "seed": t.seed}

  last_train, last_eval, stopped, predict, decoded = None, None, None, None, None
  select_key = f"holdout_{best_metric}" if task.source == "labelled" else best_metric  # what picks the best
  last_ckpt = ckpts.latest_step()
  if start == 0 and t.eval_at_start:  # the reference point of the learning curve: the untrained model
    ev = evaluate(runtime, eval_params(state), data)
    writer.write(0, "eval", ev)
    log(f"step 0: eval loss {ev['loss']:.4f} (perplexity {ev['perplexity']:.2f}, accuracy {ev['accuracy']:.3f})")
  bar = _progress(config, start, t.steps)
  window_t, window_tokens = time.time(), 0.0
  loss_acc, loss_n = 0.0, 0
  try:
    with _Signals() as sig:
      step = start
      while step < t.steps:
        batch = data.train_batch(step)
        state, metrics = runtime.train_step(state, batch)
        loss = float(metrics["loss"])  # syncs: every step is checked for NaN before anything is saved
        if not math.isfinite(loss):
          where = f"the last good checkpoint is step {last_ckpt} in {ckpts.dir}" if last_ckpt is not None else \
              "no checkpoint was written"
          raise NonFiniteLossError(f"loss is {loss} at step {step + 1}; stopping ({where}; lower "
                                   f"optimizer.learning_rate or set optimizer.grad_clip_norm)")
        if step == start:  # the step is compiled: hand the compiler's freed heap back (tfm.hostmem)
          hostmem.release_free_heap()
        step += 1
        ntok = float(metrics["tokens"])
        tokens_seen += int(ntok)
        window_tokens += ntok
        loss_acc, loss_n = loss_acc + loss, loss_n + 1
        if bar is not None:
          bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
          now = time.time()
          tps = window_tokens / max(now - window_t, 1e-9)
          last_train = writer.write(step, "train", {"loss": loss_acc / loss_n, "accuracy": float(metrics["accuracy"]),
                                                    "learning_rate": float(schedule(step - 1)),
                                                    "grad_norm": float(metrics["grad_norm"]), "tokens_per_sec": tps})
          if bar is not None:
            bar.set_postfix(loss=f"{last_train['loss']:.3f}", tok_s=f"{tps:,.0f}")
          window_t, window_tokens, loss_acc, loss_n = now, 0.0, 0.0, 0
        out_of_time = bool(t.max_wall_s) and time.time() - t_start > t.max_wall_s
        is_eval = step % t.eval_every == 0 or step == t.steps or out_of_time  # a run cut short ends on an eval too
        if is_eval:
          params = eval_params(state)  # the moving average when optimizer.ema_decay > 0
          ev = evaluate(runtime, params, data)
          if task.source == "labelled":  # the run chooses on the holdout split, and reports the eval split
            predict = predict or make_predict(model)
            details = classification_eval(model, params, data, predict=predict)
            ev.update({k: v for k, v in details.items() if isinstance(v, float) and k != "loss"})
            held = classification_eval(model, params, data, split="holdout", predict=predict)
            ev.update({f"holdout_{k}": v for k, v in held.items() if isinstance(v, float)})
            write_json(os.path.join(workdir, "eval_classification.json"), {"step": step, **details})
          if task.name == "seq2seq" and t.eval_decode_examples:  # translate the validation sources, score with sacreBLEU
            decoded = translation_eval(model, params, data, config, workdir, step, log=log)
            ev.update(decoded["scores"])
            if t.final_greedy_decode and t.decode_num_beams > 1 and (step == t.steps or out_of_time):
              greedy = translation_eval(model, params, data, config, None, step, log=log, greedy=True)
              ev.update({f"{k}_greedy": v for k, v in greedy["scores"].items()})
              decoded["summary"].update(greedy["summary"])
              decoded["report"] += greedy["report"]
          last_eval = writer.write(step, "eval", ev)
          msg = f"step {step}: eval loss {ev['loss']:.4f} (perplexity {ev['perplexity']:.2f}, accuracy {ev['accuracy']:.3f})"
          if task.source == "labelled":
            msg += (f", macro-F1 {ev['macro_f1']:.3f}, MCC {ev['mcc']:.3f}; holdout {best_metric} "
                    f"{ev['holdout_' + best_metric]:.4f}")
          if task.generates and t.sample_tokens:
            msg += "\n" + _sample_or_warning(model, params, data, t)
          if decoded is not None and "bleu" in ev:
            msg += decoded["report"]
          (bar.write if bar is not None else log)(msg)
          window_t = time.time()  # eval time is not training throughput
        if step % t.checkpoint_every == 0 or step == t.steps or sig.stop or out_of_time or is_eval:
          value = last_eval[select_key] if is_eval else None
          improved = is_eval and (value > best_eval if higher_better else value < best_eval)
          if improved:
            best_eval, evals_since_best, best_record = value, 0, dict(last_eval)
            if task.source == "labelled":
              write_json(os.path.join(workdir, "best_eval_classification.json"), {"step": step, **details})
          elif is_eval:
            evals_since_best += 1
          if step % t.checkpoint_every == 0 or step == t.steps or sig.stop or out_of_time or improved:
            ckpts.save(state, meta(step), best=improved)
            last_ckpt = step
        early = bool(patience) and evals_since_best >= patience
        if early and not (step % t.checkpoint_every == 0 or step == t.steps):
          ckpts.save(state, meta(step))
        if sig.stop or out_of_time or early:
          stopped = "sigterm" if sig.stop else ("max_wall_s" if out_of_time else "early_stopping")
          log(f"stopping at step {step} ({stopped}); checkpoint saved in {ckpts.dir}/{step}; "
              f"run the same command again to resume")
          break
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpts.close()

  if last_eval is None or (last_eval.get("step") != int(state.step) and stopped != "sigterm"):
    # Resumed at the end, or stopped between evals: evaluate the final params so the summary is current
    # (not after SIGTERM, whose grace period is short).
    last_eval = dict(evaluate(runtime, eval_params(state), data), step=int(state.step))
  train_loss = last_train["loss"] if last_train else _last_logged(workdir, "train")
  summary = {"train_loss": train_loss, "eval_loss": last_eval["loss"], "eval_perplexity": last_eval["perplexity"],
             "eval_accuracy": last_eval["accuracy"], "steps": int(state.step), "wall_time_s": time.time() - t_start,
             "num_params": num_params, "tokens_seen": tokens_seen, "task": task.name, "model": config.model,
             "best_metric": best_metric, f"best_eval_{best_metric}": best_eval,
             "huge_pages": hostmem.huge_pages_state()}
  if best_record is not None:
    summary.update({f"best_eval_{k}": v for k, v in best_record.items() if k not in ("step", "split")})
    summary["best_step"] = best_record["step"]
  if task.source == "labelled":
    summary.update({f"eval_{k}": last_eval[k] for k in ("macro_f1", "mcc") if k in last_eval})
    summary["labels"] = data.label_names
    summary["best_selected_on"] = "holdout"
    if baselines is not None:
      summary.update({k: v for k, v in baselines.items()})
  if decoded is not None:
    summary.update(decoded["summary"])  # the last decoding eval: eval_bleu, eval_chrf, the sacreBLEU signatures
  if stopped:
    summary["stopped"] = stopped
  write_json(os.path.join(workdir, "summary.json"), summary)  # first: a failing plot or sample loses nothing
  try:
    plot = os.path.basename(plot_losses(workdir)) + ", "
  except Exception as e:  # pylint: disable=broad-except (the plot is a convenience; the results are saved)
    plot = ""
    log(f"warning: loss.png not written ({type(e).__name__}: {e})")
  log(f"eval loss {summary['eval_loss']:.4f} after {summary['steps']} steps ({summary['wall_time_s']:.0f}s); "
      f"results in {workdir}: summary.json, metrics.jsonl, {plot}tensorboard/, checkpoints/")
  if _versus_baseline(summary):
    log(_versus_baseline(summary))
  if task.generates and t.sample_tokens:
    log(_sample_or_warning(model, eval_params(state), data, t))
  summary["params"] = eval_params(state)  # for callers (tests); not written to summary.json
  return summary


def _baselines(data: ClassifyData, workdir: str, log) -> dict:
  """Returns the majority-class and TF-IDF baselines of the run's splits (WORKDIR/baselines.json once fitted)."""
  from tfm.train.baselines import baseline_line, text_baselines
  path = os.path.join(workdir, "baselines.json")
  if os.path.exists(path):
    with open(path) as f:
      out = json.load(f)
  else:
    split = lambda s: (s.texts, s.texts_b, s.labels)
    out = text_baselines(split(data.texts["train"]), split(data.texts["holdout"]), split(data.texts["eval"]),
                         data.label_names)
    write_json(path, out)
  log(baseline_line(out))
  return out


def _versus_baseline(summary: dict) -> str:
  """Returns the closing comparison of a classification run with its TF-IDF baseline ("" without baselines)."""
  if "baseline_tfidf_accuracy" not in summary or "best_eval_accuracy" not in summary:
    return ""
  acc, base = summary["best_eval_accuracy"], summary["baseline_tfidf_accuracy"]
  f1, base_f1 = summary.get("best_eval_macro_f1", float("nan")), summary["baseline_tfidf_macro_f1"]
  return (f"evaluation accuracy {acc:.4f} at the best step {summary.get('best_step')} (chosen on the holdout split): "
          f"{100 * (acc - base):+.1f} points against TF-IDF + logistic regression ({base:.4f}); macro-F1 {f1:.4f} "
          f"({100 * (f1 - base_f1):+.1f} against {base_f1:.4f})")


def _last_logged(workdir: str, split: str) -> Optional[float]:
  from tfm.train.writers import read_metrics
  vals = [r["loss"] for r in read_metrics(workdir) if r["split"] == split]
  return vals[-1] if vals else None


def _sample_or_warning(model, params, data: RunData, t) -> str:
  """Returns the printable sample, or a warning line when generating it fails (the run goes on)."""
  try:
    return _sample_text(model, params, data, t)
  except Exception as e:  # pylint: disable=broad-except (a sample is for reading; it never stops a run)
    return f"warning: no sample ({type(e).__name__}: {one_line(e)})"


def _sample_text(model, params, data: RunData, t) -> str:
  """Returns a printable generated sample (prompt + continuation)."""
  tok = data.tokenizer
  prompt = tok.encode(t.sample_prompt) if t.sample_prompt else data.sample_prompt(32)
  ids = sample_continuation(model, params, prompt, t.sample_tokens, temperature=t.sample_temperature, seed=t.seed)
  return f"sample: {tok.decode(prompt)!r} -> {tok.decode(ids)!r}"
