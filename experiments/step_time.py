"""The step time of each point of an experiment (experiments/*/experiment.py), one seed each, in
one process: the points in turn, the whole round repeated (--rounds) and each point's best round
kept, so that the ratios share the machine's load and a disturbed round does not count. A sweep's
own times are no step time: --vectorize trains the seeds together, beside other jobs.

    python experiments/step_time.py experiments/speedrun_switches [--steps=30] [--rounds=3]
    # writes experiments/speedrun_switches/step_time.json: each point's median ms per step and
    # its ratio to the first point (the baseline)
"""

import json
import os
import sys

from absl import app, flags

from llm_jax.bench import train as bench_train
from llm_jax.sweep.spec import load_experiment

flags.DEFINE_integer("steps", 30, "timed steps of each point (after 3 of warm-up)")
flags.DEFINE_integer("rounds", 3, "rounds over all the points; each point's best round counts")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one experiment folder")
  exp = load_experiment(argv[1])  # the sweep's own reading: configs resolved, points named
  configs = {}
  for run in exp.runs:  # each point's first seed (a step's time does not depend on it)
    configs.setdefault(run.point, run.config)
  rows = {}
  for round_ in range(FLAGS.rounds):
    for name, c in configs.items():
      c = c.copy_and_resolve_references()
      c.parallel = "none"
      r = bench_train.run(c, steps=FLAGS.steps, warmup=3, decode_tokens=0, eval_repeats=1)
      row = rows.setdefault(name, {"rounds_ms_per_step": [], "params": r["params"],
                                   "device": r["device"]})
      row["rounds_ms_per_step"].append(r["train_ms_per_step"]["median"])
      row["loadavg"] = r["loadavg"]
      print(round_, name, json.dumps(row), flush=True)
  first = next(iter(rows.values()))
  for row in rows.values():  # a round's median per step, the best round (the least disturbed)
    row["ms_per_step"] = min(row["rounds_ms_per_step"])
    row["over_base"] = round(row["ms_per_step"] / min(first["rounds_ms_per_step"]), 3)
  with open(os.path.join(exp.directory, "step_time.json"), "w", encoding="utf-8") as f:
    json.dump({"command": " ".join(["python"] + sys.argv), "steps": FLAGS.steps, "rows": rows},
              f, indent=1)


if __name__ == "__main__":
  app.run(main)
