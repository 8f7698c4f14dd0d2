"""Sweeps and training against a real SLURM: this machine's own, where `sinfo` answers (`bash
tools/slurm_local.sh` starts a one-node cluster, as .ci/run does); otherwise these tests skip.
tests/test_cluster.py runs the same jobs on submitit's local executor; here sbatch, srun, squeue,
scancel, `scontrol requeue` and SLURM's own signals (SIGCONT then SIGTERM on a cancel, SIGUSR2 before
a time limit) are the real ones.

Each job asks one CPU, so that the tests share the node (a one-node cluster of 2 CPUs runs two at
a time; the tests run in two pytest workers). A job that must still run when it is signalled is
held still (SIGSTOP on its task, found in /proc: the node is this machine) from its first logged
step until the signal has reached it; every wait is bounded and generous, for a busy machine."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST_COMPILE
from llm_jax.fileio import read_metrics
from llm_jax.sweep import cluster, runner, spec
from llm_jax.training.loop import train_and_evaluate
from test_bad_inputs import run_cli
from test_cluster import assert_reported_like_the_pool
from test_faults import assert_same_state, tree_digest
from test_sweep import write_experiment

PARTITION = "debug"
# each job: one task, one CPU and a little memory, so that jobs share the node
SLURM = {"slurm_partition": PARTITION, "slurm_cpus_per_task": 1, "slurm_mem": "2G"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 600  # a bound on each wait: jobs queue behind the other tests' on a busy machine


@pytest.fixture(scope="module")
def slurm():
  """This machine's SLURM, if its node answers (idle, or running other tests' jobs); the list
  of the jobs the tests submit, which are cancelled at the end if any still runs."""
  try:
    p = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True,
                       text=True, timeout=60, check=False)
    nodes = p.stdout.split() if p.returncode == 0 else []
    why = (f"partition {PARTITION!r} has no node up ({' '.join(nodes) or 'none'})" if p.returncode
           == 0 else (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1])
  except (OSError, subprocess.TimeoutExpired) as e:
    nodes, why = [], "not installed" if isinstance(e, FileNotFoundError) else str(e)
  if not {"idle", "mix", "alloc", "comp"} & set(nodes):
    pytest.skip(f"no SLURM here (sinfo: {why}): start a one-node cluster with "
                "`bash tools/slurm_local.sh` (as root)")
  jobs = []
  yield jobs
  if jobs:  # SIGKILL, which no one catches: a plain scancel would be taken for a preemption
    subprocess.run(["scancel", "--signal=KILL", "--full", *jobs], capture_output=True,
                   check=False)
    subprocess.run(["scancel", *jobs], capture_output=True, check=False)


def wait_until(cond, what, timeout=WAIT_S, poll=0.01):
  t0 = time.monotonic()
  while not cond():
    assert time.monotonic() - t0 < timeout, f"timed out after {timeout} s waiting for {what}"
    time.sleep(poll)


def submit(d, jobs, timeout_min=20):
  submitted = cluster.submit(d, "slurm", {"timeout_min": timeout_min, **SLURM})
  jobs.extend(j.job_id for j in submitted)
  return submitted


def scheduler_state(job_id):
  """squeue's (or sacct's) state of the job; '' once the scheduler has forgotten it."""
  return cluster.slurm_states([job_id]).get(job_id, ("", ""))[0]


def wait_ended(job):
  """Until the job is neither queued nor running (its processes gone), and its files are
  written."""
  wait_until(lambda: scheduler_state(job.job_id) not in cluster.SLURM_PENDING
             | cluster.SLURM_RUNNING, f"job {job.job_id} to end", poll=0.5)


def task_of(job_id):
  """The pid of the job's task 0 (submitit's process, which trains), or None."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
      if b"submitit.core._submit" not in argv or os.path.basename(argv[0]) == b"srun":
        continue
      with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.partition(b"=")[::2] for v in f.read().split(b"\0"))
    except OSError:
      continue
    array = b"_".join((env.get(b"SLURM_ARRAY_JOB_ID", b""), env.get(b"SLURM_ARRAY_TASK_ID", b"")))
    if env.get(b"SLURM_PROCID") == b"0" and job_id.encode() in (env.get(b"SLURM_JOB_ID"), array):
      return int(pid)
  return None


