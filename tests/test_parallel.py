"""pmap data parallelism on 8 simulated CPU devices (conftest sets XLA_FLAGS before jax is
imported), and real 2-process runs through jax.distributed on 127.0.0.1: on the mesh
(data=2, fsdp=2), and with pmap under srun. The mesh on one process: test_mesh.py."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import pytest

from conftest import FAST_COMPILE, TOY_TEXT, tiny_config
from llm_jax.errors import UserError
from llm_jax.training.loop import train_and_evaluate

STEPS, HALF = 60, 30


def run(corpus, workdir, parallel, max_steps=STEPS):
  c = tiny_config(corpus, max_steps=max_steps, lr_decay_steps=STEPS, log_interval=1,
                  eval_interval=HALF, checkpoint_every=HALF, batch_size=16)
  c.parallel = parallel
  train_and_evaluate(c, str(workdir))
  return read_metrics(workdir)


def read_metrics(workdir):
  """{step: loss} of train steps, and {step: (train_loss, val_loss)} of evaluations."""
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return ({r["step"]: r["loss"] for r in records if "loss" in r},
          {r["step"]: (r["train_loss"], r["val_loss"]) for r in records if "val_loss" in r})


def assert_close(a: dict, b: dict, rtol=1e-5):
  assert a.keys() == b.keys() and a
  for step in a:
    assert a[step] == pytest.approx(b[step], rel=rtol), step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """STEPS steps on 1 device and on 8 devices, the same global batch of 16."""
  tmp = tmp_path_factory.mktemp("parallel")
  (tmp / "toy.txt").write_text(TOY_TEXT)
  assert jax.device_count() == 8
  return tmp, {mode: run(tmp / "toy.txt", tmp / mode, mode) for mode in ("none", "pmap")}


def test_eight_devices_give_the_losses_of_one(runs):
  _, r = runs
  (one_train, one_eval), (eight_train, eight_eval) = r["none"], r["pmap"]
  assert len(one_train) == STEPS
  assert_close(one_train, eight_train)
  assert_close(one_eval, eight_eval)  # evaluation too
  assert one_train[STEPS] < one_train[1]  # and it learned


@pytest.mark.parametrize("first,then", [("pmap", "none"), ("none", "pmap")])
def test_a_run_resumes_on_another_device_count(runs, tmp_path, first, then):
  tmp, r = runs
  run(tmp / "toy.txt", tmp_path / "run", first, max_steps=HALF)
  end = HALF + 10  # the schedule is set by lr_decay_steps, so these are the reference's steps
  train, evals = run(tmp / "toy.txt", tmp_path / "run", then, max_steps=end)
  assert_close(train, {s: l for s, l in r["none"][0].items() if s <= end})
  assert_close({s: e for s, e in evals.items() if s <= HALF},  # the reference evaluates at 0, 30
               {s: e for s, e in r["none"][1].items() if s <= HALF})


def test_a_batch_that_does_not_divide_by_the_devices_is_refused(tmp_path, toy_corpus):
  c = tiny_config(toy_corpus, batch_size=12)
  c.parallel = "pmap"
  with pytest.raises(UserError, match="config.train.batch_size=12 does not divide by the 8"):
    train_and_evaluate(c, str(tmp_path / "run"))


def free_port(candidates=(0,)):
  """A port of `candidates` free on 127.0.0.1 (0: any)."""
  for port in random.sample(list(candidates), min(len(candidates), 50)):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
      return s.getsockname()[1]
  raise AssertionError("no free port")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_processes(args, n, progress, stall_s=60, timeout_s=180, srun_job=None,
                  poke=lambda procs: None, returncode=0):
  """Runs `args + --config.distributed.process_id=i` for i < n, or with srun_job (a SLURM job id)
  `args` in the environment srun gives task i of n on this machine; returns each one's (out, err).
  poke(procs) runs at each poll; every process must exit with `returncode`.

  A run that hangs fails the test with every process's Python stack: when `progress()` (any value
  that changes as the run goes on) has not changed for `stall_s` seconds, or one process has
  failed while another still runs (it would wait for the lost one forever), the live ones get
  SIGABRT, which faulthandler turns into a dump of each thread's stack on stderr."""
  env = {**os.environ, "PYTHONFAULTHANDLER": "1",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}"}
  srun = lambda i: {"SLURM_JOB_ID": str(srun_job), "SLURM_STEP_NODELIST": "127.0.0.1",
                    "SLURM_NTASKS": str(n), "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}
  procs = [subprocess.Popen(args + ([] if srun_job else [f"--config.distributed.process_id={i}"]),
                            cwd=ROOT, env={**env, **(srun(i) if srun_job else {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(n)]
  # read the pipes as they fill, so that a chatty process never blocks on a full pipe
  outs = [[[], []] for _ in procs]
  readers = [threading.Thread(target=lambda f, buf: buf.extend(f), args=(f, buf), daemon=True)
             for p, o in zip(procs, outs) for f, buf in ((p.stdout, o[0]), (p.stderr, o[1]))]
  for t in readers:
    t.start()
  start = last_change = time.monotonic()
  seen, why = progress(), None
  try:
    while any(p.poll() is None for p in procs):
      time.sleep(0.5)
      poke(procs)
      now, value = time.monotonic(), progress()
      if value != seen:
        seen, last_change = value, now
      if any(p.returncode not in (None, returncode) for p in procs):
        why = "a process failed while another still ran"
      elif now - last_change > stall_s:
        why = f"no progress for {stall_s} s"
      elif now - start > timeout_s:
        why = f"not done after {timeout_s} s"
      if why:
        for p in procs:
          if p.poll() is None:
            p.send_signal(signal.SIGABRT)
        break
  finally:
    for p in procs:
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for t in readers:
      t.join(timeout=10)
  results = [("".join(o), "".join(e)) for o, e in outs]
  if why or any(p.returncode != returncode for p in procs):
    report = "\n".join(f"--- process {i} (exit {p.returncode}) stderr:\n{err[-6000:]}"
                        for i, (p, (_, err)) in enumerate(zip(procs, results)))
    pytest.fail(f"{why or 'a process failed'}:\n{report}")
  return results


def two_process_args(corpus, workdir, max_steps, parallel="auto", **train):
  """The command of one of 2 processes x 2 simulated devices, through jax.distributed (gloo) on
  127.0.0.1; the 1-device reference's model, batch and schedule. parallel='auto': the mesh
  (data=2, fsdp=2), each process holding half of every matrix."""
  train = {"batch_size": 16, "max_steps": max_steps, "lr_decay_steps": STEPS, "warmup_steps": 2,
           "eval_interval": 10, "eval_iters": 2, "log_interval": 1, "checkpoint_every": 10,
           "sample_tokens": 0, **train}
  return ([sys.executable, "-m", "llm_jax", "train", "--config=configs/gpt_char.py",
           f"--workdir={workdir}", "--config.data.corpus=text_file",
           f"--config.data.path={corpus}", f"--config.parallel={parallel}",
           "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
           "--config.model.block_size=16"] +
          [f"--config.train.{k}={v}" for k, v in train.items()] +
          (["--config.mesh.data=2", "--config.mesh.fsdp=2"] if parallel == "auto" else []) +
          [f"--config.distributed.coordinator_address=127.0.0.1:{free_port()}",
           "--config.distributed.num_processes=2"])


def metrics_size(workdir):
  """How far a run has got: metrics.jsonl grows by a line at every step (log_interval=1)."""
  path = workdir / "metrics.jsonl"
  return lambda: path.stat().st_size if path.exists() else -1


def test_two_processes_give_the_losses_of_one(runs, tmp_path):
  tmp, r = runs
  steps, workdir = 20, tmp_path / "run"
  outs = run_processes(two_process_args(tmp / "toy.txt", workdir, steps), 2,
                       metrics_size(workdir))
  assert "2 process(es), 4 device(s) (mesh data=2 fsdp=2 tensor=1)" in outs[0][0]
  assert "llm-jax" not in outs[1][0] and "step" not in outs[1][0]  # only process 0 prints
  train, evals = read_metrics(workdir)
  assert_close(train, {s: l for s, l in r["none"][0].items() if s <= steps})
  assert_close({0: evals[0]}, {0: r["none"][1][0]})  # the reference evaluates at 0, 30, 60
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]


def test_two_processes_evaluate_sample_save_and_resume_past_a_damaged_checkpoint(runs, tmp_path):
  """What process 0 does alone (metrics, a sample of text at each evaluation) at the steps where
  every process also evaluates and saves; then a resume past a damaged newest checkpoint, whose
  step is saved again: each cross-process operation must come in the same order everywhere."""
  tmp, r = runs
  workdir = tmp_path / "run"
  args = lambda steps: two_process_args(tmp / "toy.txt", workdir, steps, eval_interval=5,
                                        checkpoint_every=5, sample_tokens=8, keep_checkpoints=3)
  run_processes(args(10), 2, metrics_size(workdir))
  for path in (workdir / "checkpoints" / "10" / "state").rglob("d/*"):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  outs = run_processes(args(15), 2, metrics_size(workdir))
  assert f"checkpoint {workdir / 'checkpoints' / '10'} is damaged" in outs[0][1]
  assert "resuming at step 5" in outs[0][0] and "--- sample ---" in outs[0][0]
  train, evals = read_metrics(workdir)
  assert_close(train, {s: l for s, l in r["none"][0].items() if s <= 15})
  assert sorted(evals) == [0, 5, 10, 15]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "15", "5"]
  assert (workdir / "checkpoints_corrupt" / "10").is_dir()


def test_srun_tasks_join_and_a_signal_to_one_stops_both_at_the_same_step(runs, tmp_path):
  """Two `llm-jax train` processes with only what srun gives each task: JAX's SLURM detection
  joins them. SIGTERM reaches one of them only: both save the same step and stop (one that saved,
  an Orbax barrier, while the other ran the next step, a collective, would hang both)."""
  tmp, r = runs
  workdir = tmp_path / "run"
  port = free_port(range(65535 - 2 ** 12 + 1, 65536))  # JAX's: the SLURM job id's, mod 4096
  args = two_process_args(tmp / "toy.txt", workdir, 1000, "pmap", eval_interval=1000,
                          checkpoint_every=1000)[:-2]  # no distributed flags
  metrics = workdir / "metrics.jsonl"

  def signal_one(procs):
    if not signal_one.sent and metrics.exists() and metrics.read_text().count('"loss"') >= 3:
      procs[1].send_signal(signal.SIGTERM)
      signal_one.sent = True
  signal_one.sent = False

  outs = run_processes(args, 2, metrics_size(workdir), stall_s=30, srun_job=port + 4096 * 7,
                       poke=signal_one, returncode=128 + signal.SIGTERM)
  assert "2 process(es), 4 device(s) (pmap)" in outs[0][0]
  assert "SIGTERM: saving" in outs[1][1] and "SIGTERM: saving" not in outs[0][1]
  stopped = [int(e.strip().splitlines()[-1].split(" at step ")[1].split(";")[0]) for _, e in outs]
  assert stopped[0] == stopped[1] and sorted(os.listdir(workdir / "checkpoints")) == [
      str(stopped[0])]
  train, _ = read_metrics(workdir)
  assert_close(train, {s: l for s, l in r["none"][0].items() if s <= stopped[0]})


@pytest.mark.parametrize("batch_size, cpu_devices, parallel", [
    (12, 0, "auto"), (7, 0, "auto"), (12, 3, "auto"), (12, 0, "none")])
def test_cpu_devices_one_per_core_when_the_batch_divides(batch_size, cpu_devices, parallel):
  code = ("import jax; from llm_jax.config import default_config; "
          "from llm_jax.training.parallel import set_cpu_devices; c = default_config(); "
          f"c.train.batch_size = {batch_size}; c.cpu_devices = {cpu_devices}; "
          f"c.parallel = {parallel!r}; set_cpu_devices(c); print(jax.device_count())")
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout
  cores = os.cpu_count()
  if parallel == "none":
    expected = 1
  elif cpu_devices:
    expected = cpu_devices
  else:
    expected = cores if batch_size % cores == 0 else 1
  assert int(out) == expected
