"""experiments/optimizers at a larger shape (base.py: 6 layers, 384 wide, context 256, batch 64,
2000 steps): each optimizer's same three learning rates x 3 seeds, and WSD against cosine for
AdamW at each of its rates. Sized for a GPU; on 2 CPU cores one run would take hours.

  llm-jax sweep experiments/optimizers_large --vectorize
"""

import os

from llm_jax.fileio import load_python_file

_SMALL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "optimizers",
                      "experiment.py")
small = load_python_file(_SMALL, _SMALL, "experiments/optimizers/experiment.py is missing")


def get_experiment():
  return {
      "base": "base.py",
      "points": ([small.point(optimizer, lr) for optimizer, rates in small.GRIDS.items()
                  for lr in rates] +
                 [small.point("adamw", lr, "wsd") for lr in small.GRIDS["adamw"]]),
      "seeds": [0, 1, 2],
  }
