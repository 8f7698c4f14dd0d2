"""An experiment's results: results.csv (one row per run), results.md (per point: mean ± std over
seeds) and two plots, val_loss.png (curves, seeds shaded) and final_val_loss.png (error bars).
Runs evaluated with train.harness_tasks add columns: each harness/<task>/<metric>, its last value.
An RL experiment's (`llm-jax rl` runs) report their rewards instead: final_reward (the mean reward
of the rollouts of the last REWARD_WINDOW RL steps, summary.json's reward_last_10), first_reward
(of the first REWARD_WINDOW), the KL and the response length (means over the last
REWARD_WINDOW steps) and the step's rollout and update seconds; its plots are reward.png (curves smoothed over REWARD_WINDOW steps) and
final_reward.png.

Everything is read back from the runs' workdirs (metrics.jsonl, summary.json), so a report can be
written at any time, for finished and unfinished runs alike.
"""

import csv
import math
import os

import numpy as np

from llm_jax.config import is_rl
from llm_jax.fileio import read_metrics
from llm_jax.sweep import spec
from llm_jax.training import workdir as workdir_lib

COLUMNS = ["point", "seed", "status", "step", "final_val_loss", "best_val_loss",
           "final_train_loss", "tokens_per_s", "params", "wall_s"]
RL_COLUMNS = ["point", "seed", "status", "step", "final_reward", "first_reward", "kl",
              "response_length", "rollout_s", "update_s", "params"]
# RL steps whose rewards are averaged: one step's rollouts are a noisy sample
REWARD_WINDOW = 10


def rl_figures(records) -> dict:
  """An RL run's figures from its metrics.jsonl records (RL steps: those with a 'reward')."""
  steps = [r for r in records if "reward" in r]
  mean = lambda key, rs: float(np.mean([r[key] for r in rs])) if rs else math.nan
  return {"final_reward": mean("reward", steps[-REWARD_WINDOW:]),
          "first_reward": mean("reward", steps[:REWARD_WINDOW]),
          "kl": mean("kl", steps[-REWARD_WINDOW:]),
          "response_length": mean("response_length", steps[-REWARD_WINDOW:]),
          "rollout_s": mean("rollout_s", steps[1:]),  # the first step's include compilation
          "update_s": mean("update_s", steps[1:]),
          "curve": [(r["step"], r["reward"]) for r in steps]}


def collect(exp) -> list[dict]:
  """One dict per run: COLUMNS (RL_COLUMNS), the point's override values and its val-loss (reward)
  curve."""
  rows = []
  for run in exp.runs:
    records = read_metrics(os.path.join(run.workdir, workdir_lib.METRICS_FILE))
    summary = workdir_lib.read_summary(run.workdir) or {}
    finished = spec.is_finished(run)
    if is_rl(run.config):
      rows.append({"point": run.point, "seed": run.seed,
                   "status": "done" if finished else ("partial" if records else "not run"),
                   "step": max((r["step"] for r in records), default=0),
                   "params": summary.get("params", math.nan), "overrides": run.overrides,
                   **rl_figures(records)})
      continue
    evals = [r for r in records if "val_loss" in r]
    rows.append({
        "point": run.point, "seed": run.seed,
        "status": "done" if finished else ("partial" if records else "not run"),
        "step": max((r["step"] for r in records), default=0),
        "final_val_loss": evals[-1]["val_loss"] if evals else math.nan,
        "best_val_loss": min((r["val_loss"] for r in evals), default=math.nan),
        "final_train_loss": evals[-1]["train_loss"] if evals else math.nan,
        "tokens_per_s": summary.get("tokens_per_s") or math.nan,
        "params": summary.get("params", math.nan),
        "wall_s": summary.get("wall_s", math.nan),
        "overrides": run.overrides,
        "curve": [(r["step"], r["val_loss"]) for r in evals],
        **{k: v for r in records for k, v in r.items() if k.startswith("harness/")}})  # the last
  return rows


def harness_columns(rows) -> list[str]:
  """The harness/<task>/<metric> columns any run has, sorted."""
  return sorted({k for r in rows for k in r if k.startswith("harness/")})


