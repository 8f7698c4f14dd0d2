"""Reward curves and the table of experiments/rl/README.md from the runs of run.sh.

  python experiments/rl/plot.py runs/rl
"""

import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if "reward" in r]


def main(root):
  fig, ax = plt.subplots(figsize=(7, 4))
  rows = []
  for norm, color in (("sequence", "C0"), ("token", "C1")):
    for seed in (0, 1, 2):
      w = os.path.join(root, f"{norm}_s{seed}")
      if not os.path.isdir(w):
        continue
      rs = records(w)
      reward = np.array([r["reward"] for r in rs])
      smooth = np.convolve(reward, np.ones(10) / 10, mode="valid")
      ax.plot(np.arange(len(smooth)) + 10, smooth, color=color, alpha=0.8,
              label=f"loss_norm={norm}" if seed == 0 else None)
      rows.append((norm, seed, reward[:10].mean(), reward[-10:].mean(),
                   np.mean([r["rollout_s"] for r in rs[1:]]),
                   np.mean([r["update_s"] for r in rs[1:]]),
                   np.mean([r["rollout_tokens_per_s"] for r in rs[1:]]),
                   np.mean([r["update_tokens_per_s"] for r in rs[1:]]),
                   max(r["ratio_mismatch"] for r in rs)))
  ax.set_xlabel("RL step")
  ax.set_ylabel("mean reward (10-step moving average)")
  ax.set_title("GRPO on arithmetic (configs/rl_arithmetic.py), 3 seeds")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "reward.png"), dpi=100)
  print("| loss_norm | seed | reward, steps 1-10 | reward, last 10 | rollout s | update s | "
        "sampled tokens/s | update tokens/s | max ratio_mismatch |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.0f} | "
          f"{r[7]:.0f} | {r[8]:.1e} |")
  for norm in ("sequence", "token"):
    first = [r[2] for r in rows if r[0] == norm]
    last = [r[3] for r in rows if r[0] == norm]
    if first:
      print(f"loss_norm={norm}: reward {np.mean(first):.3f} +- {np.std(first):.3f} (steps 1-10) "
            f"-> {np.mean(last):.3f} +- {np.std(last):.3f} (last 10), {len(first)} seeds")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/rl")
