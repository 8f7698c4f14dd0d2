"""Sweeps on a cluster through submitit: `llm-jax sweep EXP --launcher=submitit`.

Each run (point x seed) is one job of a job array (one array for each slurm.nodes x
slurm.tasks_per_node that the points ask for); the command returns once they are submitted.
<experiment>/submitit/ holds the jobs' logs and jobs.json, which job trains which run. A job calls
TrainRun(workdir): train_and_evaluate on the run's workdir (rl_train for an RL config), resuming
what it holds.

Preemption and time limits: told to stop (SIGTERM, or SIGUSR2, which SLURM sends before the time
limit as submitit asks it to), the loop finishes the step, saves and raises Interrupted. The job
then calls the handler submitit installed for its preemption signal, as if the signal came now:
it takes TrainRun.checkpoint() (the same run, submitted again), requeues the job (`scontrol
requeue` on SLURM; exit code 144 on the local executor, whose controller starts the job again)
and exits. The requeued job resumes from the checkpoint, exactly. A job that fails for a user
error (UserError), or is stopped by SIGINT (a person, or the local executor's cancel), is not
requeued: it ends with its error.

`status` tells each run's state from its workdir (summary.json, metrics.jsonl; an RL run's mean
reward over its last steps, report.rl_figures) and from its job:
submitit's result file, else the scheduler (squeue, then sacct where the cluster keeps accounting),
else the job's log.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import zlib

import submitit

from llm_jax.config import is_rl, run_steps, validate
from llm_jax.errors import UserError
from llm_jax.fileio import METRICS_FILE, atomic_write, read_metrics
from llm_jax.sweep import report, worker
from llm_jax.sweep.runner import runs_to_train
from llm_jax.sweep.spec import is_finished, load_experiment
from llm_jax.training.signals import Interrupted

CLUSTERS = ("slurm", "local", "debug")
JOBS_FILE = "jobs.json"
# time-limit requeues before a job gives up (preemptions do not count): each resumes where the
# last one stopped, so a run longer than its time limit goes on over several jobs
MAX_TIMEOUTS = 20
# SLURM job states (squeue's %T, sacct's State) of a job that waits to run, and of one that runs
# (COMPLETING: its processes are ending, e.g. before a requeue); any other state (COMPLETED,
# FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...) is a job that has ended
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING",
                 "SUSPENDED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING"}


class TrainRun(submitit.helpers.Checkpointable):
  """A job: trains the run in `workdir` (its config.json), resuming what is there. Being
  Checkpointable, its checkpoint() gives the same call again, which resumes from the workdir."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def __call__(self) -> dict:
    job = submitit.JobEnvironment()
    if job.num_tasks > 1:  # one run over every task of the job, through jax.distributed
      host = "127.0.0.1" if job.num_nodes == 1 else job.hostnames[0]
      port = 20000 + zlib.crc32(job.job_id.encode()) % 40000  # the same in every task
      os.environ.update(LLM_JAX_NUM_PROCESSES=str(job.num_tasks),
                        LLM_JAX_PROCESS_ID=str(job.global_rank),
                        LLM_JAX_COORDINATOR_ADDRESS=f"{host}:{port}")
    from llm_jax.training.parallel import enable_compilation_cache
    enable_compilation_cache()
    try:
      config = worker.read_run(self.workdir)
      validate(config)
      return worker.train_run(config, self.workdir)  # `llm-jax rl`'s loop for an RL config
    except Interrupted as e:
      preempt = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
      handler = signal.getsignal(preempt)
      if e.signum == signal.SIGINT or not callable(handler):  # not under submitit's job runner
        raise
      print(f"llm-jax sweep job: {e}; requeueing", file=sys.stderr, flush=True)
      try:
        handler(preempt, None)  # submitit's: checkpoint(), requeue, exit (in task 0 alone)
      except subprocess.CalledProcessError:  # `scontrol requeue` refused
        # a job stopped by `scontrol requeue` (a person's, or a preemption that requeues) is
        # pending again already ("Job is pending execution"), and it resumes all the same
        if not _requeued_since_start(job.job_id):
          raise  # the requeue failed: the job ends with this error
        print("llm-jax sweep job: requeued already (scontrol requeue)", file=sys.stderr,
              flush=True)
      sys.exit(0)  # another task: task 0's requeue ends every task


