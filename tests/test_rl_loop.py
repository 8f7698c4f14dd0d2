"""`llm-jax rl` (llm_jax/rl/loop.py): the sampler's log-probs equal training's (the ratio starts at
1), a step on a (data=2, fsdp=2, tensor=2) mesh equals one device, a run stopped mid-way (by a
raising reward, or kill -9) resumes to the uninterrupted run's parameters bitwise, `llm-jax sweep`
runs RL runs and reports their rewards, the mean reward rises, and bad input is one line.

The runs learn a user task written to a file (also the documented way to add a task): 'a+b='
with a, b in 0..4, every prompt 4 characters, so the sampler compiles once. One module-scoped run
first teaches a tiny GPT the answer format (rl.sft_steps); the others start from it
(train.init_from)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from llm_jax.config import default_config
from llm_jax.data.tokenizers import CharTokenizer
from llm_jax.errors import UserError
from llm_jax.fileio import read_metrics
from llm_jax.models import build_model, init_params
from llm_jax.rl import loop, rollout, tasks
from llm_jax.training import workdir as workdir_lib
from test_bad_inputs import ROOT, run_cli

SUMS_TASK = '''
import os
import time
from llm_jax.rl.tasks import Prompt, Task, exact_answer

def get_task(seed, operands=5):
  calls = [0]
  fail_after = int(os.environ.get("RL_TEST_FAIL_AFTER", "0"))
  hang_after = int(os.environ.get("RL_TEST_HANG_AFTER", "0"))

  def prompts(rng, n):
    return [Prompt(f"{a}+{b}=", str(a + b)) for a, b in rng.integers(0, operands, size=(n, 2))]

  def reward(prompt, text):
    calls[0] += 1
    if fail_after and calls[0] > fail_after:
      raise ValueError("the verifier broke")
    while hang_after and calls[0] > hang_after:  # a run that cannot end before it is killed
      time.sleep(1)
    return exact_answer(prompt, text)

  return Task("sums", prompts, reward, lambda p: p.answer + "\\n", "0123456789+=\\n")


def get_small_task(seed):  # 4 problems: the test of learning
  return get_task(seed, operands=2)
'''


def sums_config(task_path, **rl):
  c = default_config()
  c.parallel = "none"
  c.model.update(n_layer=1, n_head=2, n_embd=32, block_size=16, pos="rope", dtype="float32")
  c.train.update(batch_size=16, learning_rate=3e-3, schedule="constant", warmup_steps=0,
                 weight_decay=0.0, max_steps=1, log_interval=5, checkpoint_every=2,
                 keep_checkpoints=5)
  c.rl.update(task=str(task_path), group_size=4, prompts_per_step=4, max_new_tokens=3)
  c.rl.update(rl)
  return c


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  """(task file, a run that learned the answer format in 80 supervised steps)."""
  root = tmp_path_factory.mktemp("rl")
  task_path = root / "sums.py"
  task_path.write_text(SUMS_TASK)
  workdir = str(root / "sft")
  loop.rl_train(sums_config(task_path, sft_steps=80), workdir)
  return task_path, workdir


def from_sft(sft_run, **rl):
  task_path, workdir = sft_run
  c = sums_config(task_path, **rl)
  c.train.init_from = workdir
  return c


@pytest.fixture(scope="module")
def straight(sft_run, tmp_path_factory):
  """An uninterrupted run of 4 RL steps from the SFT run, KL on (its reference in the
  checkpoints, every 2 steps), and a config file that gives its config (its config.json)."""
  root = tmp_path_factory.mktemp("straight")
  c = from_sft(sft_run, kl_coef=0.05)
  c.train.max_steps = 4
  workdir = str(root / "run")
  loop.rl_train(c, workdir)
  config_file = root / "straight.py"
  config_file.write_text(
      "from llm_jax.sweep.worker import defaults\n"
      "from llm_jax.training.workdir import read_config\n"
      f"def get_config():\n  return read_config({workdir!r}, defaults())\n")
  return c, workdir, str(config_file)


def params_of(workdir):
  return workdir_lib.load_run(workdir)[3]


def without_timings(workdir):
  return [{k: v for k, v in r.items() if not k.endswith("_s")}
          for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_ratio_starts_at_one(pos):
  """The engine's log-prob of every sampled token equals training's recompute to 1e-5 (float32),
  on prompts of different lengths in one batch."""
  c = default_config()
  c.model.update(n_layer=1, n_head=2, n_embd=32, block_size=64, pos=pos, dtype="float32")
  task = tasks.get_task("arithmetic", 0)
  tok = CharTokenizer(task.alphabet)
  model = build_model(c.model, tok.vocab_size)
  params = init_params(model, c.model, jax.random.key(1))
  by_length = {len(p.text): p for p in task.prompts(np.random.default_rng(0), 40)}
  ids = [tok.encode(p.text) for p in list(by_length.values())[:3]]
  assert len({len(x) for x in ids}) == 3
  completions = rollout.sample(model, params, ids, jax.random.key(2), group_size=2,
                               block_size=64, max_new_tokens=8, temperature=1.0, eos_id=None)
  batch = rollout.to_batch(ids, completions, 2, 64)
  new = np.asarray(rollout.policy_logprobs(model, params, batch["tokens"]))
  m = batch["mask"] > 0
  assert m.sum() == 6 * 8
  ratio = np.exp(new[m] - batch["old_logp"][m])
  np.testing.assert_allclose(ratio, 1.0, atol=1e-5)


def test_mesh_step_equals_one_device(sft_run):
  """One RL step (KL on, 2 epochs) on a data=2 x fsdp=2 x tensor=2 mesh of simulated devices
  gives one device's parameters and metrics to 1e-5."""
  c1 = from_sft(sft_run, kl_coef=0.05)
  c1.train.rl_epochs = 2
  c8 = from_sft(sft_run, kl_coef=0.05)
  c8.train.rl_epochs = 2
  c8.parallel = "auto"
  c8.mesh.update(data=2, fsdp=2, tensor=2)
  task = tasks.get_task(c1.rl.task, c1.seed)
  tok, stop_id = loop._tokenizer(c1, sft_run[1], task)
  host = workdir_lib.load_run(sft_run[1])[3]
  out = []
  for c in (c1, c8):
    program = loop.Program(c, tok)
    state = program.init_state(c, host)
    if not out:  # the same host batch for both, sampled once
      batch = loop.rollouts(program, state, task, tok, stop_id, c, 0)[0]
    state, m = program.rl_step(state, batch)
    out.append((jax.device_get(state.params), jax.device_get(m)))
  (p1, m1), (p8, m8) = out
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], atol=1e-5, err_msg=k)


