"""Learned vs sinusoidal positional embeddings (seed document 002 uses sinusoidal ones).

The third point scales the token embeddings by sqrt(n_embd) before the sinusoids are added, as
Vaswani et al. do: with nanoGPT's init (token embeddings of std 0.02) the unit-amplitude
sinusoids are 50 times larger than the tokens they are added to.
"""


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [{"model.pos": "learned"}, {"model.pos": "sinusoidal"},
                 {"model.pos": "sinusoidal", "model.scale_embeddings": True}],
      "seeds": [0, 1, 2],
  }
