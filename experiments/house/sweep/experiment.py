"""Two runs of experiments/house/tiny.py that differ in learning rate: trained together
by `llm-jax sweep --vectorize` (bitwise.sh)."""


def get_experiment():
  return {
      "base": "../tiny.py",
      "points": [{"train.learning_rate": lr} for lr in (1e-3, 3e-3)],
      "seeds": [0],
  }