def test_resume_is_exact_and_a_raising_reward_is_one_line(straight, tmp_path, monkeypatch):
  """A run whose reward function raises in step 4 stops with one line naming the task and the
  prompt; resumed from its step-2 checkpoint it ends with the uninterrupted run's parameters
  bitwise and the same metrics (rollout seeds from (seed, step), the KL's reference restored)."""
  c, straight, _ = straight
  stopped = str(tmp_path / "stopped")
  monkeypatch.setenv("RL_TEST_FAIL_AFTER", str(3 * 16))  # steps 1-3 score, step 4 raises
  with pytest.raises(UserError) as e:
    loop.rl_train(c, stopped)
  msg = str(e.value)
  assert "\n" not in msg and "rl task 'sums'" in msg and "ValueError: the verifier broke" in msg
  assert "on the prompt '" in msg
  assert [r["step"] for r in read_metrics(os.path.join(stopped, "metrics.jsonl"))] == [1, 2, 3]
  monkeypatch.delenv("RL_TEST_FAIL_AFTER")
  loop.rl_train(c, stopped)  # resumes at step 2
  jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(stopped))
  assert without_timings(straight) == without_timings(stopped) and len(read_metrics(
      os.path.join(stopped, "metrics.jsonl"))) == 4


def test_a_finished_run_refuses_another_switch(straight):
  """Run again with another rl.kl_coef, a finished run would train nothing: one line."""
  c, workdir, _ = straight
  c = c.copy_and_resolve_references()
  c.rl.kl_coef = 0.1
  with pytest.raises(UserError, match=r"is a finished RL run, and config.rl.kl_coef=0.1 differs "
                                      r"from its 0.05: re-running it trains nothing"):
    loop.rl_train(c, workdir)


def test_kill_9_mid_run_then_resume_is_bitwise(straight, tmp_path):
  """`llm-jax rl` in a process of its own, killed by SIGKILL in its 3rd or 4th step once the
  step-2 checkpoint is on disk, then run again by the same command: it resumes at step 2 and ends
  with the uninterrupted run's parameters bitwise (the rollouts' keys, the KL's reference and the
  optimizer state all come back) and the same metrics. The run's reward function blocks from step
  4 on (RL_TEST_HANG_AFTER), so the run cannot end before the kill, however slow the machine."""
  _, straight, config_file = straight
  workdir = tmp_path / "killed"
  command = [sys.executable, "-m", "llm_jax", "rl", f"--config={config_file}",
             f"--workdir={workdir}"]
  log = tmp_path / "killed.log"
  with open(log, "w") as f:
    proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "RL_TEST_HANG_AFTER": str(3 * 16)})
  try:
    deadline = time.monotonic() + 300
    # Orbax renames a step's folder to its number once the step is written
    while not (workdir / "checkpoints" / "2").is_dir():
      assert proc.poll() is None, log.read_text()
      assert time.monotonic() < deadline, log.read_text()
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / "summary.json").exists()
  resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming at step 2" in resumed.stdout
  jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(str(workdir)))
  assert without_timings(straight) == without_timings(str(workdir))


