"""The vectorized sweep's speed-up: K seeds of one config, trained one after another (K
processes), two at a time (--jobs=2), and together in one vmapped program (--vectorize).

    python -m llm_jax.bench.sweep [--config=experiments/ablation_base.py] [--k=3] [--steps=200]

Each mode runs a real sweep (`run_sweep`) of the same experiment into a fresh folder, so the wall
time counts everything a user waits for: process start, data, compilation, training, evaluation
and checkpoints. Prints one JSON object: per mode the wall time, the median ms per training step of
one unit (from metrics.jsonl) and the speed-up over one-after-another.
"""

import contextlib
import io
import json
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

from llm_jax.fileio import METRICS_FILE, read_metrics
from llm_jax.sweep import runner, spec

flags.DEFINE_string("config", "experiments/ablation_base.py", "base config of the K runs")
flags.DEFINE_integer("k", 3, "runs (seeds 0..K-1)")
flags.DEFINE_integer("steps", 200, "training steps per run")
FLAGS = flags.FLAGS

MODES = {"sequential": dict(jobs=1), "jobs2": dict(jobs=2),
         "vectorized": dict(jobs=1, vectorize=True)}


def write_experiment(folder, base, k, steps):
  os.makedirs(folder)
  overrides = {"train.max_steps": steps, "train.eval_interval": steps,
               "train.checkpoint_every": steps, "train.log_interval": 10}
  with open(os.path.join(folder, spec.EXPERIMENT_FILE), "w") as f:
    f.write(f"def get_experiment():\n  return {{'base': {os.path.abspath(base)!r}, "
            f"'overrides': {overrides!r}, 'seeds': {list(range(k))!r}}}\n")


def steady_ms(workdir):
  records = read_metrics(os.path.join(workdir, METRICS_FILE))
  ms = [r["ms_per_step"] for r in records if "ms_per_step" in r]
  return statistics.median(ms[1:])  # the first interval holds the compilation


def main(argv):
  del argv
  out = {"config": FLAGS.config, "k": FLAGS.k, "steps": FLAGS.steps, "cpus": os.cpu_count()}
  root = tempfile.mkdtemp(prefix="llm_jax_bench_sweep_")
  try:
    for mode, kwargs in MODES.items():
      # a folder of its own for each mode: beside each other, finished runs would be copied
      folder = os.path.join(root, mode, "experiment")
      write_experiment(folder, FLAGS.config, FLAGS.k, FLAGS.steps)
      t0 = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):
        runner.run_sweep(folder, **kwargs)
      wall = time.perf_counter() - t0
      runs = spec.load_experiment(folder).runs
      out[mode] = {"wall_s": round(wall, 1), "ms_per_step": round(steady_ms(runs[0].workdir), 1)}
      print(json.dumps({mode: out[mode]}), flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  for mode in MODES:
    out[mode]["speedup_vs_sequential"] = round(out["sequential"]["wall_s"] / out[mode]["wall_s"], 2)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
