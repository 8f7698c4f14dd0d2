"""A GPT of two 32-wide layers on a toy text (bitwise.sh's runs): compiles in seconds on a CPU.
The corpus: $HOUSE_CORPUS (a text file) or, for corpus 'prepared', $HOUSE_PREPARED."""

import os

from llm_jax.config import default_config


def get_config():
  c = default_config()
  c.data.corpus = "text_file"
  c.data.path = os.environ.get("HOUSE_CORPUS", "")
  if os.environ.get("HOUSE_PREPARED"):
    c.data.corpus, c.data.path = "prepared", os.environ["HOUSE_PREPARED"]
  c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.1, dtype="float32")
  c.train.update(batch_size=8, max_steps=20, lr_decay_steps=20, warmup_steps=2, eval_interval=10,
                 eval_iters=2, log_interval=5, checkpoint_every=10, sample_tokens=0)
  return c
