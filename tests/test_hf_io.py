"""Checkpoint files and the converter: bad inputs give clear errors and write nothing; formats agree.

Covers: missing weights, unknown architecture, truncated or garbage safetensors, wrong shapes, unmapped
tensors, offline hub ids, pytorch_model.bin and sharded safetensors, scan_layers, configs that
have no HF equivalent, and `python -m tfm.convert` both ways (orbax checkpoint in the middle).
"""

import json
import os
import shutil
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import tfm  # noqa: E402
from tfm import convert  # noqa: E402
from tfm.hf import CheckpointError  # noqa: E402
from tfm.hf.api import param_shapes  # noqa: E402
from tfm.hf.rules import unflatten  # noqa: E402
from tfm.checkpoint import load_params, save_params  # noqa: E402

IDS = np.array([[5, 9, 13, 2, 40, 7, 7, 1], [3, 8, 21, 30, 4, 0, 0, 0]])
MASK = (IDS > 0).astype(np.int32) | np.array([[1] * 8, [1] * 5 + [0] * 3])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  """Returns a directory holding a small random GPT2LMHeadModel (config.json + model.safetensors)."""
  torch.manual_seed(0)
  cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16, bos_token_id=63,
                                eos_token_id=63)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("gpt2")
  model.save_pretrained(path)
  return str(path)


def _torch_logits(model):
  with torch.no_grad():
    return model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()


def _tfm_logits(config, params):
  return np.asarray(jax.jit(tfm.build(config).apply)({"params": params}, jnp.asarray(IDS),
                                                     attention_mask=jnp.asarray(MASK)))


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _convert_writes_nothing(src, out):
  rc = convert.main(["--from-hf", str(src), "--out", str(out)])
  assert rc == 2
  assert not os.path.exists(out)
  assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".tfm-")], "temporary files left behind"


def test_missing_weights_file(gpt2_dir, tmp_path):
  src = _copy(gpt2_dir, tmp_path / "src")
  os.remove(os.path.join(src, "model.safetensors"))
  with pytest.raises(CheckpointError, match="no weights file .*model.safetensors"):
    tfm.from_pretrained(src)
  _convert_writes_nothing(src, tmp_path / "out")


def test_unknown_architecture_lists_supported(gpt2_dir, tmp_path):
  src = _copy(gpt2_dir, tmp_path / "src")
  cfg = json.load(open(os.path.join(src, "config.json")))
  cfg["architectures"] = ["FalconForCausalLM"]
  json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
  with pytest.raises(ValueError, match="unsupported architecture 'FalconForCausalLM'.*LlamaForCausalLM.*T5EncoderModel"):
    tfm.from_pretrained(src)
  _convert_writes_nothing(src, tmp_path / "out")
  with pytest.raises(ValueError, match="model_type 'gpt2' does not match architecture 'LlamaForCausalLM'"):
    tfm.from_pretrained(gpt2_dir, architecture="LlamaForCausalLM")
  del cfg["n_layer"]
  cfg["architectures"] = ["GPT2LMHeadModel"]
  json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
  with pytest.raises(ValueError, match="lacks field 'n_layer'"):
    tfm.from_pretrained(src)


def test_truncated_or_garbage_safetensors_name_the_file(gpt2_dir, tmp_path):
  src = _copy(gpt2_dir, tmp_path / "src")
  path = os.path.join(src, "model.safetensors")
  data = open(path, "rb").read()
  bad = {"truncated": data[: len(data) // 2], "header only": data[:5],
         "garbage": bytes(range(256)) * 64, "empty": b""}
  for what, content in bad.items():
    open(path, "wb").write(content)
    with pytest.raises(CheckpointError) as e:
      tfm.from_pretrained(src)
    message = str(e.value)
    assert message.startswith(f"{path}: truncated or corrupt safetensors file ({len(content)} bytes): "), what
    assert "\n" not in message, what
  _convert_writes_nothing(src, tmp_path / "out")


def test_shape_mismatch_names_parameter_and_shapes(gpt2_dir, tmp_path):
  src = _copy(gpt2_dir, tmp_path / "src")
  path = os.path.join(src, "model.safetensors")
  tensors = load_file(path)
  tensors["transformer.h.1.mlp.c_fc.weight"] = np.zeros((32, 100), np.float32)
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"'transformer\.h\.1\.mlp\.c_fc\.weight'.*\(32, 100\).*\(32, 128\)"):
    tfm.from_pretrained(src)


