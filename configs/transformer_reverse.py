"""The original encoder-decoder Transformer reversing strings of 8-16 letters, small enough to train
on a CPU in minutes, to exact match on the 1,000 held-out test strings (README has the figures).

  llm-jax train --config=configs/transformer_reverse.py --workdir=runs/transformer_reverse
  llm-jax evaluate --workdir=runs/transformer_reverse --split=test
  llm-jax generate --workdir=runs/transformer_reverse --prompt=transformers
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # the encoder-decoder with the paper's choices: post-LayerNorm, sinusoidal positions, ReLU, biases
  c.model.name = "transformer"
  c.model.norm = "post"
  c.model.pos = "sinusoidal"
  c.model.activation = "relu"
  c.model.use_bias = True
  # 2 encoder and 2 decoder layers of width 64, 4 heads (0.24M parameters)
  c.model.n_layer = 2
  c.model.n_head = 4
  c.model.n_embd = 64
  # sources of up to 16 letters, decoder inputs of up to 17 tokens (BOS + 16 letters)
  c.model.block_size = 17
  # reverse 20,000 distinct strings of 8 to 16 letters a-z; 1,000 held out for val, 1,000 for test
  c.data.task = "reverse"
  c.data.min_length = 8
  c.data.max_length = 16
  c.data.num_examples = 20000
  c.data.heldout_examples = 1000
  # 64 pairs a step; 100% on val by step 900 in trials, so 2,000 steps leave a margin
  c.train.batch_size = 64
  c.train.max_steps = 2000
  c.train.warmup_steps = 100
  # no weight decay: the model is small and the strings are random, so nothing to overfit
  c.train.weight_decay = 0.0
  # 16 x 64 val pairs per evaluation: every val example is decoded for exact match
  c.train.eval_iters = 16
  c.train.eval_interval = 250
  c.train.log_interval = 50
  c.train.checkpoint_every = 1000
  return c
