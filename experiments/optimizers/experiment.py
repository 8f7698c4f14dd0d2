"""AdamW, Lion, Adafactor and Muon, each at its own best learning rate, and WSD against cosine, on
the ablation base (the baby GPT on Shakespeare's plays), with short runs.

Every optimizer gets three peak learning rates a factor of ~3 apart (min_lr a tenth of each),
centred where its literature puts it relative to AdamW's 1e-3: Lion's updates are signs (unit
size per element), so its grid sits 3-10x lower (Chen et al. 2023); Adafactor here has no
parameter scaling and clips its updates to RMS 1, so its grid is AdamW's; Muon scales its
orthogonalized updates to AdamW's RMS (train.muon_consistent_rms=0.2, Liu et al. 2025), so its
grid is AdamW's too. Weight decay is the base's 0.1 for all (decoupled, times the learning rate).
The schedule is the base's cosine with 10 steps of warmup; the WSD point reruns AdamW at its best
rate of the grid with train.schedule='wsd' (the last 20% of the steps decay linearly to min_lr),
at equal steps.

The runs are 80 steps (the other ablations' are 600), so that the 39 runs fit half an hour on 2
CPU cores shared with other work (README: why): `llm-jax sweep experiments/optimizers --vectorize
--jobs=5` trains each group of runs that differ only in rate and seed as one vmapped program, the
five groups at once.
"""

GRIDS = {
    "adamw": [1e-3, 3e-3, 1e-2],
    "lion": [1e-4, 3e-4, 1e-3],
    "adafactor": [1e-3, 3e-3, 1e-2],
    "muon": [1e-3, 3e-3, 1e-2],
}


# AdamW's best rate of its grid in a first 200-step pass (on every seed; README), where WSD
# reruns it
WSD_RATE = 3e-3


def point(optimizer, lr, schedule="cosine"):
  return {"train.optimizer": optimizer, "train.schedule": schedule, "train.learning_rate": lr,
          "train.min_lr": round(lr / 10, 8)}


def points():
  return ([point(optimizer, lr) for optimizer, rates in GRIDS.items() for lr in rates] +
          [point("adamw", WSD_RATE, "wsd")])


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "overrides": {"train.max_steps": 80, "train.warmup_steps": 10,
                    "train.eval_interval": 20, "train.eval_iters": 10, "train.log_interval": 5,
                    "train.checkpoint_every": 80},
      "points": points(),
      "seeds": [0, 1, 2],
  }
