"""GPT-2 small's shapes (124M parameters): the architecture of OpenAI's `gpt2` checkpoint.

    llm-jax train --config=configs/gpt2_small.py --workdir=runs/gpt2_small

Trained from scratch here it needs an accelerator; its use on a CPU is as the shape that
`llm-jax convert` gives a GPT-2 checkpoint (the same fields: convert.py), so that a run of it
and a converted `gpt2` are the same model. GPT-2's tokenizer is tiktoken's gpt2 encoding, which
needs the network once (or TIKTOKEN_CACHE_DIR).
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  c.data.tokenizer = "tiktoken:gpt2"
  m = c.model
  # 12 layers of 12 heads, 768 wide, 1024 positions: 124M parameters with the tied head
  m.n_layer, m.n_head, m.n_embd = 12, 12, 768
  m.block_size = m.max_len = 1024
  # GPT-2's own choices: biases everywhere, the tanh GELU ('gelu_new'), LayerNorm eps 1e-5,
  # learned positions, pre-norm, tied embeddings
  m.use_bias = True
  m.activation = "gelu_tanh"
  m.norm_eps = 1e-5
  # GPT-2's 50257 tokens padded to a multiple of 64 (nanoGPT's 50304): faster matmuls; a
  # converted checkpoint keeps its own 50257
  m.vocab_size = 50304
  m.dropout = 0.0
  # nanoGPT's train_gpt2 schedule: 6e-4 peak, 2000 warmup steps, cosine to 6e-5, 0.1 decay
  c.train.batch_size = 8
  c.train.grad_accum_steps = 4
  c.train.learning_rate = 6e-4
  c.train.min_lr = 6e-5
  c.train.warmup_steps = 2000
  c.train.max_steps = 600000
  c.train.beta2 = 0.95
  c.train.eval_interval = 1000
  c.train.eval_iters = 50
  c.train.checkpoint_every = 1000
  return c
