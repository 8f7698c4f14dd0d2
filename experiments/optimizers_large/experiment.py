"""experiments/optimizers at a larger shape (base.py: 6 layers, 384 wide, 10.7M parameters,
context 128, batches of 8, 120 steps on 2 CPU cores): each optimizer at three peak learning rates
x 3 seeds (AdamW at four), and WSD against cosine for AdamW at 1e-3.

Each grid is the small shape's (../optimizers/experiment.py says why each sits where it does),
moved to where the wider model's best rate is: AdamW ran first at the small shape's 1e-3, 3e-3,
1e-2 and was best at the lowest, 1e-3, so 3e-4 was added to its grid, and Lion's and Adafactor's
grids move down 3x with it; Muon's updates are orthogonalized and scaled to AdamW's RMS, and its
best small-shape rate was the top of its grid (1e-2), so its grid is centred there.

  llm-jax sweep experiments/optimizers_large --vectorize
  llm-jax sweep experiments/optimizers_large --report
"""

import os

from llm_jax.fileio import load_python_file

_SMALL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "optimizers",
                      "experiment.py")
small = load_python_file(_SMALL, _SMALL, "experiments/optimizers/experiment.py is missing")

GRIDS = {
    "adamw": [3e-4, 1e-3, 3e-3, 1e-2],
    "lion": [1e-4, 3e-4, 1e-3],
    "adafactor": [3e-4, 1e-3, 3e-3],
    "muon": [3e-3, 1e-2, 3e-2],
}
# WSD at AdamW's best rate of its first three, against the cosine point at that rate
WSD_RATE = 1e-3


def get_experiment():
  return {
      "base": "base.py",
      "points": ([small.point(optimizer, lr) for optimizer, rates in GRIDS.items()
                  for lr in rates] + [small.point("adamw", WSD_RATE, "wsd")]),
      "seeds": [0, 1, 2],
  }
