"""The larger shape of experiments/optimizers_large: nanoGPT's shakespeare_char model (6 layers,
6 heads, 384 wide, 256 characters of context, batches of 64; 10.7M parameters) on the ablation
base's corpus and schedule shape, without dropout (the optimizers are compared, not the
regularization), in bfloat16 matmuls (for a GPU; float32 accumulation, as model.dtype says).
"""

import importlib.util
import os

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ablation_base.py")


def get_config():
  spec = importlib.util.spec_from_file_location("ablation_base", _BASE)
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  c = base.get_config()
  c.model.update(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0, dtype="bfloat16")
  c.train.batch_size = 64
  # 2000 steps of 16,384 characters (33M, about 7 epochs of the plays' training split), 100 of
  # warmup, then the schedule to min_lr
  c.train.update(max_steps=2000, warmup_steps=100, eval_interval=250, eval_iters=20,
                 log_interval=25, checkpoint_every=1000)
  return c
