"""ReLU vs GELU in the feed-forward net (seed documents 001/002 use ReLU, 004 GELU)."""


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [{"model.activation": "relu"}, {"model.activation": "gelu"}],
      "seeds": [0, 1, 2],
  }
