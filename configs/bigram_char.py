"""The bigram LM: the next character from the current one alone (a 65 x 65 table on Tiny Shakespeare).

It reaches a val loss of about 2.5 nats on Shakespeare: what a model without context can do.
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  # model family: a V x V table of logits
  c.model.name = "bigram"
  # windows of 32 characters; the bigram sees one at a time, so this only sets the batch size in tokens
  c.model.block_size = 32
  # 32 windows x 32 characters per step
  c.train.batch_size = 32
  # a table learns fast: 3000 steps at a high learning rate, short warmup
  c.train.max_steps = 3000
  c.train.learning_rate = 1e-1
  c.train.min_lr = 1e-2
  c.train.warmup_steps = 50
  # no weight decay on the table (it is the whole model)
  c.train.weight_decay = 0.0
  c.train.eval_interval = 500
  c.train.checkpoint_every = 1000
  return c
