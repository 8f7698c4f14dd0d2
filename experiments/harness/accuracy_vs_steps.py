"""The in-training evaluation's figure: a local multiple-choice accuracy vs training steps, for two
model sizes; prints JSON and draws accuracy_vs_steps.png.

    python experiments/harness/accuracy_vs_steps.py --out=/tmp/harness_curve [--steps=600]

The task (plays_next, written into --out): 300 items in HellaSwag's form from the plays' validation
split, a context of 30-50 characters and four endings of 8-16: its true continuation, and three
copies of it with two neighbouring characters swapped, each at another place (chance is 0.25; a
model that knows only character frequencies is at chance, one that knows what follows what is
above). Two character GPTs on the plays (the training split)
with train.harness_tasks=plays_next: a 1-layer, 32-wide one and the baby (4 layers, 128 wide),
context 64, evaluated with lm-eval every --every steps (all 300 items; acc and acc_norm).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import write_plays_task  # noqa: E402

SIZES = {"1 layer, 32 wide": dict(n_layer=1, n_head=2, n_embd=32),
         "4 layers, 128 wide (baby)": dict(n_layer=4, n_head=4, n_embd=128)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--every", type=int, default=100)
  a = p.parse_args()
  out = os.path.abspath(a.out)
  os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  from llm_jax.config import default_config
  from llm_jax.fileio import read_metrics
  from llm_jax.training.loop import train_and_evaluate
  tasks = os.path.join(out, "tasks")
  write_plays_task(tasks, 300, seed=1, name="plays_next", ctx=(30, 50), end=(8, 16),
                   swapped=True)
  curves = {}
  for k, (label, model) in enumerate(SIZES.items()):
    c = default_config()
    c.model.update(block_size=64, dropout=0.0, **model)
    c.train.update(batch_size=12, max_steps=a.steps, eval_interval=a.every, eval_iters=5,
                   checkpoint_every=a.steps, sample_tokens=0, warmup_steps=50,
                   harness_tasks="plays_next", harness_include_path=tasks)
    workdir = os.path.join(out, f"run{k}")
    train_and_evaluate(c, workdir)
    records = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
               if "harness/plays_next/acc" in r]
    curves[label] = [(r["step"], r["harness/plays_next/acc"], r["harness/plays_next/acc_norm"],
                      r["val_loss"]) for r in records]
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, pts in curves.items():
    ax.plot([s for s, *_ in pts], [acc for _, acc, *_ in pts], marker="o", label=label)
  ax.axhline(0.25, color="gray", ls="--", lw=1, label="chance")
  ax.set(xlabel="training step", ylabel="acc (lm-eval, 300 items)",
         title="plays_next: the true ending, or it with two characters swapped")
  ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accuracy_vs_steps.png")
  fig.savefig(path, dpi=100)
  print(json.dumps({"curves": {k: [{"step": s, "acc": a, "acc_norm": n, "val_loss": v}
                                   for s, a, n, v in pts] for k, pts in curves.items()},
                    "figure": path, "cpu": os.cpu_count()}))


if __name__ == "__main__":
  main()
