"""`from_pretrained` and `save_pretrained`: Hugging Face checkpoint directories <-> (ModelConfig, params).

from_pretrained reads config.json, picks the family table by `architectures[0]`, builds the tfm
config, computes the model's parameter shapes (jax.eval_shape, nothing allocated), and fills them
through the family's name rules. save_pretrained runs the same rules backwards, checks that the
written config.json maps back onto the same tfm config, and writes into a temporary directory
that is moved into place only when everything succeeded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tfm.config import ModelConfig
from tfm.hf import families as fam
from tfm.hf import io
from tfm.hf.rules import bind, flatten, hf_to_tfm, tfm_to_hf, unflatten
from tfm.layers.primitives import to_dtype
from tfm.models import build

CONFIG = "config.json"
# Files worth fetching from the Hub for a model directory (weights, configs, tokenizer files).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model*.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "true", "yes", "on"}
# Tokenizer files that travel with a model between formats.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt")


def tokenizer_files(directory: str) -> list[str]:
  """Returns the paths of the Hugging Face tokenizer files in `directory` (tfm's byte / char JSON is not one)."""
  paths = [os.path.join(directory, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, n))]
  return [p for p in paths if not _is_tfm_tokenizer(p)]


def _is_tfm_tokenizer(path: str) -> bool:
  """Returns whether `path` is tfm's own tokenizer JSON (byte / char), which transformers cannot read."""
  blob = read_json_object(path) if path.endswith(".json") else None
  return blob is not None and "tfm_tokenizer" in blob


def read_json_object(path: str) -> Optional[dict]:
  """Returns the JSON object in file `path`, or None if the file is missing, not JSON, or not an object."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    try:
      blob = json.load(f)
    except json.JSONDecodeError:
      return None
  return blob if isinstance(blob, dict) else None


def _offline() -> bool:
  return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_directory(path_or_id: str) -> str:
  """Returns a local model directory: `path_or_id` itself, or a Hub snapshot when it is a hub id."""
  path = os.path.expanduser(str(path_or_id))
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise NotADirectoryError(f"{path}: expected a Hugging Face model directory (config.json + weights), got a file")
  if path.startswith((".", "/", "~")) or not _HUB_ID.match(path):
    raise FileNotFoundError(f"{path}: no such directory")
  hint = (f"{path!r} is not a local directory; pass a local directory with config.json and model.safetensors "
          f"(e.g. one written by transformers' save_pretrained or `hf download {path} --local-dir DIR`)")
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    raise FileNotFoundError(f"{hint}. huggingface_hub is not installed, so hub ids cannot be downloaded.") from None
  offline = _offline()
  try:
    # etag_timeout bounds each request, so a machine without network fails in seconds, not minutes.
    return snapshot_download(path, allow_patterns=_HUB_PATTERNS, local_files_only=offline, etag_timeout=5)
  except Exception as e:  # network errors, missing repos, offline cache misses all land here
    why = "offline mode (HF_HUB_OFFLINE) and not in the local cache" if offline else f"{type(e).__name__}: {e}"
    raise FileNotFoundError(f"{hint}. Download failed: {why}") from None


def read_hf_config(directory: str) -> dict:
  """Returns the parsed config.json of a model directory."""
  path = os.path.join(directory, CONFIG)
  if not os.path.isfile(path):
    raise io.CheckpointError(f"no {CONFIG} in {directory}: not a Hugging Face model directory")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise io.CheckpointError(f"{path}: invalid JSON ({e})") from None


def param_shapes(config: ModelConfig) -> dict:
  """Returns {'a/b/c': shape} of the (unrolled) parameters of `config`'s model, without allocating them."""
  c = config.replace(scan_layers=False) if config.scan_layers else config
  model = build(c)
  ids = jnp.zeros((1, 2), jnp.int32)
  kw = {"decoder_input_ids": ids} if c.family == "encoder_decoder" else {}
  tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, **kw))["params"]
  return {k: tuple(v.shape) for k, v in flatten(nn.meta.unbox(tree)).items()}


_LAYER = re.compile(r"^(.*/layers)/layer_(\d+)/(.*)$")
_SCANNED = re.compile(r"^(.*/layers)/layers/(.*)$")


def stack_layers(flat: dict) -> dict:
  """Returns flat params with layer_0..layer_{n-1} stacked on a leading axis under 'layers' (scan_layers)."""
  out, groups = {}, {}
  for path, x in flat.items():
    m = _LAYER.match(path)
    if m:
      groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = x
    else:
      out[path] = x
  for (stack, rest), by_index in groups.items():
    out[f"{stack}/layers/{rest}"] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
  return out


