"""Text generation with a KV cache in one compiled loop: `tfm.generate(model, params, input_ids, ...)`.

Modules: `sampling` (greedy / temperature / top-k / top-p token choice), `beam` (beam search state
update, HF rules), `loop` (the compiled prefill + while loop and the public function), and
`__main__` (the command line: `python -m tfm.generate --workdir DIR --prompt "..."`).
"""

from tfm.generate.loop import STRATEGIES, generate

__all__ = ["STRATEGIES", "generate"]
