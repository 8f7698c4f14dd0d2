"""`llm-jax generate`: loading a run and refusing bad input, in process and as a command."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.errors import UserError
from llm_jax.generate import generate_text
from llm_jax.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("gen")
  (tmp / "toy.txt").write_text(TOY_TEXT)
  train_and_evaluate(tiny_config(tmp / "toy.txt", max_steps=4, checkpoint_every=2,
                                 eval_interval=4), str(tmp / "run"))
  return tmp / "run"


def test_generates_from_the_latest_or_a_chosen_step(run):
  a = generate_text(run, "the ", max_new_tokens=10, num_samples=3, seed=1)
  assert len(a) == 3 and all(len(s) == 10 for s in a)
  assert generate_text(run, "the ", max_new_tokens=10, num_samples=3, seed=1) == a
  greedy = generate_text(run, "the ", max_new_tokens=10, greedy=True, step=2)
  assert greedy == generate_text(run, "the ", max_new_tokens=10, temperature=0.0, step=2)


@pytest.mark.parametrize("kwargs,words", [
    (dict(max_new_tokens=0), "--max_new_tokens=0"),
    (dict(top_k=-1), "--top_k=-1"),
    (dict(top_k=1000), "--top_k=1000"),
    (dict(top_p=0.0), "--top_p=0.0"),
    (dict(top_p=1.5), "--top_p=1.5"),
    (dict(temperature=-1.0), "--temperature=-1.0"),
    (dict(num_samples=0), "--num_samples=0"),
    (dict(prompt="the Q"), "'Q'"),
    (dict(prompt=""), "--prompt is empty"),
    (dict(step=3), "--step=3 was not saved"),
])
def test_bad_sampling_input_is_refused(run, kwargs, words):
  with pytest.raises(UserError, match=words.replace("[", r"\[")) as e:
    generate_text(run, **{"prompt": "the ", **kwargs})
  assert "\n" not in str(e.value)


def test_a_missing_run_or_checkpoint_is_refused(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    generate_text(tmp_path / "nowhere")
  with pytest.raises(UserError, match="holds no training run"):
    generate_text(tmp_path)


def test_the_command_prints_samples_and_exits_2_on_bad_input(run):
  cmd = [sys.executable, "-m", "llm_jax", "generate", f"--workdir={run}", "--prompt=the ",
         "--max_new_tokens=12", "--num_samples=2", "--top_k=3"]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("--- sample") == 2 and r.stdout.count("the ") >= 2
  r = subprocess.run(cmd + ["--top_p=2"], capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "--top_p=2.0 is invalid" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_generation_and_evaluation_read_the_saved_parameters_without_an_optimizer(run,
                                                                                monkeypatch):
  import optax
  from llm_jax.training import checkpoint
  from llm_jax.evaluate import evaluate_run
  from llm_jax.training.workdir import load_run

  def no_optimizer(*args, **kwargs):
    raise AssertionError("an optimizer was built")

  monkeypatch.setattr(optax, "adamw", no_optimizer)
  _, _, _, params, step = load_run(run)
  from test_faults import saved_state
  manager = checkpoint.make_manager(str(run), 100, create=False)
  saved = saved_state(manager, step)["params"]  # the whole state, as Orbax reads it
  manager.close()
  assert jax.tree.structure(params) == jax.tree.structure(saved)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(a, b)
  assert len(generate_text(run, "the ", max_new_tokens=5)[0]) == 5
  assert evaluate_run(run)["loss"] > 0


def test_a_prompt_is_normalized_as_the_corpus_was(tmp_path):
  """A corpus that starts with a byte-order mark and spells 'é' as e + a combining accent: the
  mark is no character of the vocabulary, the run's tokenizer is NFC (data.normalize='auto'), and
  a prompt spelling 'é' either way gives the same samples."""
  import json
  decomposed, precomposed = "cafe\u0301", "caf\u00e9"
  (tmp_path / "toy.txt").write_text("\ufeff" + TOY_TEXT.replace("cat", decomposed),
                                    encoding="utf-8")
  c = tiny_config(tmp_path / "toy.txt", max_steps=2, eval_interval=2, checkpoint_every=2)
  train_and_evaluate(c, str(tmp_path / "run"))
  saved = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
  assert saved["normalize"] == "NFC" and "\u00e9" in saved["chars"]
  assert "\ufeff" not in saved["chars"] and "\u0301" not in saved["chars"]
  a = generate_text(tmp_path / "run", f"the {precomposed}", max_new_tokens=8, seed=3)
  assert generate_text(tmp_path / "run", f"the {decomposed}", max_new_tokens=8, seed=3) == a