def unstack_layers(flat: dict) -> dict:
  """Returns flat params with scanned 'layers' arrays split back into layer_0..layer_{n-1}."""
  out = {}
  for path, x in flat.items():
    m = _SCANNED.match(path)
    if m:
      for i in range(x.shape[0]):
        out[f"{m.group(1)}/layer_{i}/{m.group(2)}"] = x[i]
    else:
      out[path] = x
  return out


def _alternate(prefix: str, family_prefix: str):
  """Returns a function mapping a checkpoint key to the bound name form (adding/removing the prefix)."""
  def alt(key: str) -> Optional[str]:
    if prefix and not key.startswith(prefix):
      return prefix + key
    if not prefix and family_prefix and key.startswith(family_prefix):
      return key[len(family_prefix):]
    return None
  return alt


def _lookup(keys, family: fam.Family, name: str) -> Optional[str]:
  """Returns the checkpoint key of base tensor `name` (with or without the base prefix), or None."""
  for k in (name, family.prefix + name):
    if k in keys:
      return k
  return None


def from_pretrained(path_or_id: str, *, architecture: Optional[str] = None, **overrides: Any):
  """Returns (ModelConfig, params) from a Hugging Face model directory or hub id; params are float32 arrays.

  `architecture` overrides config.json's `architectures[0]` (e.g. "BertModel" to drop the MLM head);
  `overrides` are ModelConfig fields applied afterwards (e.g. dropout_rate, scan_layers=True, dtype).
  """
  directory = resolve_directory(path_or_id)
  hf = read_hf_config(directory)
  if architecture is None:
    archs = hf.get("architectures") or []
    if not archs:
      raise ValueError(f"{directory}/{CONFIG} has no 'architectures' entry; pass architecture=... "
                       f"(supported: {sorted(fam.ARCHITECTURES)})")
    architecture = archs[0]
  family, head_kind = fam.resolve(architecture)
  model_type = hf.get("model_type")
  if model_type is not None and model_type != family.name:
    raise ValueError(f"{directory}/{CONFIG}: model_type {model_type!r} does not match architecture {architecture!r} "
                     f"(model_type {family.name!r})")
  ckpt = io.WeightFiles(directory)
  keys = set(ckpt.keys())
  has = lambda name: _lookup(keys, family, name) is not None
  embed = _lookup(keys, family, family.embed_key)
  lm = family.lm_key if family.lm_key in keys else None
  tie_config = hf.get("tie_word_embeddings", True) is not False
  tied = lm is None or (tie_config and embed is not None and ckpt.shape(lm) == ckpt.shape(embed)
                        and np.array_equal(ckpt.get(lm), ckpt.get(embed)))
  try:
    config = ModelConfig(**family.to_tfm(hf, head_kind, tied, has))
  except KeyError as e:
    raise ValueError(f"{directory}/{CONFIG} lacks field {e.args[0]!r}, which {architecture} needs") from None
  if overrides:
    config = config.replace(**overrides)
  shapes = param_shapes(config)
  prefix = "" if architecture in fam.BASE_CLASSES else family.prefix
  bound = bind(family.rules, shapes, max(config.num_layers, config.decoder_layers), prefix)
  ignore = family.ignore + family.unused.get(head_kind, ())
  if head_kind in ("base", "encoder"):
    ignore += family.head_keys
  flat = hf_to_tfm(bound, shapes, ckpt.get, ckpt.keys(), ignore, source=directory,
                   alternate_prefix=_alternate(prefix, family.prefix))
  if config.scan_layers:
    flat = stack_layers(flat)
  dtype = to_dtype(config.param_dtype)
  return config, unflatten({k: jnp.asarray(v, dtype) for k, v in flat.items()})


_RUNTIME = ("dropout_rate", "attention_dropout_rate", "dtype", "param_dtype", "attention_impl", "scan_layers",
            "remat", "init", "init_std")


