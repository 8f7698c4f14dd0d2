"""Learned vs sinusoidal positional embeddings (seed document 002 uses sinusoidal ones)."""


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [{"model.pos": "learned"}, {"model.pos": "sinusoidal"}],
      "seeds": [0, 1, 2],
  }
