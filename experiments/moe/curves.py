"""The load-balance curves and the table of experiments/moe/README.md, from the runs'
metrics.jsonl and step_time.json (experiments/step_time.py, run first):

    python experiments/step_time.py experiments/moe
    python experiments/moe/curves.py          # prints the table, writes load_balance.png

moe_load_max is the most loaded expert's share of the routed tokens over the uniform share
(1.0 = perfectly balanced, 8.0 = every token to one expert) in the worst of the 4 layers, on
the training batches, averaged over the 50 steps between logs; then the mean over the 3 seeds.
"""

import json
import os
import pathlib
import statistics

from llm_jax.fileio import read_metrics

HERE = pathlib.Path(os.path.dirname(os.path.abspath(__file__)))
LABELS = {"base": "dense",
          "moe_experts=8,moe_top_k=2,moe_dispatch=blocks": "MoE, no balancing",
          "moe_experts=8,moe_top_k=2,moe_dispatch=blocks,moe_aux_loss=0.01": "MoE, aux loss 0.01",
          "moe_experts=8,moe_top_k=2,moe_dispatch=blocks,moe_bias_rate=0.001":
              "MoE, bias balancing 0.001",
          "moe_experts=8,moe_top_k=2,moe_dispatch=blocks,moe_aux_loss=0.01,moe_shared_experts=1":
              "MoE, aux loss + 1 shared expert"}


def series(run, key):
  return [(r["step"], r[key]) for r in read_metrics(run / "metrics.jsonl") if key in r]


def ms(s):
  return f"{statistics.mean(s):.4f} ± {statistics.stdev(s):.4f}"


def main():
  times = json.load(open(HERE / "step_time.json"))["rows"]
  runs = {p: sorted((HERE / "runs" / p).glob("seed*")) for p in LABELS}
  base = {r.name: series(r, "val_loss")[-1][1] for r in runs["base"]}
  print("| point | val loss, step 600 | Δ vs dense (paired) | load max, last 100 steps | "
        "step time / dense |")
  print("|---|---|---|---|---|")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for p, label in LABELS.items():
    end = {r.name: series(r, "val_loss")[-1][1] for r in runs[p]}
    delta = statistics.mean(end[s] - base[s] for s in end)
    load = "-"
    if p != "base":
      curves = [series(r, "moe_load_max") for r in runs[p]]
      steps = [s for s, _ in curves[0]]
      mean = [statistics.mean(c[i][1] for c in curves) for i in range(len(steps))]
      ax.plot(steps, mean, label=label)
      load = f"{statistics.mean(v for s, v in zip(steps, mean) if s > 500):.2f}"
    print(f"| {label} | {ms(list(end.values()))} | {delta:+.4f} | {load} | "
          f"{times[p]['over_base']:.2f}x |")
  ax.axhline(1.0, color="gray", lw=0.8, ls=":")
  ax.set_xlabel("step")
  ax.set_ylabel("most loaded expert / uniform share (worst layer)")
  ax.set_title("experiments/moe: load balance, mean of 3 seeds")
  ax.legend()
  fig.tight_layout()
  fig.savefig(HERE / "load_balance.png", dpi=120)


if __name__ == "__main__":
  main()