def parse_additional(text: str) -> dict:
  """--slurm_additional='qos=high,constraint=a100' -> {'qos': 'high', 'constraint': 'a100'}."""
  out = {}
  for item in filter(None, text.split(",")):
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise UserError(f"--slurm_additional={text!r}: {item!r} is not key=value; use e.g. "
                      "--slurm_additional=qos=high,constraint=a100")
    out[key.strip()] = value.strip()
  return out


def make_executor(folder: str, cluster: str, params: dict, nodes: int = 1,
                  tasks_per_node: int = 1):
  """submitit's executor for `cluster`. params: name, timeout_min and slurm_* parameters (those
  are used on SLURM only); nodes x tasks_per_node processes per job."""
  if cluster not in CLUSTERS:
    raise UserError(f"--submitit_cluster={cluster!r} is invalid: use one of {', '.join(CLUSTERS)}")
  try:
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, **(
        {f"{cluster}_max_num_timeout": MAX_TIMEOUTS} if cluster != "debug" else {}))
    ex.update_parameters(nodes=nodes, tasks_per_node=tasks_per_node, **params)
  except RuntimeError as e:  # no srun: not a SLURM machine
    raise UserError(f"--submitit_cluster={cluster}: {e}: submit from a SLURM login node, or "
                    "try the sweep here with --submitit_cluster=local") from None
  except ValueError as e:  # the local executor: one node
    raise UserError(f"--submitit_cluster={cluster}: {e} (slurm.nodes={nodes})") from None
  return ex


