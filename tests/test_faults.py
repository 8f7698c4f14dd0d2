"""Faults a long run meets: signals, kill -9 at any moment, damaged checkpoints, NaNs, a full disk.

The signal and kill -9 tests drive a real `python -m llm_jax train` process; the rest run in process.
"""

import errno
import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from llm_jax.errors import UserError
from llm_jax.training import checkpoint, signals
from llm_jax.training.loop import train_and_evaluate

ROOT = pathlib.Path(__file__).parent.parent


def saved_state(manager, step):
  """The train state of a checkpoint step as it was saved, as numpy arrays: restored with a
  target for every array (read from the step's metadata), so Orbax need not guess shardings."""
  metadata = manager.item_metadata(step)["state"]
  restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      restore_args=restore_args))).state


def tree_digest(workdir, step=None):
  """{leaf path: array} of a checkpoint's train state (default: the latest), read by Orbax."""
  manager = checkpoint.make_manager(workdir, 100, create=False)
  step = manager.latest_step() if step is None else step
  state = saved_state(manager, step)
  manager.close()
  return step, {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def assert_same_state(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def files_digest(directory):
  """sha256 of every file under directory, by relative path: 'untouched' means equal digests."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


def write_config_file(config, path):
  """A config file for the command line holding exactly `config` (tiny_config's values)."""
  path.write_text("import json\nimport ml_collections\n\n\ndef get_config():\n"
                  f"  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n")
  return path


def start_train(config_file, workdir):
  """A real `llm-jax train` process (8 simulated devices as in process, parallel='none', and the
  session's compilation cache, so its programs are the in-process ones)."""
  return subprocess.Popen([sys.executable, "-m", "llm_jax", "train", f"--config={config_file}",
                           f"--workdir={workdir}"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for(cond, proc, timeout=120.0, poll=0.005):
  t0 = time.monotonic()
  while not cond():
    if proc.poll() is not None:
      out, err = proc.communicate()
      raise AssertionError(f"the run ended early ({proc.returncode}):\n{out}\n{err}")
    if time.monotonic() - t0 > timeout:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(poll)


def committed_steps(workdir):
  d = workdir / "checkpoints"
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if d.is_dir() else []


def saving_now(workdir):
  d = workdir / "checkpoints"
  return d.is_dir() and any(".orbax-checkpoint-tmp" in n for n in os.listdir(d))


# ---------------------------------------------------------------------------------- signals


def test_stop_request_sets_a_flag_then_a_second_signal_interrupts_at_once():
  before = signal.getsignal(signal.SIGINT)
  with signals.StopRequest() as stop:
    assert stop.signum is None
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  assert signal.getsignal(signal.SIGINT) is before
  # SLURM's warning before the time limit, then its SIGTERM at the limit: the save goes on
  with signals.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert stop.signum == signal.SIGUSR2


def test_sigterm_finishes_the_step_saves_and_the_run_resumes(toy_corpus, tmp_path):
  c = tiny_config(toy_corpus, max_steps=100_000, lr_decay_steps=100_000, eval_interval=100_000,
                  checkpoint_every=100_000, log_interval=2)
  workdir = tmp_path / "run"
  proc = start_train(write_config_file(c, tmp_path / "config.py"), workdir)
  metrics = workdir / "metrics.jsonl"
  wait_for(lambda: metrics.exists() and '"loss"' in metrics.read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err
  last = err.strip().splitlines()[-1]
  assert "Traceback" not in err
  step = int(last.split(" at step ")[1].split(";")[0])
  assert last == (f"llm-jax train: interrupted by SIGTERM at step {step}; checkpoint saved; "
                  f"resume with the same command (--workdir={workdir})")
  assert committed_steps(workdir) == [step]  # saved at the step it stopped, not at checkpoint_every
  # the same run resumes from there
  c.train.update(max_steps=step + 2)
  s = train_and_evaluate(c, str(workdir))
  assert s["step"] == step + 2 and committed_steps(workdir)[-1] == step + 2


# ---------------------------------------------------------------------------------- kill -9


def kill_and_resume_trials(corpus, tmp_path, trials, seed=0):
  """Kills a real training process with SIGKILL `trials` times at random moments (one at least
  while a checkpoint is being written), resumes it each time, and compares with an uninterrupted
  run. Returns (trials whose resume was exact, trials)."""
  rng = random.Random(seed)
  max_steps = 4 * trials + 8
  c = tiny_config(corpus, max_steps=max_steps, lr_decay_steps=max_steps, checkpoint_every=1,
                  log_interval=1, eval_interval=max_steps, keep_checkpoints=2)
  c.model.dropout = 0.1  # its keys, too, must continue exactly
  reference = tmp_path / "reference"
  ref = c.copy_and_resolve_references()
  ref.train.keep_checkpoints = max_steps  # every step kept, to compare with each resume
  train_and_evaluate(ref, str(reference))
  config_file = write_config_file(c, tmp_path / "config.py")
  workdir, exact = tmp_path / "killed", 0
  for trial in range(trials):
    resumed_from = (committed_steps(workdir) or [0])[-1]
    proc = start_train(config_file, workdir)
    target = resumed_from + rng.randint(1, 3)
    if trial == 0:  # during an asynchronous checkpoint write
      wait_for(lambda: (committed_steps(workdir) or [0])[-1] >= target and saving_now(workdir),
               proc, poll=0.001)
    else:  # during a step, or a write, or a log line: wherever a random delay falls
      wait_for(lambda: (committed_steps(workdir) or [0])[-1] >= target, proc)
      time.sleep(rng.uniform(0, 0.05))
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # the resume point: the latest complete checkpoint, equal to the uninterrupted run's
    step, state = tree_digest(workdir)
    assert resumed_from < step < max_steps
    try:
      assert_same_state(state, tree_digest(reference, step)[1])
      exact += 1
    except AssertionError:
      pass
  proc = start_train(config_file, workdir)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert f"resuming at step {step}" in out
  assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(workdir / "checkpoints"))
  final_step, final = tree_digest(workdir)
  assert final_step == max_steps
  assert_same_state(final, tree_digest(reference, max_steps)[1])
  return exact, trials


def test_kill_9_at_random_moments_resumes_exactly(toy_corpus, tmp_path):
  exact, trials = kill_and_resume_trials(toy_corpus, tmp_path, trials=3)
  assert exact == trials


# ------------------------------------------------------------------------- damaged checkpoints


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(toy_corpus, tmp_path,
                                                                    capfd):
  c = tiny_config(toy_corpus, max_steps=20, eval_interval=20)  # checkpoints at 10 and 20
  workdir = tmp_path / "run"
  train_and_evaluate(c, str(workdir))
  _, reference = tree_digest(workdir, 20)
  ckpt = workdir / "checkpoints"
  leftover = ckpt / "30.orbax-checkpoint-tmp-1234"  # what a save killed midway leaves
  leftover.mkdir()
  # 1. truncated files
  for path in (ckpt / "20" / "state").rglob("d/*"):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  capfd.readouterr()
  train_and_evaluate(c, str(workdir))
  err = capfd.readouterr().err
  assert f"checkpoint {ckpt / '20'} is damaged" in err, err
  assert (workdir / "checkpoints_corrupt" / "20").is_dir() and not leftover.exists()
  assert_same_state(tree_digest(workdir, 20)[1], reference)  # redone from step 10, exactly
  # 2. a missing directory entry
  os.remove(ckpt / "20" / "state" / "manifest.ocdbt")
  train_and_evaluate(c, str(workdir))
  assert f"checkpoint {ckpt / '20'} is damaged" in capfd.readouterr().err
  assert_same_state(tree_digest(workdir, 20)[1], reference)
  # 3. none good: a clear error, and nothing moved
  for step in (10, 20):
    os.remove(ckpt / str(step) / "state" / "manifest.ocdbt")
  before = files_digest(ckpt)
  with pytest.raises(UserError, match="no checkpoint in .* restores .*steps 20, 10"):
    train_and_evaluate(c, str(workdir))
  assert files_digest(ckpt) == before


# ------------------------------------------------------------------------------- NaN and inf


def test_a_nan_loss_stops_naming_the_step_or_is_skipped(toy_corpus, tmp_path):
  # an absurd learning rate: the first update is finite but overflows the parameters, so the
  # loss and gradients of the second are NaN
  workdir = tmp_path / "run"
  c = tiny_config(toy_corpus, learning_rate=1e30, min_lr=1e30, checkpoint_every=1, max_steps=6)
  with pytest.raises(UserError) as e:
    train_and_evaluate(c, str(workdir))
  message = str(e.value)
  assert "at step 2" in message and ("loss is nan" in message or "grad_norm is nan" in message)
  assert "last good checkpoint (step 1) is kept" in message
  assert committed_steps(workdir) == [1]  # the state after the NaN was never saved
  before = files_digest(workdir / "checkpoints")
  good = tree_digest(workdir, 1)[1]
  assert all(np.isfinite(x).all() for x in good.values())
  with pytest.raises(UserError, match="at step 2"):  # the same again: checkpoint 1 untouched
    train_and_evaluate(c, str(workdir))
  assert files_digest(workdir / "checkpoints") == before
  # 'skip': the run goes on, dropping and counting the non-finite updates
  c.train.nan_policy = "skip"
  s = train_and_evaluate(c, str(workdir))
  assert s["step"] == 6 and s["skipped_updates"] == 5  # steps 2..6, all from the same params
  _, state = tree_digest(workdir, 6)
  assert int(state["['step']"]) == 6
  # the learning-rate schedule's count (AdamW's last link, after clipping) follows the step, so
  # that the logged rate is the applied one (guards.py); the rest is the good state's
  schedule = "['opt_state'][1][2]['count']"
  assert int(state[schedule]) == 6 and int(good[schedule]) == 1
  assert_same_state({k: v for k, v in state.items() if k not in ("['step']", schedule)},
                    {k: v for k, v in good.items() if k not in ("['step']", schedule)})


# ------------------------------------------------------------------------------- the disk


def test_a_full_disk_is_an_error_and_the_last_checkpoint_stays(toy_corpus, tmp_path,
                                                               monkeypatch):
  workdir = tmp_path / "run"
  saves = []
  real_save = checkpoint.save

  def save_then_fail(manager, state, meta):
    saves.append(int(state.step))
    if len(saves) > 1:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_save(manager, state, meta)

  monkeypatch.setattr(checkpoint, "save", save_then_fail)
  with pytest.raises(UserError, match=r"checkpoint of step 20 .*disk is full.*step 10 is intact"):
    train_and_evaluate(tiny_config(toy_corpus, max_steps=20), str(workdir))
  assert committed_steps(workdir) == [10] and tree_digest(workdir)[0] == 10
  # too little room for two checkpoints: refused before training
  monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": 1000})())
  with pytest.raises(UserError, match=r"MiB free, less than two checkpoints"):
    train_and_evaluate(tiny_config(toy_corpus, max_steps=20), str(tmp_path / "other"))


def test_skip_nonfinite_is_optax_apply_if_finite_without_its_counters_in_the_state():
  """A finite update is tx's own; a NaN gradient changes nothing and is reported as skipped; the
  optimizer state keeps tx's tree (a checkpoint does not depend on nan_policy)."""
  import jax.numpy as jnp
  import optax
  from llm_jax.training import guards
  tx = optax.adamw(1e-2)
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  opt_state = tx.init(params)
  update = jax.jit(guards.skip_nonfinite(tx))
  grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.ones(3)}
  updates, state, skipped = update(grads, opt_state, params)
  want_updates, want_state = tx.update(grads, opt_state, params)
  assert float(skipped) == 0.0
  assert jax.tree.structure(state) == jax.tree.structure(opt_state)
  for a, b in zip(jax.tree.leaves((updates, state)), jax.tree.leaves((want_updates, want_state))):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  grads["b"] = grads["b"].at[1].set(jnp.nan)
  updates, state, skipped = update(grads, opt_state, params)
  assert float(skipped) == 1.0
  assert all(not np.any(x) for x in jax.tree.leaves(updates))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(opt_state)):
    np.testing.assert_array_equal(a, b)


def test_a_failed_restore_leaves_no_read_in_flight(toy_corpus, tmp_path, monkeypatch):
  """Without <step>/state/manifest.ocdbt every read fails at once: Orbax's restore used to end
  with the other reads in flight, whose completions met a closed event loop ('Event loop is
  closed', unraisable, in TensorStore's threads)."""
  import gc
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  c = tiny_config(toy_corpus, max_steps=10, eval_interval=10)
  train_and_evaluate(c, str(tmp_path / "run"))
  os.remove(tmp_path / "run" / "checkpoints" / "10" / "state" / "manifest.ocdbt")
  with pytest.raises(UserError, match="no checkpoint in .* restores"):
    train_and_evaluate(c, str(tmp_path / "run"))
  time.sleep(0.5)  # where TensorStore's late completions used to fail
  gc.collect()
  assert unraisable == []