def test_unmapped_tensor_is_an_error(gpt2_dir, tmp_path):
  src = _copy(gpt2_dir, tmp_path / "src")
  path = os.path.join(src, "model.safetensors")
  tensors = load_file(path)
  tensors["transformer.h.0.attn.rotary.weight"] = np.zeros((4,), np.float32)
  # Known non-parameters (GPT-2's causal-mask buffers in old checkpoints) are accepted.
  tensors["transformer.h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"1 tensor\(s\) have no rule.*transformer\.h\.0\.attn\.rotary\.weight"):
    tfm.from_pretrained(src)


def test_hub_id_offline_fails_fast_with_hint(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  start = time.time()
  with pytest.raises(FileNotFoundError, match="pass a local directory"):
    tfm.from_pretrained("tfm-test-nobody/no-such-model")
  assert time.time() - start < 10
  with pytest.raises(FileNotFoundError, match="no such directory"):
    tfm.from_pretrained("./no/such/dir")


def test_pytorch_bin_sharded_safetensors_and_base_names_load_alike(gpt2_dir, tmp_path):
  config, params = tfm.from_pretrained(gpt2_dir)
  ref = _tfm_logits(config, params)
  model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
  np.testing.assert_allclose(ref, _torch_logits(model), atol=1e-4)
  # pytorch_model.bin (torch.save of the state dict, tied lm_head.weight included, as old checkpoints do)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  shutil.copy(os.path.join(gpt2_dir, "config.json"), bin_dir)
  torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
  _, p_bin = tfm.from_pretrained(str(bin_dir))
  # sharded safetensors with an index
  sharded = tmp_path / "sharded"
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.exists(sharded / "model.safetensors.index.json")
  _, p_sharded = tfm.from_pretrained(str(sharded))
  # tensors named without the "transformer." prefix (the original gpt2 checkpoint's layout)
  plain = tmp_path / "plain"
  _copy(gpt2_dir, plain)
  tensors = {k.removeprefix("transformer."): v for k, v in load_file(plain / "model.safetensors").items()}
  save_file(tensors, plain / "model.safetensors", metadata={"format": "pt"})
  _, p_plain = tfm.from_pretrained(str(plain))
  for other in (p_bin, p_sharded, p_plain):
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, other)


def test_original_bert_layout_gamma_beta_pooler_and_nsp_head(tmp_path):
  """bert-base-uncased style files: LayerNorm.gamma/beta names, pooler and NSP head next to the MLM head."""
  torch.manual_seed(0)
  cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                vocab_size=64, max_position_embeddings=16, architectures=["BertForMaskedLM"])
  model = transformers.BertForPreTraining(cfg).eval()
  ref = tmp_path / "ref"
  model.save_pretrained(ref)
  tensors = load_file(ref / "model.safetensors")
  assert "cls.seq_relationship.weight" in tensors and "bert.pooler.dense.weight" in tensors
  old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
         for k, v in tensors.items()}
  assert sum(k.endswith("LayerNorm.gamma") for k in old) == 2 * 2 + 2
  legacy = tmp_path / "legacy"
  _copy(ref, legacy)
  config_path = legacy / "config.json"
  hf_cfg = json.load(open(config_path))
  hf_cfg["architectures"] = ["BertForMaskedLM"]
  json.dump(hf_cfg, open(config_path, "w"))
  save_file(old, legacy / "model.safetensors", metadata={"format": "pt"})
  config, params = tfm.from_pretrained(str(legacy))
  assert config.lm_head and "pooler" not in params
  mlm = transformers.BertForMaskedLM.from_pretrained(ref).eval()
  np.testing.assert_allclose(_tfm_logits(config, params), _torch_logits(mlm), atol=1e-4)


def test_bfloat16_checkpoint_loads_as_float32(gpt2_dir, tmp_path):
  model = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  config, params = tfm.from_pretrained(str(tmp_path))
  wte = params["token_embed"]["embedding"]
  assert wte.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(wte), model.transformer.wte.weight.float().detach().numpy())


