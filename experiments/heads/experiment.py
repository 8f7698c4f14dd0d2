"""The number of attention heads at a fixed width (n_embd=128): 1, 2, 4, 8 heads of 128, 64, 32,
16 dimensions. The parameter count does not change; only how attention splits the width."""


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [{"model.n_head": h} for h in (1, 2, 4, 8)],
      "seeds": [0, 1, 2],
  }