def aggregate(rows) -> list[dict]:
  """Per point, in declaration order: mean and std over its seeds' runs that have results."""
  points = list(dict.fromkeys(r["point"] for r in rows))
  rl = bool(rows) and "final_reward" in rows[0]
  final = "final_reward" if rl else "final_val_loss"
  keys = (RL_COLUMNS[4:] if rl else
          ("final_val_loss", "best_val_loss", "tokens_per_s", "params", "wall_s",
           *harness_columns(rows)))
  out = []
  for point in points:
    runs = [r for r in rows if r["point"] == point and not math.isnan(r[final])]
    stats = {"point": point, "seeds": len(runs),
             "done": sum(r["status"] == "done" for r in runs)}
    for key in keys:
      values = np.array([r.get(key, math.nan) for r in runs], float)
      stats[key] = float(values.mean()) if len(values) else math.nan
      stats[key + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out.append(stats)
  return out


def markdown_table(points) -> str:
  def pm(p, key, fmt):
    if math.isnan(p[key]):
      return "-"
    return f"{p[key]:{fmt}} ± {p[key + '_std']:{fmt}}" if p["seeds"] > 1 else f"{p[key]:{fmt}}"

  if points and "final_reward" in points[0]:  # an RL experiment
    lines = [f"| point | seeds | final reward (last {REWARD_WINDOW} steps) | first reward | KL | "
             "response length | rollout s/step | update s/step | params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
      params = "-" if math.isnan(p["params"]) else f"{p['params'] / 1e6:.2f}M"
      lines.append(f"| {p['point']} | {p['done']}/{p['seeds']} | {pm(p, 'final_reward', '.3f')} | "
                   f"{pm(p, 'first_reward', '.3f')} | {pm(p, 'kl', '.4f')} | "
                   f"{pm(p, 'response_length', '.2f')} | {pm(p, 'rollout_s', '.3f')} | "
                   f"{pm(p, 'update_s', '.3f')} | {params} |")
    return "\n".join(lines) + "\n"
  lines = ["| point | seeds | final val loss | best val loss | tokens/s | params | wall s |",
           "|---|---|---|---|---|---|---|"]
  for p in points:
    params = "-" if math.isnan(p["params"]) else f"{p['params'] / 1e6:.2f}M"
    lines.append(f"| {p['point']} | {p['done']}/{p['seeds']} | {pm(p, 'final_val_loss', '.4f')} | "
                 f"{pm(p, 'best_val_loss', '.4f')} | {pm(p, 'tokens_per_s', ',.0f')} | {params} | "
                 f"{pm(p, 'wall_s', '.0f')} |")
  harness = [k for k in points[0] if k.startswith("harness/") and not k.endswith("_std")] if (
      points) else []
  if harness:  # lm-eval's metrics of train.harness_tasks, at each run's last harness evaluation
    lines += ["", "| point | " + " | ".join(k.removeprefix("harness/") for k in harness) + " |",
              "|---|" + "---|" * len(harness)]
    lines += [f"| {p['point']} | " + " | ".join(pm(p, k, ".4f") for k in harness) + " |"
              for p in points]
  return "\n".join(lines) + "\n"


def smooth(v_SN, window: int):
  """The mean over the last `window` points at each point (fewer at the start), along axis 1."""
  c = np.cumsum(np.pad(v_SN, ((0, 0), (1, 0))), axis=1)
  i = np.arange(1, v_SN.shape[1] + 1)
  lo = np.maximum(i - window, 0)
  return (c[:, i] - c[:, lo]) / (i - lo)


def plot(rows, points, directory) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rl = "final_reward" in points[0] if points else False
  name, final = ("reward", "final_reward") if rl else ("val_loss", "final_val_loss")
  curves_path = os.path.join(directory, f"{name}.png")
  fig, ax = plt.subplots(figsize=(8, 5))
  for p in points:
    curves = [r["curve"] for r in rows if r["point"] == p["point"] and r["curve"]]
    if not curves:
      continue
    n = min(len(c) for c in curves)  # the steps every seed has reached
    steps = np.array([s for s, _ in curves[0][:n]])
    values = np.array([[v for _, v in c[:n]] for c in curves])  # (seeds, evals)
    if rl:  # one step's reward is a small sample
      values = smooth(values, REWARD_WINDOW)
    mean, std = values.mean(0), values.std(0)
    line, = ax.plot(steps, mean, label=p["point"])
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  if rl:
    ax.set(xlabel="step", ylabel=f"mean reward (over the last {REWARD_WINDOW} steps)",
           title="reward of the rollouts (mean ± std over seeds)")
  else:
    ax.set(xlabel="step", ylabel="val loss", title="val loss (mean ± std over seeds)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 3.5))
  if ax.lines:
    ax.legend(fontsize="small")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(curves_path, dpi=100)
  plt.close(fig)

  final_path = os.path.join(directory, f"{final}.png")
  fig, ax = plt.subplots(figsize=(8, 1.2 + 0.4 * len(points)))
  y = np.arange(len(points))
  ax.errorbar([p[final] for p in points], y, xerr=[p[final + "_std"] for p in points], fmt="o",
              capsize=4)
  ax.set_yticks(y, [p["point"] for p in points])
  ax.invert_yaxis()
  ax.set(xlabel=(f"final reward, the last {REWARD_WINDOW} steps'" if rl else "final val loss") +
         " (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(final_path, dpi=100)
  plt.close(fig)
  return [curves_path, final_path]


def write_report(exp) -> list[str]:
  """Writes results.csv, results.md and the plots into the experiment folder; returns the paths."""
  rows = collect(exp)
  points = aggregate(rows)
  fields = list(dict.fromkeys(f for r in rows for f in r["overrides"]))
  columns = RL_COLUMNS if spec.is_rl_experiment(exp) else COLUMNS + harness_columns(rows)
  csv_path = os.path.join(exp.directory, "results.csv")
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns + fields)
    for r in rows:
      writer.writerow([r.get(c, math.nan) for c in columns] +
                      [r["overrides"].get(k, "") for k in fields])
  md_path = os.path.join(exp.directory, "results.md")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown_table(points))
  return [csv_path, md_path] + plot(rows, points, exp.directory)
