"""The PyTorch side of `python -m tfm.bench torch`: the same architecture, trained on the same inputs.

For every model spec the tfm variant and its PyTorch counterparts are built from the same
ModelConfig and fed the same random batch (tfm.bench.step.random_batch):
  * Hugging Face `transformers`: GPT2LMHeadModel (GPT-2-shaped decoders), LlamaForCausalLM (RoPE +
    RMSNorm + SwiGLU decoders), BertForSequenceClassification / BertForMaskedLM (encoders),
    T5ForConditionalGeneration (T5-shaped encoder-decoders);
  * for GPT-2-shaped decoders also a hand-written nanoGPT-style model (`TorchGPT`), the fastest
    plain PyTorch a user would write (fused QKV, `scaled_dot_product_attention`, tied head).
Training step: cross-entropy on the same targets, gradients clipped to global norm 1 and AdamW
(weight decay 0.1), as tfm's train step (tfm.bench.step runs tfm.train.step.train_step with
train.py's default optimizer); float32 or the config's dtype through autocast-free casts. tfm and
PyTorch alternate `rounds` times per model; the tfm / PyTorch ratio uses the faster PyTorch model.
Needs the `dev` extra (torch, transformers).

`run_torch` is the `--same-process` mode of `python -m tfm.bench torch`; its default, the scaling study of
tfm.bench.scaling, measures every (framework, model, seq) point in a process of its own (PyTorch side:
`scaling_model`, one model per point, trained by the same `TorchRunner`). Its PyTorch
processes load this file by path, without the tfm package: nothing here imports JAX at module level, so
that their peak RSS is PyTorch's alone (JAX, Flax and tfm add about 170 MiB to a process).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the config and batch types only; see the module docstring
  from tfm.bench.speed import Variant
  from tfm.bench.step import Batch
  from tfm.config import ModelConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TORCH_COLUMNS = [
    ("framework", "framework", "{}"), ("model", "model", "{}"), ("seq", "seq_len", "{}"), ("tgt", "tgt_len", "{}"),
    ("batch", "batch_size", "{}"), ("params", "num_params", "{:,.0f}"),
    ("train tok/s", "train_tokens_per_sec", "{:,.0f}"), ("fwd tok/s", "forward_tokens_per_sec", "{:,.0f}"),
    ("step ms", "train_step_s", "{:,.0f}", 1e3), ("MFU", "mfu", "{:.1%}"), ("peak GFLOP/s", "peak_flops", "{:,.0f}", 1e-9),
    ("tfm / best torch", "tfm_over_torch", "{:.2f}"), ("huge pages", "huge_pages", "{}"),
    ("load", "load_avg_start", "{}"),
]


def _torch():
  try:
    import torch  # noqa: PLC0415
  except ImportError as e:
    raise SystemExit("python -m tfm.bench torch needs PyTorch and transformers: pip install -e '.[dev]'") from e
  return torch


def uses_attention_mask(c: ModelConfig) -> bool:
  """Returns whether tfm's benchmark task passes the model a padding mask (classify, seq2seq; tfm.bench.step)."""
  return bool(c.num_labels) or c.family == "encoder_decoder"


def _is_gpt2_shaped(c: ModelConfig) -> bool:
  return (c.family == "decoder" and c.position == "learned" and c.norm == "layernorm" and c.norm_position == "pre"
          and c.mlp in ("gelu", "gelu_tanh", "relu") and c.use_bias and c.kv_heads == c.num_heads
          and c.d_model == c.num_heads * c.dim_per_head and not c.num_labels)


def _is_llama_shaped(c: ModelConfig) -> bool:
  return (c.family == "decoder" and c.position == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu"
          and not c.use_bias and not c.num_labels)


