"""tfm.generate gives the token ids of transformers' generate() (greedy and 4-beam search).

Random-weight tiny GPT-2, Llama (GQA) and T5 models are built by `transformers`, saved, and loaded
with `tfm.from_pretrained`. Both sides decode the same padded batches; the EOS id is a token the
reference emits mid-sequence, so stopping and padding after EOS are exercised too (rows that do
not stop are compared over all max_new_tokens).
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tfm  # noqa: E402

VOCAB = 101
NEW = 8
PAD = 0


def _gpt2():
  return transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32, initializer_range=0.2,
      bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=PAD))


def _llama():
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      vocab_size=VOCAB, initializer_range=0.2, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=PAD))


def _t5():
  return transformers.T5ForConditionalGeneration(transformers.T5Config(
      d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=VOCAB,
      relative_attention_num_buckets=8, relative_attention_max_distance=16, initializer_factor=3.0,
      pad_token_id=PAD, eos_token_id=1, decoder_start_token_id=PAD))


@functools.lru_cache(maxsize=None)
def _pair(kind, tmp_root):
  """Returns (HF model, tfm model, tfm params) with the same random weights."""
  torch.manual_seed(0)
  hf = {"gpt2": _gpt2, "llama": _llama, "t5": _t5}[kind]().eval()
  path = f"{tmp_root}/{kind}"
  hf.save_pretrained(path)
  config, params = tfm.from_pretrained(path)
  return hf, tfm.build(config), params


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf_generate"))


def _batch(encoder_decoder):
  """Returns (ids, mask) [2, 6]: row 1 is a 4-token prompt padded (left for decoders, right for encoders)."""
  g = np.random.default_rng(0)
  ids = g.integers(2, VOCAB - 1, (2, 6))
  mask = np.ones((2, 6), np.int64)
  pad = slice(4, 6) if encoder_decoder else slice(0, 2)
  ids[1, pad], mask[1, pad] = PAD, 0
  return ids, mask


def _hf_generate(hf, ids, mask, **kw):
  """Returns HF's new tokens [batch, <= NEW] (prompt / decoder start removed)."""
  with torch.inference_mode():
    out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
                      do_sample=False, pad_token_id=PAD, **kw).numpy()
  return out[:, 1:] if hf.config.is_encoder_decoder else out[:, ids.shape[1]:]


def _upto_eos(rows, eos):
  """Returns each row as a list cut after its first EOS (what follows is padding by convention)."""
  out = []
  for row in np.asarray(rows).tolist():
    out.append(row[:row.index(eos) + 1] if eos in row else row)
  return out


def _compare(kind, tmp_root, **kw):
  hf, model, params = _pair(kind, tmp_root)
  ids, mask = _batch(hf.config.is_encoder_decoder)
  free = _hf_generate(hf, ids, mask, eos_token_id=None, **kw)
  assert free.shape == (2, NEW)
  # EOS := the first token of the free run (row 0 first, after step 0) with which the reference's
  # output does contain an EOS (beam search may prefer hypotheses that never emit it).
  for eos in dict.fromkeys(free[:, 1:].ravel().tolist() + free[:, 0].tolist()):
    want = _hf_generate(hf, ids, mask, eos_token_id=eos, **kw)
    if any(eos in row for row in want.tolist()):
      break
  else:
    raise AssertionError(f"no token of {free.tolist()} makes the reference stop at EOS")
  strategy = "beam" if kw.get("num_beams", 1) > 1 else "greedy"
  beam_kw = {k: v for k, v in kw.items() if k in ("num_beams", "length_penalty", "early_stopping")}
  got = np.asarray(tfm.generate(model, params, ids, attention_mask=mask, max_new_tokens=NEW, strategy=strategy,
                                eos_token_id=eos, pad_token_id=PAD, **beam_kw))
  assert got.shape == (2, NEW)
  assert _upto_eos(got, eos) == _upto_eos(want, eos)
  assert any(eos in row for row in got.tolist())  # some sequence did stop at EOS
  for row in got.tolist():  # pad after EOS, up to max_new_tokens
    assert eos not in row or all(x == PAD for x in row[row.index(eos) + 1:])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "t5"])
def test_greedy_matches_transformers(kind, tmp_root):
  _compare(kind, tmp_root)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_beam_search_matches_transformers(kind, tmp_root):
  _compare(kind, tmp_root, num_beams=4)


@pytest.mark.parametrize("kind,kw", [("gpt2", dict(early_stopping=True, length_penalty=2.0)),
                                     ("t5", dict(early_stopping="never", length_penalty=0.5))])
def test_beam_search_options_match_transformers(kind, kw, tmp_root):
  _compare(kind, tmp_root, num_beams=4, **kw)