@contextlib.contextmanager
def _output_to_devnull():
  """The local executor's job controllers outlive this command and would keep its stdout and
  stderr open (their jobs write to log files): started with /dev/null there, a pipe that reads
  this command ends when it does."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved, null = (os.dup(1), os.dup(2)), os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 1)
    os.dup2(null, 2)
    yield
  finally:
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in (*saved, null):
      os.close(fd)


def read_jobs(exp) -> dict:
  """{workdir: {'job_id', 'cluster', 'folder'}}: the latest job of each run, from jobs.json."""
  try:
    with open(os.path.join(exp.directory, "submitit", JOBS_FILE), encoding="utf-8") as f:
      records = json.load(f)
  except (OSError, ValueError):
    return {}
  return {os.path.join(exp.directory, k): v for k, v in records.items()}


def _write_jobs(exp, jobs: dict) -> None:
  path = os.path.join(exp.directory, "submitit", JOBS_FILE)
  with atomic_write(path) as f:
    json.dump({os.path.relpath(k, exp.directory): v for k, v in jobs.items()}, f, indent=2)


def _last_line(text: str) -> str:
  """The last line that is not submitit's own log, an exception's module path dropped."""
  lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("submitit ")]
  return re.sub(r"^[\w.]+\.(\w+: )", r"\1", lines[-1]) if lines else ""


def _read(path) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return f.read()
  except OSError:
    return ""


def _scheduler(args: list) -> tuple[int, str]:
  """(exit code, stdout + stderr) of a SLURM command; 127 where it is missing or hangs."""
  try:
    p = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    return 127, str(e)
  return p.returncode, p.stdout + p.stderr


def _requeued_since_start(job_id: str) -> bool:
  """Whether SLURM has requeued this job since this attempt of it started: its restart count
  (scontrol's) is past the one this attempt started with (SLURM_RESTART_COUNT)."""
  code, out = _scheduler(["scontrol", "show", "job", "-o", job_id])
  restarts = re.search(r"\bRestarts=(\d+)", out)
  return (code == 0 and restarts is not None
          and int(restarts[1]) > int(os.environ.get("SLURM_RESTART_COUNT", "0")))


def slurm_states(job_ids) -> dict:
  """{job id: (state, reason)} of the SLURM jobs the scheduler knows (ids as submitit gives them,
  '123' or an array's task '123_4'): squeue for jobs queued, running or lately ended (it forgets
  a job MinJobAge after its end), then sacct for the rest, where a cluster keeps accounting (many
  small ones do not, and sacct then knows nothing). A job neither knows is absent: it has ended,
  and only its files tell how."""
  job_ids = set(job_ids)
  if not job_ids:
    return {}
  arrays = ",".join(sorted({j.split("_")[0] for j in job_ids}))  # -r: each task of an array
  code, out = _scheduler(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", arrays])
  if code and "Invalid job id" not in out:  # (every job forgotten answers so)
    raise UserError(f"squeue failed, so the jobs' states are unknown: {_last_line(out)}; check "
                    "that the SLURM controller answers (sinfo)")
  states = {}
  for line in out.splitlines() if code == 0 else ():
    job, _, rest = line.strip().partition("|")
    state, _, reason = rest.partition("|")
    if job in job_ids:
      states[job] = (state, "" if reason in ("None", "(null)") else reason)
  forgotten = job_ids - states.keys()
  if forgotten:
    code, out = _scheduler(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j",
                            ",".join(sorted({j.split("_")[0] for j in forgotten}))])
    for line in out.splitlines() if code == 0 else ():
      job, _, state = line.strip().partition("|")
      state = state.split()[0] if state.split() else ""  # e.g. 'CANCELLED by 1000'
      # a job squeue does not list is not queued nor running, whatever sacct last heard
      if job in forgotten and state and state not in SLURM_PENDING | SLURM_RUNNING:
        states[job] = (state, "")
  return states


def run_state(run, record, scheduler: dict | None = None) -> tuple[str, str]:
  """(state, detail): 'finished', 'running', 'pending', 'failed' (detail: its last error line)
  or 'not submitted'. scheduler: slurm_states() of the runs' jobs, if already asked."""
  records = read_metrics(os.path.join(run.workdir, METRICS_FILE))
  # an RL run's figure: the mean reward of its last steps' rollouts
  reward = (f"reward {report.rl_figures(records)['final_reward']:.3f}"
            if is_rl(run.config) and any("reward" in r for r in records) else "")
  if is_finished(run):
    return "finished", reward
  steps = [r["step"] for r in records]
  at = ", ".join(filter(None, [f"step {max(steps, default=0)}/{run_steps(run.config)}", reward]))
  if record is None:
    return "not submitted", at if steps else ""
  job_class = submitit.SlurmJob if record["cluster"] == "slurm" else submitit.LocalJob
  job = job_class(record["folder"], record["job_id"])
  if job.paths.result_pickle.exists():  # the job has ended, with its function's outcome
    outcome, value = submitit.core.utils.pickle_load(job.paths.result_pickle)
    return "failed", _last_line(value) if outcome == "error" else f"ended at {at}"
  if record["cluster"] == "slurm":
    if scheduler is None:
      scheduler = slurm_states([record["job_id"]])
    state, reason = scheduler.get(record["job_id"], ("", ""))
    if state in SLURM_PENDING:  # detail: why it waits (Resources, Priority, BeginTime, ...)
      return "pending", reason if state == "PENDING" else ", ".join(filter(None, (state, reason)))
    if state in SLURM_RUNNING:
      return "running", at if steps else ""
    error = _last_line(_read(job.paths.stderr))  # an ended job without a result
    if state:
      return "failed", f"{state}: {error or 'no error line'}"
    return "failed", error or "the job ended without a result"
  try:  # the local executor's job id is its controller's pid (a zombie's cmdline is empty)
    with open(f"/proc/{record['job_id']}/cmdline", "rb") as f:
      alive = b"submitit" in f.read()
  except OSError:
    alive = False
  if alive:
    return ("running", at if steps else "") if job.paths.stdout.exists() else ("pending", "")
  return "failed", _last_line(_read(job.paths.stderr)) or "the job ended without a result"


def _slurm_states_of(records: dict, runs) -> dict:
  """slurm_states() of the runs' SLURM jobs that have no result yet, asked at once."""
  ids = []
  for r in runs:
    rec = records.get(r.workdir)
    if rec and rec["cluster"] == "slurm" and not is_finished(r) and not submitit.SlurmJob(
        rec["folder"], rec["job_id"]).paths.result_pickle.exists():
      ids.append(rec["job_id"])
  return slurm_states(ids)


def submit(directory: str, cluster: str = "slurm", params: dict | None = None) -> list:
  """Submits every unfinished run of the experiment in `directory` that no queued or running job
  trains: one job each, one job array per process layout. params: see make_executor. Returns
  the jobs; with cluster='debug' they have run in this process."""
  params = params or {}
  if params.get("timeout_min", 1) < 1:
    raise UserError(f"--slurm_time={params['timeout_min']} is invalid: use 1 or more minutes")
  exp = load_experiment(directory)  # every run checked before any is submitted
  folder = os.path.join(exp.directory, "submitit")
  records = read_jobs(exp)
  todo = runs_to_train(exp)
  scheduler = _slurm_states_of(records, todo)
  busy = [r for r in todo
          if run_state(r, records.get(r.workdir), scheduler)[0] in ("pending", "running")]
  todo = [r for r in todo if r not in busy]
  print(f"llm-jax sweep {exp.name}: {len(exp.runs)} runs ({len(exp.points)} points x "
        f"{len(exp.runs) // len(exp.points)} seeds), "
        f"{len(exp.runs) - len(todo) - len(busy)} finished already, {len(busy)} queued or "
        f"running, {len(todo)} to submit to {cluster}", flush=True)
  params = {"name": f"llm-jax-{exp.name}", **params}
  layouts = {}
  for r in todo:
    layouts.setdefault((r.nodes, r.tasks_per_node), []).append(r)
  for r in todo:  # each config.json, all checked against their saved runs before any is submitted
    worker.write_run(r.workdir, r.config)
  jobs = []
  for (nodes, tasks_per_node), runs in layouts.items():
    ex = make_executor(folder, cluster, params, nodes, tasks_per_node)
    try:
      with _output_to_devnull() if cluster == "local" else contextlib.nullcontext():
        with ex.batch():  # one job array
          array = [ex.submit(TrainRun(r.workdir)) for r in runs]
    except (OSError, submitit.core.utils.FailedJobError,
            submitit.core.utils.FailedSubmissionError) as e:  # sbatch refused, or is missing
      raise UserError(f"submitting to {cluster} failed: {_last_line(str(e))}") from None
    for r, job in zip(runs, array):
      print(f"  {r.point}/seed{r.seed}: job {job.job_id} ({nodes * tasks_per_node} "
            f"process(es))", flush=True)
      if cluster != "debug":
        records[r.workdir] = {"job_id": job.job_id, "cluster": cluster, "folder": folder}
    jobs.extend(array)
  if cluster == "debug":  # in this process, one after the other (pdb on an error)
    for job in jobs:
      job.result()
  elif jobs:
    _write_jobs(exp, records)
    print(f"llm-jax sweep {exp.name}: logs in {folder}; `llm-jax sweep {directory} --status` "
          f"shows each run's state, `--report` writes the results so far", flush=True)
  return jobs


def status(directory: str) -> list[tuple]:
  """Prints each run's state (and a count of each); returns [(run, state, detail)]."""
  exp = load_experiment(directory)
  records = read_jobs(exp)
  scheduler = _slurm_states_of(records, exp.runs)
  rows = [(r, *run_state(r, records.get(r.workdir), scheduler)) for r in exp.runs]
  width = max(len(f"{r.point}/seed{r.seed}") for r, *_ in rows)
  for r, state, detail in rows:
    job = records.get(r.workdir, {}).get("job_id", "-")
    print(f"  {f'{r.point}/seed{r.seed}':<{width}}  job {job:<12}  {state}" +
          (f": {detail}" if state == "failed" else f" ({detail})" if detail else ""))
  counts = {}
  for _, state, _ in rows:
    counts[state] = counts.get(state, 0) + 1
  print(f"llm-jax sweep {exp.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        flush=True)
  return rows