_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def build_hf(c: ModelConfig):
  """Returns (name, transformers model) with the architecture and sizes of `c` (random weights, no download)."""
  import transformers as tr  # noqa: PLC0415
  drop = c.dropout_rate
  if _is_gpt2_shaped(c):
    hc = tr.GPT2Config(n_layer=c.num_layers, n_head=c.num_heads, n_embd=c.d_model, n_inner=c.d_ff,
                       n_positions=c.max_len, vocab_size=c.vocab_size, activation_function=_HF_ACT[c.mlp],
                       layer_norm_epsilon=c.norm_eps, resid_pdrop=drop, embd_pdrop=drop,
                       attn_pdrop=c.attention_dropout_rate, tie_word_embeddings=c.tie_embeddings,
                       bos_token_id=c.vocab_size - 1, eos_token_id=c.vocab_size - 1)
    return "hf GPT2LMHeadModel", tr.GPT2LMHeadModel(hc)
  if _is_llama_shaped(c):
    hc = tr.LlamaConfig(num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                        num_key_value_heads=c.kv_heads, hidden_size=c.d_model, intermediate_size=c.d_ff,
                        head_dim=c.dim_per_head, vocab_size=c.vocab_size, max_position_embeddings=c.max_len,
                        rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
                        attention_dropout=c.attention_dropout_rate, pad_token_id=c.pad_token_id)
    return "hf LlamaForCausalLM", tr.LlamaForCausalLM(hc)
  if c.family == "encoder" and c.norm_position == "post" and c.position == "learned" and c.mlp in _HF_ACT:
    hc = tr.BertConfig(num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, hidden_size=c.d_model,
                       intermediate_size=c.d_ff, vocab_size=c.vocab_size, max_position_embeddings=c.max_len,
                       type_vocab_size=max(c.type_vocab_size, 1), hidden_act=_HF_ACT[c.mlp],
                       layer_norm_eps=c.norm_eps, hidden_dropout_prob=drop,
                       attention_probs_dropout_prob=c.attention_dropout_rate, num_labels=c.num_labels or 2)
    if c.num_labels:
      return "hf BertForSequenceClassification", tr.BertForSequenceClassification(hc)
    return "hf BertForMaskedLM", tr.BertForMaskedLM(hc)
  if c.family == "encoder_decoder" and c.position == "relative" and c.norm == "rmsnorm" and not c.num_labels:
    ff = {"relu": "relu", "geglu_tanh": "gated-gelu", "gelu": "gelu", "reglu": "gated-relu"}.get(c.mlp)
    if ff is not None:
      hc = tr.T5Config(d_model=c.d_model, d_kv=c.dim_per_head, num_heads=c.num_heads, d_ff=c.d_ff,
                       num_layers=c.num_layers, num_decoder_layers=c.decoder_layers, vocab_size=c.vocab_size,
                       relative_attention_num_buckets=c.relative_buckets,
                       relative_attention_max_distance=c.relative_max_distance, dropout_rate=drop,
                       layer_norm_epsilon=c.norm_eps, feed_forward_proj=ff, tie_word_embeddings=c.tie_embeddings,
                       decoder_start_token_id=c.decoder_start_token_id, pad_token_id=c.pad_token_id, eos_token_id=1)
      return "hf T5ForConditionalGeneration", tr.T5ForConditionalGeneration(hc)
  raise ValueError(f"no transformers counterpart for this config (family={c.family}, position={c.position}, "
                   f"norm={c.norm}, mlp={c.mlp}); supported: GPT-2- and Llama-shaped decoders, BERT encoders, "
                   "T5 encoder-decoders")


def scaling_model(c: ModelConfig, nanogpt: bool = True):
  """Returns (name, model, hf) of the scaling study's PyTorch side of `c`: the hand-written nanoGPT-style
  GPT (SDPA with is_causal) for GPT-2-shaped decoders with a tied head (unless `nanogpt` is False), else the
  transformers model of `build_hf`; `hf` says whether the model returns an output object with .logits."""
  if nanogpt and _is_gpt2_shaped(c) and c.tie_embeddings:
    return "torch nanoGPT-style", _torch_gpt_class()(c), False
  name, model = build_hf(c)
  return name, model, True


def _torch_gpt_class():
  torch = _torch()
  nnt, F = torch.nn, torch.nn.functional

  class TorchGPT(nnt.Module):
    """A minimal GPT-2 in plain PyTorch: fused QKV, SDPA with is_causal, tied LM head."""

    def __init__(self, c: ModelConfig):
      super().__init__()
      d = c.d_model
      self.c = c
      self.wte = nnt.Embedding(c.vocab_size, d)
      self.wpe = nnt.Embedding(c.max_len, d)
      self.blocks = nnt.ModuleList()
      for _ in range(c.num_layers):
        self.blocks.append(nnt.ModuleDict(dict(
            ln1=nnt.LayerNorm(d, eps=c.norm_eps), qkv=nnt.Linear(d, 3 * d), proj=nnt.Linear(d, d),
            ln2=nnt.LayerNorm(d, eps=c.norm_eps), fc=nnt.Linear(d, c.d_ff), out=nnt.Linear(c.d_ff, d))))
      self.ln_f = nnt.LayerNorm(d, eps=c.norm_eps)
      self.act = {"gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
                  "relu": F.relu}[c.mlp]
      for p in self.parameters():
        if p.dim() > 1:
          nnt.init.normal_(p, 0.0, c.init_std)

    def forward(self, idx):  # idx: [batch, seq] -> logits [batch, seq, vocab]
      b, t = idx.shape
      h, hd = self.c.num_heads, self.c.dim_per_head
      x = self.wte(idx) + self.wpe(torch.arange(t))
      for blk in self.blocks:
        q, k, v = blk["qkv"](blk["ln1"](x)).split(self.c.d_model, dim=2)
        q, k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in (q, k, v))  # [batch, heads, seq, head_dim]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + blk["proj"](y.transpose(1, 2).reshape(b, t, -1))
        x = x + blk["out"](self.act(blk["fc"](blk["ln2"](x))))
      return self.ln_f(x) @ self.wte.weight.t()

  return TorchGPT


