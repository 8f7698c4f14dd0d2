"""The original encoder-decoder Transformer adding integers of up to 4 digits ('381+57' -> '438'),
small enough to train on a CPU in minutes, scored by exact match on the 1,000 held-out test sums
(README has the figures).

  llm-jax train --config=configs/transformer_add.py --workdir=runs/transformer_add
  llm-jax evaluate --workdir=runs/transformer_add --split=test
  llm-jax generate --workdir=runs/transformer_add --prompt=1234+5678
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
  # 2 encoder and 2 decoder layers of width 64, 4 heads (0.23M parameters)
  c.model.n_layer = 2
  c.model.n_head = 4
  c.model.n_embd = 64
  # sources of up to 9 characters (4 digits + 4 digits); sums of up to 5 digits + EOS fit too
  c.model.block_size = 9
  # a+b with operands of 1 to 4 digits: 100,000 distinct sums, 1,000 for val and 1,000 for test
  c.data.task = "add"
  c.data.min_length = 1
  c.data.max_length = 4
  c.data.num_examples = 100000
  c.data.heldout_examples = 1000
  # 64 sums a step; the carries take longer to learn than reversal: 8,000 steps
  c.train.batch_size = 64
  c.train.max_steps = 8000
  c.train.warmup_steps = 200
  # no weight decay: the model is small and the data large
  c.train.weight_decay = 0.0
  # 16 x 64 val sums per evaluation: every val example is decoded for exact match
  c.train.eval_iters = 16
  c.train.eval_interval = 1000
  c.train.log_interval = 50
  c.train.checkpoint_every = 2000
  return c
