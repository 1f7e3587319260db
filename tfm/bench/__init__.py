"""Benchmarks of tfm variants: speed (tokens/s, MFU, compile time, memory), quality, and PyTorch parity.

Command line: `python -m tfm.bench speed|quality|torch|device-check --help` (also `tfm-bench`), and generation
speed against Hugging Face: `python -m tfm.bench.generate --help`. Library entry points:
`tfm.bench.speed.run_speed`, `tfm.bench.torch_ref.run_torch`, `tfm.bench.quality.run_quality`,
`tfm.bench.generate.run`.
"""
