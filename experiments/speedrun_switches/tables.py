"""The tables of experiments/speedrun_switches/README.md, from the runs' metrics.jsonl and
each folder's step_time.json (experiments/step_time.py, run first):

    python experiments/step_time.py experiments/speedrun_switches
    python experiments/step_time.py experiments/speedrun_switches/rope_split
    python experiments/speedrun_switches/tables.py

- val loss at equal steps: each run's last evaluation (step 600), mean ± std over the seeds, and
  its paired difference from the baseline of the same seed;
- val loss at equal wall-clock: the baseline's 600 steps take T = 600 x its step time; a point
  whose step is slower gets T / its step time steps, and its val loss there is read off its own
  curve (linear between evaluations). That curve's schedule was set for 600 steps, so this is not
  a run re-trained with a shorter schedule (which would end lower): it bounds the slower points
  from above. A faster point is read at step 600 (it would have had steps left over).
"""

import json
import os
import pathlib
import statistics

from llm_jax.sweep.report import collect
from llm_jax.sweep.spec import load_experiment

HERE = pathlib.Path(os.path.dirname(os.path.abspath(__file__)))


def at(c, step):
  for (s0, v0), (s1, v1) in zip(c, c[1:]):
    if s0 <= step <= s1:
      return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
  return c[-1][1]


def ms(s):
  return f"{statistics.mean(s):.4f} ± {statistics.stdev(s):.4f}"


def label(point):
  """The combined points by what they hold (their folder names list all eight switches)."""
  if point.count("=") < 8:
    return point
  return "all eight switches" + (", pos=rope" if "pos=rope" in point else "")


def table(folder):
  times = json.load(open(folder / "step_time.json"))["rows"]
  points = list(times)  # the experiment's order (step_time.py ran its points in turn)
  curves = {}  # point -> seed -> the val-loss curve, as the sweep's report reads it
  for row in collect(load_experiment(str(folder))):
    curves.setdefault(row["point"], {})[row["seed"]] = row["curve"]
  base = curves["base"]
  rows = ["| point | val loss, step 600 | Δ vs base (paired, ± std) | step time / base | "
          "val loss at base's wall-clock | Δ vs base |", "|---|---|---|---|---|---|"]
  for p in points:
    ratio = times[p]["over_base"]
    steps = min(600, 600 / ratio)
    end = [c[-1][1] for c in curves[p].values()]
    d_end = [curves[p][s][-1][1] - base[s][-1][1] for s in curves[p]]
    wall = [at(c, steps) for c in curves[p].values()]
    d_wall = [at(curves[p][s], steps) - base[s][-1][1] for s in curves[p]]
    rows.append(f"| {label(p)} | {ms(end)} | {ms(d_end)} | {ratio:.2f}x | "
                f"{ms(wall)} (step {steps:.0f}) | {ms(d_wall)} |")
  return "\n".join(rows)


def main():
  print("## experiments/speedrun_switches\n")
  print(table(HERE))
  print("\n## experiments/speedrun_switches/rope_split\n")
  print(table(HERE / "rope_split"))


if __name__ == "__main__":
  main()
