"""The name-rule engine: one table of (HF name template, tfm path(s), transform) rules, used both ways.

A rule's HF template may hold `{i}` (a layer index); it is expanded for every layer and kept only
where all its tfm paths exist in the model's parameter tree, so one table serves every head and
size of a family. A rule with several tfm paths is a fused HF tensor (GPT-2's c_attn) split along
its output axis. Alias rules name tied duplicates (e.g. lm_head.weight of a tied head): read and
checked if present, never written.

Transforms map between the HF layout and the tfm layout of one tensor:
  LINEAR     torch nn.Linear weight [out, in]  <-> kernel [in..., out...] (transpose, reshape)
  LINEAR_OUT the same with two input dims (attention out: [heads, head_dim, embed])
  CONV1D     GPT-2 Conv1D weight [in, out]      <-> kernel [in..., out...] (reshape only)
  FLAT       a vector [n]                       <-> any shape with n elements (biases [heads, head_dim])
  SAME       identical shapes (embeddings, norm scales, relative-bias tables)
  ROW        [1, n]                             <-> [n] (BART's final_logits_bias)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional, Sequence, Union

import numpy as np


def _prod(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Transform:
  """How one HF tensor maps onto one tfm parameter (and back)."""

  name: str
  n_in: int = 1        # leading tfm dims that are input dims (kernels)
  split_axis: int = 0  # HF axis along which fused tensors are concatenated

  def hf_shape(self, shape: tuple) -> tuple:
    """Returns the HF shape that corresponds to tfm shape `shape`."""
    if self.name == "linear":
      return (_prod(shape[self.n_in:]), _prod(shape[:self.n_in]))
    if self.name == "conv1d":
      return (_prod(shape[:self.n_in]), _prod(shape[self.n_in:]))
    if self.name == "flat":
      return (_prod(shape),)
    if self.name == "row":
      return (1, _prod(shape))
    return tuple(shape)

  def to_tfm(self, x: np.ndarray, shape: tuple) -> np.ndarray:
    """Returns HF tensor x in the tfm layout `shape`."""
    if self.name == "linear":
      return x.T.reshape(shape)
    return x.reshape(shape)

  def to_hf(self, y: np.ndarray) -> np.ndarray:
    """Returns tfm array y in the HF layout."""
    hf = self.hf_shape(y.shape)
    if self.name == "linear":
      return y.reshape(hf[::-1]).T
    return y.reshape(hf)


LINEAR = Transform("linear")
LINEAR_OUT = Transform("linear", n_in=2)
CONV1D = Transform("conv1d", split_axis=1)
CONV1D_OUT = Transform("conv1d", n_in=2, split_axis=1)
FLAT = Transform("flat")
SAME = Transform("same")
ROW = Transform("row")


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF name template <-> tfm path(s) ('/'-joined), with a transform; alias rules are tied duplicates."""

  hf: str
  tfm: Union[str, tuple]
  transform: Transform = SAME
  alias: bool = False
  base: bool = True  # the HF name lives under the base-model prefix (e.g. "transformer.")

  @property
  def targets(self) -> tuple:
    """Returns the tfm paths as a tuple."""
    return (self.tfm,) if isinstance(self.tfm, str) else tuple(self.tfm)


def rule(hf, tfm, transform=SAME, alias=False):
  """Returns a Rule for a base-model tensor."""
  return Rule(hf, tfm, transform, alias, base=True)


def head(hf, tfm, transform=SAME, alias=False):
  """Returns a Rule for a head tensor (named outside the base-model prefix)."""
  return Rule(hf, tfm, transform, alias, base=False)


@dataclasses.dataclass(frozen=True)
class Bound:
  """A rule expanded for one layer index and bound to the parameter tree at hand."""

  hf: str
  targets: tuple
  transform: Transform
  alias: bool

  def hf_shape(self, shapes: dict) -> tuple:
    """Returns the HF tensor shape expected from the tfm shapes."""
    parts = [self.transform.hf_shape(shapes[t]) for t in self.targets]
    if len(parts) == 1:
      return parts[0]
    ax = self.transform.split_axis
    out = list(parts[0])
    out[ax] = sum(p[ax] for p in parts)
    return tuple(out)


