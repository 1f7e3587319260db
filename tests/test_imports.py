"""The package's imports run one way: each subpackage imports alone, and no layer imports from above it."""

import ast
import os
import pkgutil
import subprocess
import sys

import pytest

import tfm

ROOT = os.path.dirname(tfm.__file__)


def _modules():
  """Returns {module name: path} for every module of the tfm package."""
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
  return out


def _imports(path):
  """Returns the tfm modules a file imports, at the top or inside functions (lazy imports count)."""
  names = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names if a.name.split(".")[0] == "tfm")
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "tfm":
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def _owner(name, modules):
  """Returns the longest tfm module name that `name` (a module or a module.attribute) refers to."""
  while name not in modules and "." in name:
    name = name.rsplit(".", 1)[0]
  return name


# Low layers may not import these (the model core knows nothing of training, data, HF or benchmarks).
FORBIDDEN = {
    "tfm.attention": ("tfm.train", "tfm.data", "tfm.hf", "tfm.bench", "tfm.layers", "tfm.models"),
    "tfm.ops": ("tfm.train", "tfm.data", "tfm.hf", "tfm.bench", "tfm.layers", "tfm.models"),
    "tfm.layers": ("tfm.train", "tfm.data", "tfm.hf", "tfm.bench", "tfm.models"),
    "tfm.models": ("tfm.train", "tfm.data", "tfm.hf", "tfm.bench"),
    "tfm.data": ("tfm.train", "tfm.bench"),
}


def _within(name, package):
  return name == package or name.startswith(package + ".")


def test_import_direction():
  modules = _modules()
  bad = []
  for mod, path in modules.items():
    for low, banned in FORBIDDEN.items():
      if not _within(mod, low):
        continue
      for imp in _imports(path):
        target = _owner(imp, modules)
        if any(_within(target, b) for b in banned):
          bad.append(f"{mod} imports {target}")
  assert not bad, "imports against the layering: " + "; ".join(sorted(bad))


def test_no_import_cycle_between_subpackages():
  modules = _modules()
  top = lambda m: ".".join(m.split(".")[:2])
  graph = {}
  for mod, path in modules.items():
    for imp in _imports(path):
      a, b = top(mod), top(_owner(imp, modules))
      if a != b and b != "tfm" and a != "tfm":
        graph.setdefault(a, set()).add(b)
  # Depth-first search for a cycle among the subpackages / top-level modules of tfm.
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
      if m not in state:
        visit(m)
    stack.pop()
    state[n] = "done"

  for n in sorted(graph):
    if n not in state:
      visit(n)


def test_each_subpackage_imports_alone_in_a_fresh_interpreter():
  # The subpackages (folders): each costs a fresh interpreter importing JAX, so top-level modules, which they
  # import, are not started on their own.
  packages = sorted(m for m, path in _modules().items() if path.endswith("__init__.py") and m != "tfm")
  procs = {p: subprocess.Popen([sys.executable, "-c", f"import {p}"], stderr=subprocess.PIPE, text=True)
           for p in packages}
  failed = {p: proc.communicate()[1].strip().splitlines()[-1:] for p, proc in procs.items() if proc.wait()}
  assert not failed, f"modules that do not import alone: {failed}"


def test_lazy_package_names_resolve_and_the_step_imports_without_the_loop():
  code = ("import sys, tfm.train.step, tfm.bench.step; "
          "heavy = sorted(m for m in ('orbax', 'tensorboardX', 'sklearn', 'matplotlib') if m in sys.modules); "
          "import tfm.data, tfm.train; "
          "[getattr(p, n) for p in (tfm.data, tfm.train) for n in p.__all__]; print(heavy)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"  # checkpoints, writers and baselines are the loop's, not the step's
