"""`python -m tfm.bench device-check`: every attention implementation of the backend against the reference."""

import json
import subprocess
import sys

import jax.numpy as jnp

from tfm.bench import device as dev
from tfm.bench.__main__ import main


def test_device_check_passes_on_cpu_for_every_implementation(tmp_path):
  """reference, xla and blockwise agree with the float32 reference (outputs and dq, dk, dv) on causal, padding,
  packed-segment and sliding-window masks, MHA and GQA, float32 and bfloat16; the command exits 0."""
  cmd = [sys.executable, "-m", "tfm.bench", "device-check", "--no-train", "--length", "384", "--head-dim", "32",
         "--cases", "causal,padding,segments,window", "--out", str(tmp_path)]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert "| case | impl | path | dtype | max |Δ| value | max |Δ| grad | tol | ok |" in res.stdout
  rows = [[c.strip() for c in line.split("|")[1:-1]] for line in res.stdout.splitlines()
          if line.startswith("| ") and line.split("|")[2].strip() in ("reference", "xla", "blockwise")]
  assert len(rows) == 4 * 2 * 2 * 3  # cases x (MHA, GQA) x dtypes x implementations
  for case, impl, path, dtype, value, grad, tol, ok, _ in rows:
    assert ok == "ok" and path == impl, (case, impl, path, dtype)
    assert float(value) <= float(tol) and float(grad) <= float(tol)
  assert {(r[0], r[1], r[3]) for r in rows} == {
      (f"{kind} {heads}", impl, dtype) for kind in ("causal", "padding", "segments", "window")
      for heads in ("mha", "gqa") for impl in ("reference", "xla", "blockwise") for dtype in ("float32", "bfloat16")}
  checks = json.loads((tmp_path / "device_check.json").read_text())["checks"]
  assert len(checks) == len(rows) and all(c["ok"] for c in checks)
  # the tolerances stated: float32 2e-5, bfloat16 2e-2 of max |reference|, and float32 met far inside it
  assert {c["dtype"]: c["tol"] for c in checks} == {"float32": 2e-5, "bfloat16": 2e-2}
  assert max(max(c["value_err"], c["grad_err"]) for c in checks if c["dtype"] == "float32") < 1e-5


def test_device_check_fails_when_a_check_fails(capsys):
  # an implementation the core does not have: its rows fail, named, and the exit status is 1
  status = main(["device-check", "--no-train", "--no-cpu-flags", "--impls", "xla,flash", "--cases", "causal",
                 "--dtypes", "float32", "--length", "64", "--head-dim", "16"])
  out = capsys.readouterr().out
  assert status == 1
  assert "| causal mha | xla | xla | float32 |" in out and "| causal mha | flash | - | float32 |" in out
  assert "FAIL" in out and "2 of 4 checks ok" in out
  # a kernel that returns NaN is never within tolerance
  assert dev._relative_error(jnp.array([1.0, jnp.nan]), jnp.array([1.0, 1.0])) == float("inf")


def test_cases_and_machine_info():
  case = dev.attention_case("segments", heads=4, kv_heads=2, batch=2, length=64, head_dim=8)
  dense = case.mask.dense()  # [batch, 1, q, k]: causal within each packed segment
  assert dense.shape == (2, 1, 64, 64) and bool(dense[0, 0, 31, 31]) and not bool(dense[0, 0, 32, 31])
  assert case.q.shape == (2, 64, 4, 8) and case.k.shape == (2, 64, 2, 8) and case.name == "segments gqa"
  pad = dev.attention_case("padding", batch=2, length=64)
  assert pad.q_valid[1].sum() == 40 and float(abs(pad.cotangent[1, 40:]).max()) == 0.0
  assert dev.backend_implementations("cpu") == ["reference", "xla", "blockwise"]
  assert dev.backend_implementations("gpu")[-2:] == ["cudnn", "pallas"]
  info = dev.machine_info()
  assert info["cpu_model"] and info["cpu_count"] >= 1 and info["avx512"] in (True, False, None)


def test_speed_help_names_every_attention_implementation(capsys):
  try:
    main(["speed", "--help"])
  except SystemExit:
    pass
  assert "auto|xla|blockwise|cudnn|pallas|reference" in capsys.readouterr().out
