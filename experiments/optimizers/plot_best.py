"""best.png of an optimizers experiment: each optimizer's val loss at its best learning rate (the
lowest final val loss, mean over seeds; ± std shaded), and AdamW's WSD against its cosine at the
same rate, read from the experiment's runs/ after the sweep; prints the table of those curves
(mean ± std over seeds at each evaluation) as markdown.

  python experiments/optimizers/plot_best.py [experiments/optimizers_large]
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.dirname(
    os.path.abspath(__file__))


def points():
  """{(optimizer, schedule, lr): the folder} of every point that has runs."""
  out = {}
  for name in os.listdir(os.path.join(HERE, "runs")):
    fields = dict(kv.split("=") for kv in name.split(","))
    out[(fields["optimizer"], fields["schedule"], float(fields["learning_rate"]))] = name
  return out


def curve(point):
  """(eval steps, mean, std over seeds) of the val loss, or None while a seed is unfinished."""
  runs = []
  for seed in range(3):
    path = os.path.join(HERE, "runs", point, f"seed{seed}", "metrics.jsonl")
    if not os.path.isfile(os.path.join(HERE, "runs", point, f"seed{seed}", "summary.json")):
      return None
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    runs.append({r["step"]: r["val_loss"] for r in records if "val_loss" in r})
  steps = sorted(set.intersection(*(set(r) for r in runs)) - {0})
  values = np.array([[r[s] for s in steps] for r in runs])
  return steps, values.mean(0), values.std(0, ddof=1), values[:, -1]


curves = {k: c for k, name in points().items() if (c := curve(name)) is not None}
best = {}
for (optimizer, schedule, lr), c in curves.items():
  if schedule == "cosine" and (optimizer not in best or c[1][-1] < curves[best[optimizer]][1][-1]):
    best[optimizer] = (optimizer, schedule, lr)
wsd = [k for k in curves if k[1] == "wsd" and (k[0], "cosine", k[2]) in curves]

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, lines in ((axes[0], list(best.values())),
                  (axes[1], [(o, s, lr) for o, _, lr in wsd for s in ("cosine", "wsd")])):
  for key in lines:
    steps, mean, std, _ = curves[key]
    ax.plot(steps, mean, marker="o", label=f"{key[0]} {key[1]} lr={key[2]:g}")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
  ax.set_xlabel("step")
  ax.set_ylabel("val loss")
  ax.grid(alpha=0.3)
  ax.legend()
axes[0].set_title("each optimizer at its best rate (3 seeds)")
axes[1].set_title("AdamW: WSD vs cosine (3 seeds)")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "best.png"), dpi=100)
print(os.path.join(HERE, "best.png"))

for key in list(best.values()) + [(o, s, lr) for o, _, lr in wsd for s in ("cosine", "wsd")]:
  steps, mean, std, last = curves[key]
  print(f"| {key[0]} {key[1]} ({key[2]:g}) | " +
        " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, std)) +
        " | " + " / ".join(f"{v:.3f}" for v in last) + " |")
print("steps:", steps)