def test_an_rl_sweep_runs_rl_runs_and_reports_their_reward(straight, tmp_path):
  """`llm-jax sweep` on an experiment whose base config names an rl.task runs each point as an
  `llm-jax rl` run (loss_norm sequence vs token here): the sequence point is the straight run
  bitwise; the report (results.csv/.md, reward.png) and --status give each run's mean reward;
  --vectorize is refused in one line."""
  _, straight, config_file = straight
  d = tmp_path / "ablation"
  d.mkdir()
  (d / "experiment.py").write_text(
      f"def get_experiment():\n  return {{'base': {config_file!r}, 'points': "
      "[{'rl.loss_norm': 'sequence'}, {'rl.loss_norm': 'token'}], 'seeds': [1337]}\n")
  code, out, err = run_cli("sweep", d, "--vectorize")
  assert code == 2 and len(err.strip().splitlines()) == 1 and "--vectorize" in err, err
  code, out, err = run_cli("sweep", d)
  assert code == 0, (out, err)
  assert "runs 2/2 done" in out
  seq, tok = (d / "runs" / p / "seed1337" for p in ("loss_norm=sequence", "loss_norm=token"))
  jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(str(seq)))
  assert without_timings(straight) == without_timings(str(seq))
  assert without_timings(str(tok)) != without_timings(str(seq))  # the token-mean loss
  with open(d / "results.csv") as f:
    rows = {r["point"]: r for r in csv.DictReader(f)}
  for point, workdir in (("loss_norm=sequence", seq), ("loss_norm=token", tok)):
    rewards = [r["reward"] for r in read_metrics(str(workdir / "metrics.jsonl"))]
    summary = json.loads((workdir / "summary.json").read_text())
    assert rows[point]["status"] == "done" and len(rewards) == 4
    assert float(rows[point]["final_reward"]) == pytest.approx(np.mean(rewards))
    assert float(rows[point]["final_reward"]) == pytest.approx(summary["reward_last_10"])
  assert (d / "reward.png").stat().st_size > 0
  md = (d / "results.md").read_text()
  assert f"| loss_norm=token | 1/1 | {float(rows['loss_norm=token']['final_reward']):.3f} |" in md
  code, out, err = run_cli("sweep", d, "--status")
  assert code == 0, err
  assert (f"loss_norm=sequence/seed1337  job -             finished (reward "
          f"{float(rows['loss_norm=sequence']['final_reward']):.3f})") in out


def test_mean_reward_rises(sft_run, tmp_path):
  """From the format-trained model, 20 GRPO steps (4 updates each) on the 4 problems of
  get_small_task raise the mean reward of the rollouts (by 0.2-0.35 when written)."""
  task_path, workdir = sft_run
  c = sums_config(f"{task_path}:get_small_task", group_size=8, prompts_per_step=4)
  c.train.update(init_from=workdir, max_steps=20, rl_epochs=4)
  loop.rl_train(c, str(tmp_path / "learn"))
  rewards = [r["reward"] for r in read_metrics(str(tmp_path / "learn" / "metrics.jsonl"))]
  first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
  assert last > first + 0.15, (first, last)
  summary = json.loads((tmp_path / "learn" / "summary.json").read_text())
  assert summary["step"] == 20 and summary["reward_last"] == rewards[-1]


@pytest.mark.parametrize("command,override,named", [
    ("rl", "--config.rl.task=nope", "config.rl.task='nope'"),
    ("rl", "--config.rl.task=", "config.rl.task='' names no task"),
    ("rl", "--config.rl.group_size=1", "config.rl.group_size=1"),
    ("rl", "--config.rl.kl_coef=0.1", "config.rl.kl_coef=0.1"),  # no init_from nor sft: no ref
    ("train", "--config.seed=0", "makes this an RL config: run it with `llm-jax rl`"),
])
def test_bad_input_is_one_line(tmp_path, command, override, named):
  code, out, err = run_cli(command, f"--config={ROOT}/configs/rl_arithmetic.py",
                           f"--workdir={tmp_path}/w", "--config.rl.sft_steps=0", override)
  assert code == 2, (out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and named in lines[0], err
  assert not os.path.exists(tmp_path / "w")