def test_scan_layers_and_bfloat16_overrides(gpt2_dir, tmp_path):
  config, params = tfm.from_pretrained(gpt2_dir)
  s_config, s_params = tfm.from_pretrained(gpt2_dir, scan_layers=True)
  assert s_params["decoder"]["layers"]["layers"]["mlp"]["wi"]["kernel"].shape == (2, 32, 128)
  np.testing.assert_allclose(_tfm_logits(s_config, s_params), _tfm_logits(config, params), atol=1e-5)
  out = tfm.save_pretrained(s_config, s_params, str(tmp_path / "back"))
  back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  np.testing.assert_allclose(_torch_logits(back), _tfm_logits(config, params), atol=1e-4)
  b_config, b_params = tfm.from_pretrained(gpt2_dir, param_dtype="bfloat16")
  assert b_params["token_embed"]["embedding"].dtype == jnp.bfloat16


def test_save_pretrained_rejects_configs_without_an_hf_equivalent(tmp_path):
  out = tmp_path / "out"
  for config, match in (
      (tfm.get_config("gpt2-tiny", mlp="swiglu"), "mlp"),
      (tfm.get_config("gpt2-tiny", embed_scale=True), "embed_scale"),
      (tfm.get_config("llama-test", position="alibi"), "position='alibi'"),
      (tfm.get_config("bert-tiny", norm_position="pre"), "norm_position"),
  ):
    params = unflatten({k: np.zeros(s, np.float32) for k, s in param_shapes(config).items()})
    with pytest.raises(ValueError, match=match):
      tfm.save_pretrained(config, params, str(out))
    assert not os.path.exists(out)
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tfm-")]


def test_presets_export_to_transformers_with_equal_logits(tmp_path):
  """A model made in tfm (a tiny preset, random init) loads in transformers with the same logits."""
  for name, cls in (("llama-test", transformers.LlamaForCausalLM), ("gpt2-tiny", transformers.GPT2LMHeadModel)):
    config = tfm.get_config(name)
    init = jax.jit(tfm.build(config).init)
    params = tfm.models.nn.meta.unbox(init(jax.random.PRNGKey(1), jnp.zeros((1, 2), jnp.int32))["params"])
    out = tfm.save_pretrained(config, params, str(tmp_path / name))
    back = cls.from_pretrained(out).eval()
    np.testing.assert_allclose(_torch_logits(back), _tfm_logits(config, params), atol=1e-4)


def test_convert_cli_round_trip_through_orbax(gpt2_dir, tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  src = _copy(gpt2_dir, tmp_path / "src")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel()
  tok.train_from_iterator(["hello world, hello tfm"], trainers.BpeTrainer(vocab_size=300))
  tok.save(os.path.join(src, "tokenizer.json"))
  ckpt = tmp_path / "ckpt"
  assert convert.main(["--from-hf", src, "--out", str(ckpt)]) == 0
  assert sorted(os.listdir(ckpt)) == ["config.json", "params", "tokenizer.json"]
  assert tfm.load_tokenizer(str(ckpt)).encode("hello tfm").tolist() == tok.encode("hello tfm").ids
  config, params = load_params(str(ckpt))
  ref_config, ref_params = tfm.from_pretrained(gpt2_dir)
  assert config == ref_config
  jax.tree_util.tree_map(np.testing.assert_array_equal, ref_params, params)
  with pytest.raises(FileExistsError):
    save_params(params, config, str(ckpt))  # never overwrites a checkpoint
  hf_out = tmp_path / "hf"
  assert convert.main(["--to-hf", str(ckpt), "--out", str(hf_out)]) == 0
  assert sorted(os.listdir(hf_out)) == ["config.json", "model.safetensors", "tokenizer.json"]
  back = transformers.GPT2LMHeadModel.from_pretrained(hf_out).eval()
  ref = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
  np.testing.assert_allclose(_torch_logits(back), _torch_logits(ref), atol=1e-6)
  # --scan-layers writes the stacked layout that a scan_layers=True training config restores.
  scanned = tmp_path / "scanned"
  assert convert.main(["--from-hf", src, "--out", str(scanned), "--scan-layers"]) == 0
  s_config, s_params = load_params(str(scanned))
  assert s_config.scan_layers and s_params["decoder"]["layers"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 128, 32)
