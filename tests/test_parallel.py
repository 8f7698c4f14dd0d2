"""Data parallelism on 8 simulated CPU devices (conftest sets XLA_FLAGS before jax is imported),
and a real 2-process run through jax.distributed on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

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


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_losses_of_one(runs, tmp_path):
  """2 processes x 2 simulated devices, through jax.distributed (gloo) on 127.0.0.1."""
  tmp, r = runs
  port, steps = free_port(), 20
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}"}
  args = [sys.executable, "-m", "llm_jax", "train", "--config=configs/gpt_char.py",
          f"--workdir={tmp_path / 'run'}", "--config.data.corpus=text_file",
          f"--config.data.path={tmp / 'toy.txt'}", "--config.parallel=pmap",
          "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
          "--config.model.block_size=16", "--config.train.batch_size=16",
          f"--config.train.max_steps={steps}", f"--config.train.lr_decay_steps={STEPS}",
          "--config.train.warmup_steps=2", "--config.train.eval_interval=10",
          "--config.train.eval_iters=2", "--config.train.log_interval=1",
          "--config.train.checkpoint_every=10", "--config.train.sample_tokens=0",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = [subprocess.Popen(args + [f"--config.distributed.process_id={i}"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "2 process(es), 4 device(s) (pmap)" in outs[0][0]
  assert "llm-jax" not in outs[1][0] and "step" not in outs[1][0]  # only process 0 prints
  train, evals = read_metrics(tmp_path / "run")
  assert_close(train, {s: l for s, l in r["none"][0].items() if s <= steps})
  assert_close({0: evals[0]}, {0: r["none"][1][0]})  # the reference evaluates at 0, 30, 60
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["10", "20"]


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
