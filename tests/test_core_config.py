"""The config dataclass, its validation errors and the preset table."""

import dataclasses
import re

import pytest

import tfm

REQUIRED_PRESETS = ["gpt2-small", "gpt2-medium", "llama-tiny", "bert-base", "bert-large", "t5-small", "t5-base",
                    "t5-v1_1-small", "bart-base", "transformer-base"]


def test_required_presets_exist():
  names = tfm.list_configs()
  for n in REQUIRED_PRESETS:
    assert n in names
  for family in ("encoder", "decoder", "encoder_decoder"):
    tiny = [n for n in names if tfm.get_config(n).family == family and tfm.get_config(n).d_model <= 64]
    assert tiny, family


def test_config_is_frozen_and_overridable():
  c = tfm.get_config("gpt2-small", num_layers=2)
  assert c.num_layers == 2 and c.d_model == 768
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.num_layers = 3


@pytest.mark.parametrize("overrides,field,allowed", [
    (dict(num_heads=5), "num_heads", "must divide"),
    (dict(num_kv_heads=3), "num_kv_heads", "must divide"),
    (dict(mlp="swish"), "mlp", "swiglu"),
    (dict(position="xpos"), "position", "rope"),
    (dict(norm="batchnorm"), "norm", "rmsnorm"),
    (dict(d_ff=-1), "d_ff", "positive"),
    (dict(num_layers=0), "num_layers", "positive"),
    (dict(dropout_rate=1.5), "dropout_rate", r"\[0, 1\)"),
    (dict(family="rnn"), "family", "encoder_decoder"),
    (dict(attention_impl="flash"), "attention_impl", "cudnn"),
    (dict(nonexistent=1), "nonexistent", "known fields"),
])
def test_bad_values_name_the_field_and_what_is_allowed(overrides, field, allowed):
  with pytest.raises(ValueError) as e:
    tfm.get_config("gpt2-tiny", **overrides)
  assert field in str(e.value) and re.search(allowed, str(e.value))


def test_unknown_preset_lists_available():
  with pytest.raises(ValueError, match="gpt2-small"):
    tfm.get_config("gpt5")
