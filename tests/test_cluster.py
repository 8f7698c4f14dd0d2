"""Sweeps through submitit (`--launcher=submitit`, llm_jax/sweep/cluster.py) on its local
executor: real job processes under submitit's controller, signalled and requeued through the code
SLURM jobs run (only the requeue call itself differs: exit code 144 here, `scontrol requeue`
there). What SLURM is asked for is read from the sbatch files, with stand-ins for srun and sbatch
that only record them."""

import csv
import json
import os
import re
import signal
import stat
import time

import submitit

from llm_jax.sweep import cluster, report, runner, spec
from llm_jax.training.loop import train_and_evaluate
from test_bad_inputs import run_cli
from test_faults import assert_same_state, tree_digest
from test_sweep import write_experiment


def wait_until(cond, timeout=180.0):
  t0 = time.monotonic()
  while not cond():
    assert time.monotonic() - t0 < timeout, "timed out"
    time.sleep(0.005)


def states(directory):
  return {f"{r.point}/seed{r.seed}": (state, detail)
          for r, state, detail in cluster.status(directory)}


def _pending(pid, signum):
  """Whether `signum` waits, undelivered, for process `pid` (its ShdPnd or SigPnd mask)."""
  masks = [int(line.split()[1], 16) for line in open(f"/proc/{pid}/status")
           if line.startswith(("ShdPnd:", "SigPnd:"))]
  return any(m >> (signum - 1) & 1 for m in masks)


def results_table(directory):
  """A sweep report's results.csv: the columns two launchers must agree on, row by row."""
  with open(os.path.join(directory, "results.csv")) as f:
    return [{k: r[k] for k in ("point", "seed", "status", "step", "final_val_loss",
                               "best_val_loss", "final_train_loss", "params")}
            for r in csv.DictReader(f)]


def assert_reported_like_the_pool(jobs, pool):
  """The sweep in `jobs` (its jobs ended) reports all 4 runs finished, and its results.csv equals
  that of the same sweep trained by the local process pool in `pool`, every run done."""
  code, out, err = run_cli("sweep", jobs, "--status")
  assert code == 0 and out.strip().endswith("exp: 4 finished"), out + err
  assert run_cli("sweep", jobs, "--report")[0] == 0
  report.write_report(spec.load_experiment(pool))
  assert results_table(jobs) == results_table(pool)
  assert {r["status"] for r in results_table(pool)} == {"done"}


def test_a_job_stopped_by_sigterm_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path,
                                                                               toy_corpus):
  """And a run of two processes (one job of two tasks) that fails for a user error is not."""
  steps = 300
  # 2 processes x 8 devices (conftest's XLA_FLAGS), one example each
  two_tasks = {"train.learning_rate": 1e30, "train.min_lr": 1e30, "slurm.tasks_per_node": 2,
               "parallel": "pmap", "train.batch_size": 16}
  d = write_experiment(tmp_path / "exp", toy_corpus, [{}, two_tasks],
                       overrides={"train.max_steps": steps, "train.lr_decay_steps": steps,
                                  "train.log_interval": 1, "train.eval_interval": steps,
                                  "train.checkpoint_every": steps})
  run, bad = spec.load_experiment(d).runs
  jobs = cluster.submit(d, "local", {"timeout_min": 10})
  metrics = os.path.join(run.workdir, "metrics.jsonl")
  wait_until(lambda: os.path.exists(metrics) and '"loss"' in open(metrics).read())
  # the task is held still while it is looked at and signalled: a run that went on meanwhile
  # could reach its last step, and a signal after the loop would find no one to save
  controller = int(jobs[0].job_id)
  task, = map(int, open(f"/proc/{controller}/task/{controller}/children").read().split())
  os.kill(task, signal.SIGSTOP)
  try:
    with open(metrics) as f:
      logged = [json.loads(line)["step"] for line in f if '"loss"' in line and line[-1] == "\n"]
    assert max(logged, default=0) < steps - 1, logged  # so the stop falls before the last step
    assert states(d)["base/seed0"][0] == "running"
    report.write_report(spec.load_experiment(d))  # the report, while it runs
    with open(os.path.join(d, "results.csv")) as f:
      assert next(csv.DictReader(f))["status"] == "partial"
    # as SLURM signals a job's processes: the local controller passes SIGTERM on to its task,
    # where it waits until the task goes on
    os.kill(controller, signal.SIGTERM)
    wait_until(lambda: _pending(task, signal.SIGTERM))
  finally:
    os.kill(task, signal.SIGCONT)
  assert jobs[0].result()["step"] == steps
  for job in jobs:
    job.wait()

  out, err = (open(p).read() for p in (jobs[0].paths.stdout, jobs[0].paths.stderr))
  stopped = int(re.search(r"interrupted by SIGTERM at step (\d+); checkpoint saved", err)[1])
  assert 0 < stopped < steps and "Requeued job" in err
  assert out.count("starting in") == 1 and out.count(f"resuming at step {stopped} in") == 1
  # the requeued job ends where an uninterrupted run ends, bitwise
  train_and_evaluate(run.config, str(tmp_path / "reference"))
  final_step, final = tree_digest(run.workdir)
  assert final_step == steps
  assert_same_state(final, tree_digest(tmp_path / "reference")[1])

  # a user error is not requeued: one attempt, and --status shows its last error line
  out, err = (open(p).read() for p in (jobs[1].paths.stdout, jobs[1].paths.stderr))
  assert "2 process(es), 16 device(s) (pmap)" in out  # the job's two tasks trained as one run
  assert out.count("starting in") == 1 and "resuming" not in out and "Requeued" not in err
  s = states(d)
  assert s["base/seed0"] == ("finished", "")
  state, detail = s[f"{bad.point}/seed0"]
  assert state == "failed" and re.match(r"UserError: the training (loss|grad_norm) is nan at "
                                        r"step 2: no checkpoint was written", detail), detail


