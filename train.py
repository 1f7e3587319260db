"""Pretrain a tfm model: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.a.b=value ...]`.

The quick start. With no arguments it runs the embedded default (configs/default.py: the llama-test
decoder on Python's help topics, a few minutes on a CPU). Re-running the same command in the same
workdir resumes. The same command installed: `tfm-train` or `python -m tfm.train` (tfm/train/__main__.py
defines the flags, --huge_pages among them).
"""

from tfm.train.__main__ import run

if __name__ == "__main__":
  run()