class TorchRunner:
  """A PyTorch model, AdamW and the same batch as tfm; `time()` appends training / forward step seconds."""

  def __init__(self, name: str, model, batch: Batch, hf: bool, attention_mask: bool = False):
    torch = _torch()
    self.torch = torch
    self.name = name
    self.model = model.train()
    self.num_params = sum(p.numel() for p in model.parameters())
    self.opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    self.inputs = torch.from_numpy(batch.input_ids.astype("int64"))
    self.targets = torch.from_numpy(batch.targets.astype("int64"))
    self.dec_in = None if batch.decoder_input_ids is None else torch.from_numpy(batch.decoder_input_ids.astype("int64"))
    # An all-ones padding mask, as tfm's classify and seq2seq tasks pass one (transformers models only)
    self.mask = torch.ones_like(self.inputs) if attention_mask and hf else None
    self.hf = hf  # transformers models return an output object with .logits
    self.train_ts: list[float] = []
    self.fwd_ts: list[float] = []
    self.first_step_s = None
    self.loss = None

  def _loss(self):
    if self.hf:
      kw = {"decoder_input_ids": self.dec_in} if self.dec_in is not None else {}
      if self.mask is not None:
        kw["attention_mask"] = self.mask
      logits = self.model(input_ids=self.inputs, **kw).logits
    else:
      logits = self.model(self.inputs)
    return self.torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                  self.targets.reshape(-1))

  def _step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self._loss()
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)  # as tfm (and nanoGPT) clip
    self.opt.step()
    return loss

  def time(self, warmup: int, iters: int, forward: bool = True) -> None:
    """Times `iters` training steps (and no-grad forward passes) after `warmup` untimed ones."""
    if self.first_step_s is None:
      t0 = time.perf_counter()
      self._step()
      self.first_step_s = time.perf_counter() - t0
      warmup = max(0, warmup - 1)
    self.train_ts += _time(self._step, warmup, iters)
    self.loss = float(self._step().item())
    if forward:
      with self.torch.no_grad():
        self.fwd_ts += _time(self._loss, max(1, warmup // 2), iters)


def _time(fn: Callable, warmup: int, iters: int) -> list[float]:
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


class TorchPeak:
  """Times a 2048 x 2048 float32 torch.mm (as ../shared/bench does) for the PyTorch MFU."""

  def __init__(self, n: int = 2048):
    torch = _torch()
    self.n = n
    self._a, self._b, self._c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    self.samples: list[float] = []

  def sample(self, iters: int = 5) -> list[float]:
    """Returns (and records) `iters` matmul timings in seconds."""
    ts = _time(lambda: self._a.__matmul__(self._b), 1, iters)
    self.samples += ts
    return ts

  def flops(self) -> float:
    """Returns 2 n^3 / median of all samples."""
    return 2 * self.n ** 3 / statistics.median(self.samples)


def run_torch(variants: list[Variant], warmup: int = 2, iters: int = 5, rounds: int = 1,
              nanogpt: bool = True, verbose: bool = True, pause_torch_huge_pages: bool = False) -> list[dict]:
  """Returns records for tfm and its PyTorch counterparts per variant, with `tfm_over_torch` on the tfm record.

  Both frameworks run in the same malloc environment, unless `pause_torch_huge_pages` and huge pages are on:
  then the PyTorch steps run with them paused (`tfm.hostmem.huge_pages_paused`), as PyTorch measured slower with
  malloc's huge pages and tfm faster.
  """
  from tfm import hostmem  # noqa: PLC0415
  from tfm.bench import device as dev  # noqa: PLC0415
  from tfm.bench.speed import TfmRunner, finish_records  # noqa: PLC0415
  from tfm.bench.step import random_batch  # noqa: PLC0415
  torch = _torch()
  pause = pause_torch_huge_pages and hostmem.huge_pages_state() == "on"
  torch_huge = "off (paused while PyTorch runs)" if pause else hostmem.huge_pages_state()
  torch.manual_seed(0)
  jax_peak = dev.MatmulPeak()
  torch_peak = TorchPeak()
  records = []
  for v in variants:
    c = v.spec.config
    if c.dtype != "float32":
      raise ValueError(f"{v.label}: the torch comparison is float32 only; got dtype={c.dtype}")
    load_start = dev.load_average()
    batch = random_batch(c, v.batch, v.seq, v.tgt_seq)
    jax_before = jax_peak.sample()
    runner = TfmRunner(v)
    others = []
    hf_name, hf_model = build_hf(c)
    others.append(TorchRunner(hf_name, hf_model, batch, hf=True, attention_mask=uses_attention_mask(c)))
    if nanogpt and _is_gpt2_shaped(c) and c.tie_embeddings:
      others.append(TorchRunner("torch nanoGPT-style", _torch_gpt_class()(c), batch, hf=False))
    with hostmem.huge_pages_paused(pause):
      torch_before = torch_peak.sample()
    for _ in range(rounds):  # alternate, so drift in machine load hits both alike
      runner.time(warmup, iters)
      with hostmem.huge_pages_paused(pause):
        for o in others:
          o.time(warmup, iters)
    with hostmem.huge_pages_paused(pause):
      torch_after = torch_peak.sample()
    jax_after = jax_peak.sample()
    rec = runner.record(jax_peak.flops(jax_before + jax_after), load_start)
    torch_local = 2 * torch_peak.n ** 3 / statistics.median(torch_before + torch_after)
    trecs = []
    for o in others:
      step_s = statistics.median(o.train_ts)
      trecs.append(dict(
          framework=o.name, model=v.label, preset=v.spec.name, family=c.family, seq_len=v.seq, tgt_len=v.tgt_seq,
          batch_size=v.batch, tokens_per_step=runner.flops.tokens, dtype=c.dtype, num_params=o.num_params,
          flops_per_token=runner.flops.train_per_token, train_flops_per_step=runner.flops.train,
          train_step_s=step_s, train_step_min_s=min(o.train_ts), train_step_max_s=max(o.train_ts),
          train_tokens_per_sec=runner.flops.tokens / step_s, train_flops_per_sec=runner.flops.train / step_s,
          forward_tokens_per_sec=runner.flops.tokens / statistics.median(o.fwd_ts) if o.fwd_ts else None,
          compile_s=None, first_step_s=o.first_step_s, peak_flops_local=torch_local,
          mfu_local=runner.flops.train / step_s / torch_local, load_avg_start=load_start,
          load_avg_end=dev.load_average(), final_loss=o.loss, torch_version=torch.__version__,
          torch_threads=torch.get_num_threads(), device_kind="cpu", backend="torch-cpu", iters=len(o.train_ts),
          huge_pages=torch_huge))
    best = max(t["train_tokens_per_sec"] for t in trecs)
    rec["tfm_over_torch"] = rec["train_tokens_per_sec"] / best
    rec["best_torch"] = max(trecs, key=lambda t: t["train_tokens_per_sec"])["framework"]
    for t in trecs:
      t["tfm_over_torch"] = rec["train_tokens_per_sec"] / t["train_tokens_per_sec"]
    records += [rec] + trecs
    if verbose:
      print(f"{v.label}: tfm {rec['train_tokens_per_sec']:,.0f} tok/s; "
            + "; ".join(f"{t['framework']} {t['train_tokens_per_sec']:,.0f}" for t in trecs)
            + f"; tfm / best torch = {rec['tfm_over_torch']:.2f} (load {load_start})", flush=True)
    del runner, others
  finish_records([r for r in records if r["framework"] == "tfm"], jax_peak)
  tpeak = torch_peak.flops()
  for r in records:
    if r["framework"] != "tfm":
      r.update(peak_flops=tpeak, peak_source=f"torch.mm 2048x2048 float32, median of {len(torch_peak.samples)} "
               "in-run samples", mfu=r["train_flops_per_sec"] / tpeak, vendor_peak_flops=None, mfu_vendor=None)
  return records