def test_a_sweep_through_submitit_gives_the_results_of_the_local_pool(tmp_path, toy_corpus):
  points = [{"train.max_steps": 10}, {"train.max_steps": 20}]  # the same programs
  pool = write_experiment(tmp_path / "pool" / "exp", toy_corpus, points, seeds=(0, 1))
  jobs = write_experiment(tmp_path / "submitit" / "exp", toy_corpus, points, seeds=(0, 1))
  runner.run_sweep(pool, jobs=2)
  code, out, err = run_cli("sweep", jobs, "--launcher=submitit", "--submitit_cluster=local")
  assert code == 0, err
  ids = re.findall(r"^  (\S+): job (\d+) \(1 process\(es\)\)$", out, re.M)
  assert sorted(p for p, _ in ids) == sorted(f"{p}/seed{s}" for p in ("max_steps=10",
                                                                        "max_steps=20")
                                               for s in (0, 1))
  assert f"logs in {os.path.join(jobs, 'submitit')}" in out  # and it returned, jobs running
  runs = spec.load_experiment(jobs).runs
  wait_until(lambda: all(spec.is_finished(r) for r in runs))
  for _, job_id in ids:  # each controller ends once its task has written its result
    wait_until(lambda: not os.path.exists(f"/proc/{job_id}/cmdline")
               or b"submitit" not in open(f"/proc/{job_id}/cmdline", "rb").read())
  assert_reported_like_the_pool(jobs, pool)


def test_slurm_gets_one_job_array_per_process_layout_with_the_flags(tmp_path, toy_corpus,
                                                                    monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in (("srun", "exit 1"),  # submitit only checks that it exists
                     ("sbatch", f"n=$(ls {tmp_path} | grep -c '^script_')\n"
                                f'cp "$1" {tmp_path}/script_$n.sh\n'
                                'echo "Submitted batch job $((100 + n))"')):
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(stat.S_IRWXU)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  d = write_experiment(tmp_path / "exp", toy_corpus,
                       [{"model.n_layer": 1}, {"model.n_layer": 2, "slurm.nodes": 2,
                                               "slurm.tasks_per_node": 4}], seeds=(0, 1))
  code, out, err = run_cli("sweep", d, "--launcher=submitit", "--slurm_partition=gpu",
                           "--slurm_time=90", "--slurm_gpus_per_task=1",
                           "--slurm_cpus_per_task=8", "--slurm_mem=64G",
                           "--slurm_additional=qos=high,constraint=a100")
  assert code == 0, err
  assert "  n_layer=1/seed0: job 100_0 (1 process(es))" in out
  assert "  n_layer=2,nodes=2,tasks_per_node=4/seed1: job 101_1 (8 process(es))" in out
  scripts = sorted(tmp_path.glob("script_*.sh"))
  assert len(scripts) == 2
  texts = [s.read_text() for s in scripts]
  for text, nodes, tasks in zip(texts, (1, 2), (1, 4)):
    for line in ("--partition=gpu", "--time=90", "--gpus-per-task=1", "--cpus-per-task=8",
                 "--mem=64G", "--qos=high", "--constraint=a100", "--array=0-1%2",
                 f"--nodes={nodes}", f"--ntasks-per-node={tasks}", "--signal=USR2@90",
                 "--job-name=llm-jax-exp"):
      assert f"#SBATCH {line}\n" in text, (line, text)
    assert "srun" in text and "submitit.core._submit" in text
  with open(os.path.join(d, "submitit", cluster.JOBS_FILE)) as f:
    assert sorted(r["job_id"] for r in json.load(f).values()) == ["100_0", "100_1", "101_0",
                                                                   "101_1"]
  # each job's pickled call is the run's TrainRun, which a requeue submits again as it is
  pickled = submitit.core.utils.DelayedSubmission.load(
      os.path.join(d, "submitit", "101_1_submitted.pkl"))
  assert isinstance(pickled.function, cluster.TrainRun)
  assert pickled.function.workdir == spec.load_experiment(d).runs[3].workdir
  assert pickled._timeout_countdown == cluster.MAX_TIMEOUTS
