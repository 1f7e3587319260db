"""The PyTorch counterparts of `python -m tfm.bench torch` are the same architecture as the tfm model."""

import jax
import numpy as np
import pytest

import tfm
from tfm.bench.step import make_steps, random_batch

torch = pytest.importorskip("torch")
from tfm.bench import torch_ref  # noqa: E402

CASES = ["gpt2-tiny", "llama-test", "bert-tiny:num_labels=2", "bert-tiny", "t5-tiny", "t5-v1_1-tiny"]


@pytest.mark.parametrize("spec", CASES)
def test_hf_counterpart_has_the_same_parameter_count(spec):
  from tfm.bench.specs import parse_spec
  c = parse_spec(spec).config
  model = tfm.build(c)
  ids = np.ones((1, 8), np.int32)
  kw = {"decoder_input_ids": ids} if c.family == "encoder_decoder" else {}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, **kw)["params"])
  _, hf = torch_ref.build_hf(c)
  untied_head = 0
  if c.family == "encoder_decoder" and not c.tie_embeddings:
    # transformers 5.x T5Config forces tie_word_embeddings=True (it keeps the flag only to decide the
    # logit scaling), so the PyTorch T5 v1.1 shares its LM head with the embedding: same FLOPs, fewer params.
    untied_head = c.vocab_size * c.d_model
  assert sum(p.numel() for p in hf.parameters()) + untied_head == tfm.count_params(params)


def test_handwritten_gpt_matches_and_the_torch_step_learns():
  c = tfm.get_config("gpt2-tiny", num_layers=1)
  gpt = torch_ref._torch_gpt_class()(c)
  _, hf = torch_ref.build_hf(c)
  assert sum(p.numel() for p in gpt.parameters()) == sum(p.numel() for p in hf.parameters())
  runner = torch_ref.TorchRunner("nanoGPT", gpt, random_batch(c, 2, 16), hf=False)
  first = float(runner._loss().detach())
  runner.time(warmup=1, iters=3)
  assert len(runner.train_ts) == 3 and len(runner.fwd_ts) == 3
  assert runner.loss < first  # the same batch six times: AdamW must lower its loss


def test_unsupported_config_is_named():
  with pytest.raises(ValueError, match="no transformers counterpart"):
    torch_ref.build_hf(tfm.get_config("bart-tiny"))
