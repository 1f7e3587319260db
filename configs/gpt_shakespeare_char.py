"""A character-level GPT on tiny Shakespeare (the nanoGPT classic), sized for a 2-core CPU.

    python train.py --config configs/gpt_shakespeare_char.py --workdir runs/shakespeare \
        --config.data.manual_dir=../shared/data/tiny_shakespeare

TFDS prepares `tiny_shakespeare` from `input.txt` in data.manual_dir (checksum verified, no
network). Validation is TFDS's validation split (55,770 characters). Target: eval loss <= 1.55
nats per character within 10 minutes on 2 CPU cores.
"""

from tfm.train.defaults import base_config, lock


def get_config():
  """Returns the tiny-Shakespeare character-level GPT config."""
  c = base_config()
  c.model = "llama-test"                     # decoder-only, Llama layout: RoPE, RMSNorm, SwiGLU
  c.model_overrides.num_layers = 4           # 4 blocks
  c.model_overrides.d_model = 128            # width
  c.model_overrides.num_heads = 4            # 32 dims per head
  c.model_overrides.num_kv_heads = 4         # full multi-head attention (no GQA at this size)
  c.model_overrides.d_ff = 384               # SwiGLU hidden width (3 matrices: ~ the cost of a 4x GELU MLP)
  c.model_overrides.tie_embeddings = True    # LM head shares the character embedding
  c.data.name = "tiny_shakespeare"           # TFDS dataset (one document per split)
  c.data.tokenizer = "char"                  # 65 characters + 3 specials
  c.data.seq_len = 128                       # context length
  c.train.steps = 1000                       # optimizer steps (eval 1.542 at step 800 of a 1200-step schedule)
  c.train.batch_size = 32                    # windows per step (4,096 tokens)
  c.train.eval_every = 200                   # evaluate every N steps
  c.train.eval_batches = 13                  # 13 x 32 windows = 416 x 128 tokens: 95 % of validation
  c.train.eval_at_start = True               # step-0 eval: the reference of the learning curve
  c.train.checkpoint_every = 200             # checkpoint every N steps
  c.train.log_every = 50                     # train metrics every N steps
  c.train.sample_prompt = "ROMEO:"           # prompt of the generated sample
  c.optimizer.learning_rate = 4e-3           # peak learning rate (small model: high rate)
  c.optimizer.warmup_steps = 100             # linear warm-up
  c.optimizer.end_learning_rate_factor = 0.05  # cosine decays to 5 % of peak
  c.optimizer.weight_decay = 0.1             # AdamW decay on matrices
  return lock(c)
