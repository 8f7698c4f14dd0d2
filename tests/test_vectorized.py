"""Vectorized runs (training/vectorized.py) go through the training loop of a single run: the NaN
policy, the damaged-checkpoint fallback and TensorBoard events are the same."""

import os

import pytest

from conftest import tiny_config
from llm_jax.errors import UserError
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.vectorized import train_runs
from test_parallel import assert_close, read_metrics


def pair(toy_corpus, lrs=(1e-3, 3e-3), **train):
  configs = []
  for lr in lrs:
    c = tiny_config(toy_corpus, learning_rate=lr, log_interval=1, **train)
    c.model.dropout = 0.1
    configs.append(c)
  return configs


def test_a_diverging_run_stops_with_the_error_of_a_single_run(toy_corpus, tmp_path):
  configs = pair(toy_corpus, lrs=(1e-3, 1e4), grad_clip=0.0)
  with pytest.raises(UserError) as single:
    train_and_evaluate(configs[1], str(tmp_path / "single"))
  with pytest.raises(UserError) as vmapped:
    train_runs(configs, [str(tmp_path / "a"), str(tmp_path / "b")])
  message = str(vmapped.value)
  assert f" in {tmp_path / 'b'}:" in message  # names the run
  assert message.replace(f" in {tmp_path / 'b'}", "") == str(single.value)
  assert "lower config.train.learning_rate" in message


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(toy_corpus, tmp_path, capsys):
  workdirs = [str(tmp_path / "a"), str(tmp_path / "b")]
  straight = [str(tmp_path / "straight_a"), str(tmp_path / "straight_b")]
  train_runs(pair(toy_corpus), straight)
  train_runs(pair(toy_corpus, max_steps=20), workdirs)
  for path in (tmp_path / "a" / "checkpoints" / "20" / "state").rglob("d/*"):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  capsys.readouterr()
  summaries = train_runs(pair(toy_corpus), workdirs)
  err = capsys.readouterr().err
  assert f"checkpoint {tmp_path / 'a' / 'checkpoints' / '20'} is damaged" in err
  assert f"{tmp_path / 'b'} resumes at step 10 with the other vectorized runs" in err
  assert [s["step"] for s in summaries] == [20, 20]
  for w, s in zip(workdirs, straight):  # each continues as the uninterrupted run
    assert_close(read_metrics(tmp_path / w)[0], read_metrics(tmp_path / s)[0])
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(w))
  assert (tmp_path / "a" / "checkpoints_corrupt" / "20").is_dir()
