"""The layers of every tfm model family, read top-down: `embeddings` (what enters and leaves the stack of
layers) -> `block` (the stack, the block, the attention layer, the MLP) -> `primitives` (Dense, Norm,
activations); under them, the attention core (tfm.attention) and the products (tfm.ops)."""