def bind(rules: Sequence[Rule], shapes: dict, max_layers: int, prefix: str) -> list[Bound]:
  """Returns the rules expanded over layer indices and kept where every tfm path is in `shapes`."""
  out = []
  for r in rules:
    indices = range(max_layers) if "{i}" in r.hf else [None]
    for i in indices:
      fmt = (lambda s: s.replace("{i}", str(i))) if i is not None else (lambda s: s)
      targets = tuple(fmt(t) for t in r.targets)
      if all(t in shapes for t in targets):
        out.append(Bound((prefix if r.base else "") + fmt(r.hf), targets, r.transform, r.alias))
  # A tied alias yields to a real rule of the same HF name (an untied lm_head.weight).
  real = {b.hf for b in out if not b.alias}
  return [b for b in out if not (b.alias and b.hf in real)]


def flatten(tree: dict, prefix: str = "") -> dict:
  """Returns {'a/b/c': leaf} for a nested dict."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict) or hasattr(v, "items") and not hasattr(v, "shape"):
      out.update(flatten(dict(v), path))
    else:
      out[path] = v
  return out


def unflatten(flat: dict) -> dict:
  """Returns the nested dict of {'a/b/c': leaf}."""
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def _preview(names, n=12) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - n} more" if len(names) > n else ""
  return ", ".join(names[:n]) + more


def hf_to_tfm(bound: list[Bound], shapes: dict, get: Callable[[str], np.ndarray], keys: Sequence[str],
              ignore: Sequence[str], source: str, alternate_prefix: Optional[Callable[[str], str]] = None) -> dict:
  """Returns the flat tfm params {path: float32 array} read from HF tensors through `bound` rules.

  Raises ValueError for a shape mismatch (naming the parameter and both shapes), for HF tensors no
  rule maps (unless they match an `ignore` regex), for tfm parameters no tensor fills, and for tied
  duplicates whose values differ.
  """
  by_name = {b.hf: b for b in bound}
  # A checkpoint of the base model names base tensors without the prefix (or with it for head models).
  resolved = {}
  for k in keys:
    name = k if k in by_name else (alternate_prefix(k) if alternate_prefix else None)
    if name in by_name:
      resolved[name] = k
  ignore_re = [re.compile(p) for p in ignore]
  unmapped = [k for k in keys if k not in resolved.values() and not any(p.search(k) for p in ignore_re)]
  if unmapped:
    raise ValueError(f"{source}: {len(unmapped)} tensor(s) have no rule in the conversion table: "
                     f"{_preview(unmapped)}")
  out: dict = {}
  for b in sorted(bound, key=lambda b: b.alias):  # canonical tensors first, tied aliases after
    if b.hf not in resolved:
      continue
    key = resolved[b.hf]
    x = get(key)
    want = b.hf_shape(shapes)
    if tuple(x.shape) != tuple(want):
      raise ValueError(f"{source}: shape mismatch for {key!r} -> tfm {' + '.join(b.targets)}: checkpoint has "
                       f"{tuple(x.shape)}, the model config needs {tuple(want)}")
    x = np.asarray(x, dtype=np.float32)
    parts = [x] if len(b.targets) == 1 else np.split(
        x, np.cumsum([b.transform.hf_shape(shapes[t])[b.transform.split_axis] for t in b.targets])[:-1],
        axis=b.transform.split_axis)
    for t, part in zip(b.targets, parts):
      y = b.transform.to_tfm(part, shapes[t])
      if t in out:
        if not b.alias:
          raise ValueError(f"{source}: tfm parameter {t} is filled by two checkpoint tensors (second: {key!r})")
        if not np.array_equal(out[t], y):
          raise ValueError(f"{source}: {key!r} is a tied copy of tfm parameter {t} but its values differ; "
                           f"the config says these weights are tied (tie_word_embeddings)")
      else:
        out[t] = np.ascontiguousarray(y)
  missing = [p for p in shapes if p not in out]
  if missing:
    expected = {t: b.hf for b in bound for t in b.targets if not b.alias}
    raise ValueError(f"{source}: {len(missing)} model parameter(s) not found in the checkpoint: "
                     + _preview(f"{p} (from {expected.get(p, 'no rule')!r})" for p in missing))
  return out


def tfm_to_hf(bound: list[Bound], flat: dict) -> dict:
  """Returns {HF name: array} for the flat tfm params (aliases are not written)."""
  used, out = set(), {}
  for b in bound:
    if b.alias:
      continue
    arrays = [np.asarray(flat[t], dtype=np.float32) for t in b.targets]
    used.update(b.targets)
    parts = [b.transform.to_hf(a) for a in arrays]
    out[b.hf] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=b.transform.split_axis)
  unused = [p for p in flat if p not in used]
  if unused:
    raise ValueError(f"{len(unused)} tfm parameter(s) have no rule in the conversion table: {_preview(unused)}")
  return out