def logged_steps(workdir):
  return [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


def hold(job_id, workdir, past):
  """Stops (SIGSTOP) the job's task once it has logged a train step after step `past`: a run
  that went on while it is looked at and signalled could reach its last step first. Returns the
  task's pid."""
  found = []

  def running_past():
    if max(logged_steps(workdir), default=-1) <= past:
      return False
    found[:] = [task_of(job_id)]
    return found[0] is not None

  wait_until(running_past, f"job {job_id} to log a step after {past}", poll=0.005)
  os.kill(found[0], signal.SIGSTOP)
  wait_until(lambda: stopped(found[0]), f"job {job_id}'s task to stop")
  return found[0]


def stopped(pid):
  """Whether the process is stopped (SIGSTOP); False once it has ended."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rpartition(")")[2].split()[0] == "T"
  except OSError:
    return False


def states(d):
  return {f"{r.point}/seed{r.seed}": (state, detail) for r, state, detail in cluster.status(d)}


def read(path):
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def test_a_sweep_on_slurm_gives_the_results_of_the_local_pool(slurm, tmp_path, toy_corpus):
  points = [{"train.max_steps": 10}, {"train.max_steps": 20}]
  pool = write_experiment(tmp_path / "pool" / "exp", toy_corpus, points, seeds=(0, 1))
  d = write_experiment(tmp_path / "slurm" / "exp", toy_corpus, points, seeds=(0, 1))
  code, out, err = run_cli("sweep", d, "--launcher=submitit", f"--slurm_partition={PARTITION}",
                           "--slurm_time=20", "--slurm_cpus_per_task=1", "--slurm_mem=2G")
  assert code == 0, err
  ids = re.findall(r"^  (\S+): job (\d+_\d) \(1 process\(es\)\)$", out, re.M)
  slurm.extend(job for _, job in ids)
  assert len(ids) == 4 and len({job.split("_")[0] for _, job in ids}) == 1, out  # one array
  # the scheduler knows every job: none is taken for failed, and none is submitted again
  assert {state for state, _ in states(d).values()} <= {"pending", "running", "finished"}
  code, out, err = run_cli("sweep", d, "--launcher=submitit", f"--slurm_partition={PARTITION}")
  assert code == 0 and re.search(r"(\d) finished already, (\d) queued or running, 0 to submit",
                                 out), out + err
  runner.run_sweep(pool, jobs=2)  # meanwhile
  runs = spec.load_experiment(d).runs
  wait_until(lambda: all(spec.is_finished(r) for r in runs), "the sweep's runs", poll=0.5)
  for _, job in ids:
    wait_until(lambda: scheduler_state(job) not in cluster.SLURM_PENDING | cluster.SLURM_RUNNING,
               f"job {job} to end", poll=0.5)
  assert_reported_like_the_pool(d, pool)


def test_a_job_cancelled_then_requeued_while_running_ends_as_an_uninterrupted_run(
    slurm, tmp_path, toy_corpus):
  """`scancel` (SLURM's SIGCONT then SIGTERM: the run saves and requeues itself) and then
  `scontrol requeue` (the scheduler requeues the job; its own requeue is refused) of a running
  job; --status shows it running at its step meanwhile. And a job of the same array whose run
  fails for a user error is not requeued, and --status shows its error line."""
  steps = 1000
  d = write_experiment(tmp_path / "exp", toy_corpus,
                       [{}, {"train.learning_rate": 1e30, "train.min_lr": 1e30}],
                       overrides={"train.max_steps": steps, "train.lr_decay_steps": steps,
                                  "train.log_interval": 1, "train.eval_interval": steps,
                                  "train.checkpoint_every": steps})
  run, bad = spec.load_experiment(d).runs
  job, bad_job = submit(d, slurm)
  stops = [0]
  for command in (["scancel"], ["scontrol", "requeue"]):
    task = hold(job.job_id, run.workdir, past=stops[-1])
    try:
      at = max(logged_steps(run.workdir))
      assert at < steps - 1  # so that the stop falls before the last step
      assert states(d)["base/seed0"] == ("running", f"step {at}/{steps}")
      subprocess.run([*command, job.job_id], check=True, capture_output=True, timeout=60)
      # slurmd sends SIGCONT, then at once SIGTERM
      wait_until(lambda: not stopped(task), f"SLURM's SIGCONT after {command[-1]}")
    finally:
      os.kill(task, signal.SIGCONT)
    wait_until(lambda: read(job.paths.stderr).count("interrupted by SIGTERM") == len(stops),
               f"the run to stop after {command[-1]}")
    stops.append(int(re.findall(r"interrupted by SIGTERM at step (\d+); checkpoint saved",
                                read(job.paths.stderr))[-1]))
  train_and_evaluate(run.config, str(tmp_path / "reference"))  # meanwhile
  wait_until(lambda: spec.is_finished(run), "the requeued run to finish", poll=0.5)
  wait_ended(job)
  wait_ended(bad_job)

  out, err = read(job.paths.stdout), read(job.paths.stderr)
  assert 0 < stops[1] < stops[2] < steps, stops
  assert "Requeued job" in err and "requeued already (scontrol requeue)" in err
  assert out.count("starting in") == 1
  assert [int(s) for s in re.findall(r"resuming at step (\d+) in", out)] == stops[1:]
  final_step, final = tree_digest(run.workdir)
  assert final_step == steps
  assert_same_state(final, tree_digest(tmp_path / "reference")[1])

  out, err = read(bad_job.paths.stdout), read(bad_job.paths.stderr)
  assert out.count("starting in") == 1 and "resuming" not in out and "Requeued" not in err
  s = states(d)
  assert s["base/seed0"] == ("finished", "")
  state, detail = s[f"{bad.point}/seed0"]
  assert state == "failed" and re.match(r"UserError: the training (loss|grad_norm) is nan at "
                                        r"step 2: no checkpoint was written", detail), detail


def test_a_time_limit_warning_saves_and_requeues(slurm, tmp_path, toy_corpus):
  """A 2-minute job warned (SIGUSR2) 60 s before its time limit: slurmctld looks every 30 s and
  sends it up to 30 s early, so 30 to 60 s into the job. The run saves, submitit takes it for a
  time-out and requeues the job, which resumes to the end of an uninterrupted run (a resumed job
  warned again before its end resumes again)."""
  steps = 300
  d = write_experiment(tmp_path / "exp", toy_corpus, [{}],
                       overrides={"train.max_steps": steps, "train.lr_decay_steps": steps,
                                  "train.log_interval": 1, "train.eval_interval": steps,
                                  "train.checkpoint_every": steps})
  run, = spec.load_experiment(d).runs
  submitted = cluster.submit(d, "slurm", {"timeout_min": 2, **SLURM,
                                          "slurm_additional_parameters": {"signal": "USR2@60"}})
  slurm.extend(j.job_id for j in submitted)
  job, = submitted
  assert "#SBATCH --signal=USR2@60\n" in read(job.paths.submission_file)
  task = hold(job.job_id, run.workdir, past=0)
  try:
    assert max(logged_steps(run.workdir)) < steps - 1
    # slurmd sends SIGCONT with the warning: the held task goes on once it is warned
    wait_until(lambda: not stopped(task), "SLURM's SIGUSR2", timeout=300, poll=0.1)
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.kill(task, signal.SIGCONT)
  train_and_evaluate(run.config, str(tmp_path / "reference"))  # meanwhile
  wait_until(lambda: spec.is_finished(run), "the requeued run to finish", poll=0.5)
  wait_ended(job)

  out, err = read(job.paths.stdout), read(job.paths.stderr)
  stops = [int(s) for s in re.findall(r"interrupted by SIGUSR2 at step (\d+); checkpoint saved",
                                      err)]
  resumes = [int(s) for s in re.findall(r"resuming at step (\d+) in", out)]
  assert stops and 0 < stops[0] < steps and resumes[0] == stops[0], (stops, resumes)
  # every requeue resumed where the run had saved (a warning before the loop saves nothing)
  assert set(stops) <= set(resumes) and resumes == sorted(resumes)
  # (and a warning before the loop, in a slow start, requeues a job that starts again)
  assert "this job is timed-out" in err
  assert err.count("Requeued job") == len(resumes) + out.count("starting in") - 1
  final_step, final = tree_digest(run.workdir)
  assert final_step == steps
  assert_same_state(final, tree_digest(tmp_path / "reference")[1])


def test_srun_with_two_tasks_trains_as_one_process_with_two_devices(slurm, tmp_path, toy_corpus):
  """`srun -n2 llm-jax train`: the two processes find each other through SLURM's environment
  (jax.distributed), one device each; the losses of one process with two devices."""
  steps = 20

  def command(workdir):
    return [sys.executable, "-m", "llm_jax", "train", "--config=configs/gpt_char.py",
            f"--workdir={workdir}", "--config.data.corpus=text_file",
            f"--config.data.path={toy_corpus}", "--config.model.n_layer=2",
            "--config.model.n_head=2", "--config.model.n_embd=32", "--config.model.block_size=16",
            *(f"--config.train.{k}={v}" for k, v in {
                "batch_size": 16, "max_steps": steps, "lr_decay_steps": steps, "warmup_steps": 2,
                "eval_interval": steps, "eval_iters": 2, "log_interval": 1,
                "checkpoint_every": steps, "sample_tokens": 0}.items())]

  def env(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                                       f"{FAST_COMPILE}"}

  # --overcommit: the two tasks in one CPU's allocation, so that srun need not wait for the whole
  # node while the other tests' jobs run
  srun = subprocess.Popen(["srun", f"--partition={PARTITION}", "--nodes=1", "--ntasks=2",
                           "--overcommit", "--cpus-per-task=1", "--mem=4G", "--time=20",
                           "--kill-on-bad-exit=1", *command(tmp_path / "srun")],
                          cwd=ROOT, env=env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  one = subprocess.run(command(tmp_path / "one"), cwd=ROOT, env=env(2), capture_output=True,
                       text=True, timeout=WAIT_S, check=False)
  try:
    out, err = srun.communicate(timeout=WAIT_S)
  finally:
    if srun.poll() is None:
      srun.kill()
  assert srun.returncode == 0, err[-3000:]
  assert one.returncode == 0, one.stderr[-3000:]
  assert "2 process(es), 2 device(s)" in out, out
  assert "1 process(es), 2 device(s)" in one.stdout, one.stdout

  def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}

  a, b = losses(tmp_path / "srun"), losses(tmp_path / "one")
  assert len(a) == steps and a.keys() == b.keys()
  for step in a:
    assert a[step] == pytest.approx(b[step], rel=1e-5), step
