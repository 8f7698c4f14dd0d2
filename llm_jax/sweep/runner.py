"""Runs an experiment's runs as a bounded pool of training processes, then reports.

Each unit of work is one process: a single run (`train_and_evaluate`, or `rl_train` for an RL
experiment's: worker.train_run) or, with vectorize, the runs of a group that differ only in
vmappable fields (seeds, learning rates, weight decay, dropout), trained together by
`vectorized.train_runs` (not RL runs). At most `jobs` units run at once, so a small machine is not
oversubscribed. Finished runs (summary.json at the last step) are skipped; interrupted ones resume
from their checkpoints, because each unit simply trains its workdirs again. A run whose resolved
config already finished in a sibling experiment (the baseline most ablations share) is copied
from there, not trained again. A unit's output goes to train.log in its (first) workdir; one
progress line per change goes to the terminal.
"""

import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

from llm_jax.errors import UserError
from llm_jax.sweep import report, worker
from llm_jax.sweep.spec import is_finished, is_rl_experiment, load_experiment
from llm_jax.training.progress import duration
from llm_jax.training.vectorized import shared_key

LOG_FILE = "train.log"


def make_units(runs, vectorize: bool) -> list[list]:
  """Lists of runs, each list one process: singletons, or groups sharing all shapes."""
  if not vectorize:
    return [[r] for r in runs]
  groups = {}
  for r in runs:
    groups.setdefault(shared_key(r.config), []).append(r)
  return list(groups.values())


def find_twin(run, experiments_root: str) -> str | None:
  """A finished run of the same resolved config in another experiment under experiments_root:
  the baseline point most ablations share trains once."""
  config = json.loads(json.dumps(run.config.to_dict(), sort_keys=True))
  for path in sorted(glob.glob(os.path.join(glob.escape(experiments_root), "*", "runs", "*", "*",
                                            worker.RUN_FILE))):
    twin = os.path.dirname(path)
    if os.path.abspath(twin) == os.path.abspath(run.workdir):
      continue
    try:
      found = worker.read_run(twin).to_dict()
      if config["model"]["dtype"] == "auto":  # the twin keeps the dtype 'auto' chose (peaks.py)
        found["model"]["dtype"] = "auto"
      if found == config and is_finished(run._replace(workdir=twin)):
        return twin
    except (OSError, ValueError, UserError):
      continue
  return None


def _child_env(jobs: int) -> dict:
  env = dict(os.environ)
  if jobs > 1 and "XLA_FLAGS" not in env:
    # several processes share the cores: each XLA CPU client runs its ops on one thread
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
  return env


def runs_to_train(exp) -> list:
  """The experiment's unfinished runs, once those whose resolved config finished in a sibling
  experiment are copied from there."""
  todo = [r for r in exp.runs if not is_finished(r)]
  for r in todo:
    twin = None if os.path.exists(r.workdir) else find_twin(r, os.path.dirname(exp.directory))
    if twin:  # the same config finished elsewhere: its workdir is this run's result
      shutil.copytree(twin, r.workdir)
      print(f"llm-jax sweep {exp.name}: copied {r.point}/seed{r.seed} from "
            f"{os.path.relpath(twin, exp.directory)} (the same config, finished)", flush=True)
  return [r for r in todo if not is_finished(r)]


def run_sweep(directory: str, jobs: int = 1, vectorize: bool = False) -> list[str]:
  """Trains every unfinished run of the experiment in `directory`, then writes its report;
  returns the report's files."""
  if jobs < 1:
    raise UserError(f"--jobs={jobs} is invalid: use 1 or more processes")
  exp = load_experiment(directory)  # every run checked before any starts
  if vectorize and is_rl_experiment(exp):
    raise UserError(f"--vectorize: {exp.name} is an RL experiment (its config names rl.task), "
                    "whose runs train one per process: drop --vectorize (--jobs=N runs N at once)")
  for r in exp.runs:
    if r.nodes * r.tasks_per_node > 1:
      raise UserError(f"point {r.point} trains each run over {r.nodes * r.tasks_per_node} "
                      "processes (slurm.nodes x slurm.tasks_per_node): use --launcher=submitit")
  todo = runs_to_train(exp)
  for r in todo:  # each config.json, all checked against their saved runs before any starts
    worker.write_run(r.workdir, r.config)
  skipped = len(exp.runs) - len(todo)
  units = make_units(todo, vectorize)
  total = len(exp.runs)
  print(f"llm-jax sweep {exp.name}: {total} runs ({len(exp.points)} points x "
        f"{total // len(exp.points)} seeds), {skipped} finished already, {len(todo)} to run as "
        f"{len(units)} process(es), {jobs} at a time", flush=True)

  env, running, failed, t0 = _child_env(jobs), {}, [], time.perf_counter()
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu0 = children.ru_utime + children.ru_stime
  done = {(r.point, r.seed) for r in exp.runs if r not in todo}
  by_point = {}
  for r in exp.runs:
    by_point.setdefault(r.point, []).append((r.point, r.seed))

  def progress():
    active = {(r.point, r.seed) for unit in running.values() for r in unit}
    p_done = sum(all(k in done for k in keys) for keys in by_point.values())
    p_running = sum(any(k in active for k in keys) for keys in by_point.values())
    left = total - len(done) - len(active) - len(failed)
    print(f"llm-jax sweep {exp.name}: points {p_done}/{len(by_point)} done, {p_running} running, "
          f"{len(by_point) - p_done - p_running} left; runs {len(done)}/{total} done, "
          f"{len(active)} running, {left} left" + (f", {len(failed)} failed" if failed else "") +
          f" [{duration(time.perf_counter() - t0)}]", flush=True)

  try:
    while units or running:
      while units and len(running) < jobs:
        unit = units.pop(0)
        log = open(os.path.join(unit[0].workdir, LOG_FILE), "a", encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "llm_jax.sweep.worker",
                                 *(r.workdir for r in unit)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        running[proc] = unit
        progress()
      time.sleep(0.5)
      for proc in [p for p in running if p.poll() is not None]:
        unit = running.pop(proc)
        if proc.returncode == 0:
          done.update((r.point, r.seed) for r in unit)
        else:
          failed.extend(unit)
          print(f"llm-jax sweep {exp.name}: {', '.join(f'{r.point}/seed{r.seed}' for r in unit)} "
                f"failed (exit {proc.returncode}): see "
                f"{os.path.join(unit[0].workdir, LOG_FILE)}", flush=True)
        progress()
  except KeyboardInterrupt:
    for proc in running:  # each run saves a checkpoint on SIGTERM, then exits
      proc.send_signal(signal.SIGTERM)
    for proc in running:
      proc.wait()
    raise
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu_s = children.ru_utime + children.ru_stime - cpu0
  outputs = report.write_report(exp)
  print(f"llm-jax sweep {exp.name}: {duration(time.perf_counter() - t0)} of wall time, "
        f"{duration(cpu_s)} of CPU time in the training processes; report in "
        f"{', '.join(outputs)}", flush=True)
  if failed:
    raise UserError(f"{len(failed)} of {total} runs failed (their train.log says why); rerun the "
                    "same command to retry them")
  return outputs
