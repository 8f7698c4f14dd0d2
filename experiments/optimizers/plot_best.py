"""best.png: each optimizer's val loss at its best learning rate (mean over seeds, ± std shaded),
and AdamW's WSD against its cosine, read from runs/ after the sweep:

  python experiments/optimizers/plot_best.py
"""

import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BEST = {"adamw": 3e-3, "lion": 1e-3, "adafactor": 1e-3, "muon": 1e-2}


def curve(optimizer, lr, schedule="cosine"):
  point = (f"optimizer={optimizer},schedule={schedule},learning_rate={lr},"
           f"min_lr={round(lr / 10, 8)}")
  runs = []
  for seed in range(3):
    with open(os.path.join(HERE, "runs", point, f"seed{seed}", "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
    runs.append({r["step"]: r["val_loss"] for r in records if "val_loss" in r})
  steps = sorted(set.intersection(*(set(r) for r in runs)) - {0})
  values = np.array([[r[s] for s in steps] for r in runs])
  return steps, values.mean(0), values.std(0, ddof=1)


fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, lines in ((axes[0], [(o, lr, "cosine") for o, lr in BEST.items()]),
                  (axes[1], [("adamw", 3e-3, "cosine"), ("adamw", 3e-3, "wsd")])):
  for optimizer, lr, schedule in lines:
    steps, mean, std = curve(optimizer, lr, schedule)
    ax.plot(steps, mean, marker="o", label=f"{optimizer} {schedule} lr={lr:g}")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel("step")
  ax.set_ylabel("val loss")
  ax.grid(alpha=0.3)
  ax.legend()
axes[0].set_title("each optimizer at its best rate (3 seeds)")
axes[1].set_title("AdamW 3e-3: WSD vs cosine (3 seeds)")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "best.png"), dpi=100)
print(os.path.join(HERE, "best.png"))