def _effective(c: ModelConfig) -> dict:
  """Returns the config fields that change a model's outputs, with defaults resolved."""
  d = c.to_dict()
  d.update(qkv_bias=c.use_bias if c.qkv_bias is None else c.qkv_bias,
           norm_bias=(c.norm == "layernorm") if c.norm_bias is None else c.norm_bias,
           final_norm=c.has_final_norm, head_dim=c.dim_per_head, num_kv_heads=c.kv_heads,
           num_decoder_layers=c.decoder_layers, classifier_pooling=c.pooling)
  drop = set(_RUNTIME)
  if c.family != "encoder_decoder":
    drop |= {"decoder_start_token_id", "num_decoder_layers", "classifier_source"}
  if c.position != "relative":
    drop |= {"relative_buckets", "relative_max_distance"}
  if c.position not in ("learned", "rope"):
    drop |= {"max_len"}
  if c.position != "rope":
    drop |= {"rope_theta"}
  if c.position != "learned":
    drop |= {"position_offset"}
  if not c.num_labels:
    drop |= {"classifier_pooling", "classifier_source", "classifier_hidden", "classifier_bias"}
  if c.num_labels or not c.lm_head:
    drop |= {"lm_transform", "lm_bias", "tie_embeddings", "scale_tied_logits"}
  elif not c.tie_embeddings:
    drop |= {"scale_tied_logits"}
  if c.family != "encoder" or (c.lm_head and not c.num_labels):
    drop |= {"pooler"}
  return {k: v for k, v in d.items() if k not in drop}


def hf_config_of(config: ModelConfig, architecture: str, bound=None) -> dict:
  """Returns the config.json fields of `config` as `architecture`; ValueError if they would load differently."""
  family, head_kind = fam.resolve(architecture)
  prefix = "" if architecture in fam.BASE_CLASSES else family.prefix
  if bound is None:
    bound = bind(family.rules, param_shapes(config), max(config.num_layers, config.decoder_layers), prefix)
  fields = family.to_hf(config, head_kind)
  # The written config must map back onto this config, or transformers would build another model.
  written = {b.hf for b in bound if not b.alias}
  has = lambda name: name in written or prefix + name in written
  back = ModelConfig(**family.to_tfm(dict(fields), head_kind, config.tie_embeddings, has))
  want, got = _effective(config), _effective(back)
  diff = {k: (want[k], got.get(k)) for k in want if got.get(k) != want[k]}
  if diff:
    raise ValueError(f"config cannot be written as {architecture}: field(s) "
                     + ", ".join(f"{k}={a!r} (would load as {b!r})" for k, (a, b) in sorted(diff.items())))
  return fields


def save_pretrained(config: ModelConfig, params, path: str, *, architecture: Optional[str] = None,
                    hf_config: Optional[dict] = None, extra_files: Sequence[str] = ()) -> str:
  """Writes config.json + model.safetensors that transformers loads with from_pretrained; returns `path`.

  `architecture` picks the HF class (default: inferred from the config, e.g. LlamaForCausalLM);
  `hf_config` adds or replaces config.json fields (e.g. token ids); `extra_files` (tokenizer files)
  are copied into the directory. Raises ValueError, writing
  nothing, when the config has no exact equivalent in that architecture or a shape is wrong.
  """
  architecture = architecture or fam.architecture_of(config)
  family, head_kind = fam.resolve(architecture)
  prefix = "" if architecture in fam.BASE_CLASSES else family.prefix
  flat = {k[len("params/"):] if k.startswith("params/") else k: v for k, v in flatten(nn.meta.unbox(params)).items()}
  flat = unstack_layers(flat) if config.scan_layers else flat
  shapes = param_shapes(config)
  for k, want in shapes.items():
    if k in flat and tuple(np.shape(flat[k])) != want:
      raise ValueError(f"parameter {k} has shape {tuple(np.shape(flat[k]))}; the config needs {want}")
  missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
  if missing or extra:
    raise ValueError(f"params do not match the config: missing {missing[:12]}, not in the model {extra[:12]}")
  bound = bind(family.rules, shapes, max(config.num_layers, config.decoder_layers), prefix)
  fields = hf_config_of(config, architecture, bound)
  tensors = tfm_to_hf(bound, {k: np.asarray(jax.device_get(flat[k]), np.float32) for k in shapes})
  fields.update(architectures=[architecture], dtype="float32")
  fields.update(hf_config or {})
  path = os.path.abspath(os.path.expanduser(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tfm-save-", dir=parent)
  try:
    with open(os.path.join(tmp, CONFIG), "w") as f:
      json.dump(fields, f, indent=2, sort_keys=True)
    io.write_safetensors(tensors, os.path.join(tmp, io.SAFETENSORS))
    for extra in extra_files:
      shutil.copy(extra, tmp)
    _move_into(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def _move_into(tmp: str, path: str) -> None:
  """Moves the finished files of `tmp` into `path` (renaming the directory when `path` does not exist)."""
  if not os.path.exists(path):
    os.replace(tmp, path)
    return
  for name in os.listdir(tmp):
    os.replace(os.path.join(tmp, name), os.path.join(path, name))
