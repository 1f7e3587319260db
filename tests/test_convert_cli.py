"""Commands on the run that training writes: `tfm.convert --to-hf` (loaded by transformers), `tfm.generate`.

One tiny run of the default model (llama-test, byte tokens, pydoc topics) is trained in-process,
exported with the command line and loaded with transformers: the logits must match tfm's.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tfm  # noqa: E402
from tfm import convert  # noqa: E402
from tfm.checkpoint import resolve_model, run_params  # noqa: E402
from tfm.generate.__main__ import main as generate_main  # noqa: E402
from tfm.train import train_and_evaluate  # noqa: E402
from tiny_runs import lm_config  # noqa: E402

IDS = np.array([[5, 77, 120, 33, 9, 250, 14, 61], [100, 3, 18, 200, 42, 7, 88, 19]], np.int32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("run")
  # The quick start's model (llama-test: a LlamaForCausalLM once exported) and data, made tiny.
  c = lm_config(tmp, model="llama-test", steps=4, eval_every=4, checkpoint_every=4)
  wd = str(tmp / "runs" / "default")
  train_and_evaluate(c, wd, log=lambda *_: None)
  return wd


def test_convert_exports_a_training_run_that_transformers_loads_with_the_same_logits(run_dir, tmp_path, capsys):
  out = str(tmp_path / "hf")
  assert convert.main(["--to-hf", run_dir, "--out", out]) == 0, capsys.readouterr().err
  with open(os.path.join(out, "config.json")) as f:
    architecture = json.load(f)["architectures"][0]
  assert architecture == "LlamaForCausalLM"
  hf = getattr(transformers, architecture).from_pretrained(out).eval()
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(IDS)).logits.numpy()
  run = resolve_model(run_dir)
  ours = np.asarray(tfm.build(run.config).apply({"params": run.params}, jnp.asarray(IDS)))
  assert theirs.shape == ours.shape
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  # The params exported are the run's newest checkpoint, not a fresh initialisation.
  params, step = run_params(run_dir, "latest")
  assert step == 4
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, run.params)


def test_commands_reject_a_directory_that_holds_no_model(tmp_path, capsys):
  (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
  assert convert.main(["--to-hf", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and str(tmp_path) in err
  assert "run directory" in err and "params directory" in err and "Hugging Face" in err
  assert not os.path.exists(tmp_path / "hf")
  assert generate_main(["--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
  assert "run directory" in capsys.readouterr().err


def test_generate_reads_the_run_with_its_tokenizer(run_dir, capsys):
  prompt = "def main"
  assert generate_main(["--workdir", run_dir, "--prompt", prompt, "--max-new-tokens", "6", "--ignore-eos"]) == 0
  out = capsys.readouterr().out
  run = resolve_model(run_dir, "best")
  tok = run.tokenizer
  ids = np.asarray(tok.encode(prompt))[None]
  want = np.asarray(tfm.generate(tfm.build(run.config), run.params, ids, max_new_tokens=6))[0]
  assert len(want) == 6
  assert out == prompt + tok.decode(want) + "\n"  # the prompt, then the greedy continuation
