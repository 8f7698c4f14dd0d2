"""The larger shape of experiments/optimizers_large, sized for 2 CPU cores: nanoGPT's
shakespeare_char body (6 layers, 6 heads, 384 wide; 10.7M parameters) on the ablation base's
corpus, with 128 characters of context and batches of 8 (1,024 characters a step), 120 steps,
float32, without dropout (the optimizers are compared, not the regularization).

nanoGPT's own run of this shape (context 256, batches of 64, 5000 steps) is a GPU's job:
experiments/perf/gpu_round.sh (OPT=1) runs these grids at context 256, batch 64, in bfloat16.
"""

import os

from llm_jax.fileio import load_python_file

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ablation_base.py")


def get_config():
  c = load_python_file(_BASE, _BASE, "experiments/ablation_base.py is missing").get_config()
  c.model.update(n_layer=6, n_head=6, n_embd=384, block_size=128, dropout=0.0)
  # 8 windows of 128 characters a step
  c.train.batch_size = 8
  # 120 updates (123k characters): 12 of warmup (a tenth, as the small shape's 10 of 80), then the
  # schedule to min_lr; val loss every 20 steps on 10 fixed batches
  c.train.update(max_steps=120, warmup_steps=12, eval_interval=20, eval_iters=10,
                 log_interval=10, checkpoint_every=120)
  return c
