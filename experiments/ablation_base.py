"""The base config of the ablations (experiments/*/experiment.py): nanoGPT's baby GPT
(configs/gpt_char_baby.py: 4 layers, 4 heads, 128 wide, 64 characters of context, 12 windows a
step) on the default corpus, Shakespeare's plays, over a short but complete schedule, so that one
run takes a few minutes on 2 CPU cores and three seeds of a point train together (--vectorize).
"""

import importlib.util
import os

_BABY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                     "gpt_char_baby.py")


def get_config():
  spec = importlib.util.spec_from_file_location("gpt_char_baby", _BABY)
  baby = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(baby)
  c = baby.get_config()
  # 600 updates (460k characters, about a tenth of an epoch): 100 of warmup, then cosine to min_lr
  c.train.max_steps = 600
  # val loss every 100 steps on 20 fixed batches (the curves in the plots)
  c.train.eval_interval = 100
  c.train.eval_iters = 20
  c.train.log_interval = 50
  c.train.checkpoint_every = 200
  # no end-of-run sample: the sweep compares losses
  c.train.sample_tokens = 0
  # the ablations' tables were measured in float32: the default 'auto' would give bf16 matmuls
  # on a CPU with AMX, and other numbers on other days' machines
  c.model.dtype = "float32"
  return c
