"""Pre-norm vs post-norm, with and without learning-rate warmup, at 4 and 8 layers.

Seed document 001 describes post-norm (the original Transformer: LN(x + f(x))); seed 000 and
nanoGPT use pre-norm (x + f(LN(x))). Post-norm is said to need warmup and to get harder with depth.
"""

from llm_jax.sweep import grid


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": grid({"model.norm": ["pre", "post"], "train.warmup_steps": [100, 0],
                      "model.n_layer": [4, 8]}),
      "seeds": [0, 1, 2],
  }
