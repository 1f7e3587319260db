"""python -m tfm.generate on an imported Hugging Face directory: batch output and streaming.

(A training run read by the same command: tests/test_convert_cli.py.)
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import tfm  # noqa: E402
from tfm.generate.__main__ import main  # noqa: E402

TEXT = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song"] * 20


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf_gpt2")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(TEXT, tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
  tok.save(str(d / "tokenizer.json"))
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=tok.get_vocab_size(), n_positions=64,
                                bos_token_id=0, eos_token_id=0, pad_token_id=0)
  transformers.GPT2LMHeadModel(cfg).save_pretrained(str(d))
  return str(d), tok


def test_cli_prints_prompt_and_greedy_continuation(hf_dir, capsys):
  d, tok = hf_dir
  assert main(["--from-hf", d, "--prompt", "the cat", "--prompt", "a dog ran", "--max-new-tokens", "5",
               "--ignore-eos"]) == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("---")]
  prompts = ["the cat", "a dog ran"]
  assert len(lines) == len(prompts), lines  # one line per prompt, nothing missing
  config, params = tfm.from_pretrained(d)
  model = tfm.build(config)
  for line, prompt in zip(lines, prompts):
    ids = np.array([tok.encode(prompt).ids])
    want = tok.decode(np.asarray(tfm.generate(model, params, ids, max_new_tokens=5))[0].tolist())
    assert line == prompt + want


def test_cli_streams_the_same_text(hf_dir, capsys):
  d, _ = hf_dir
  args = ["--from-hf", d, "--prompt", "the bird", "--max-new-tokens", "6", "--ignore-eos"]
  main(args)
  batch = capsys.readouterr().out
  main(args + ["--stream"])
  assert capsys.readouterr().out == batch
  main(args + ["--temperature", "0.9", "--top-k", "20", "--seed", "3", "--stream"])
  assert capsys.readouterr().out.startswith("the bird")
