"""A run's precision is fixed when the run is created (peaks.fix_run_dtype): model.dtype='auto'
becomes a concrete dtype there, its config.json keeps it, and a resume on any machine (here: under
another LLM_JAX_AUTO_DTYPE) trains in it. Also the default resolution itself, unpinned: the
suite's conftest pins 'auto' to float32 for its comparisons of two paths."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from llm_jax import peaks
from llm_jax.errors import UserError
from llm_jax.training.loop import Hooks, train_and_evaluate as _train
from test_training import final_params


def train_and_evaluate(config, workdir):
  """As the command line trains: 'auto' fixed by the caller's hook (peaks.fix_run_dtype)."""
  return _train(config, workdir, Hooks(fix_dtype=peaks.fix_run_dtype))


def saved_dtype(workdir):
  return json.loads((workdir / "config.json").read_text())["model"]["dtype"]


def test_a_run_created_in_bf16_by_auto_resumes_in_bf16_under_another_auto(
    toy_corpus, tmp_path, monkeypatch, capsys):
  """auto under LLM_JAX_AUTO_DTYPE=bfloat16 for 2 steps, resumed to 4 under =float32: bitwise the
  run trained 4 steps straight with an explicit bfloat16 (a float32 resume's steps would differ)."""
  run = lambda steps: tiny_config(toy_corpus, max_steps=steps, lr_decay_steps=4, warmup_steps=1,
                                  checkpoint_every=2, eval_interval=2, log_interval=1)
  straight = run(4)
  straight.model.dtype = "bfloat16"
  train_and_evaluate(straight, str(tmp_path / "straight"))

  monkeypatch.setenv(peaks.AUTO_ENV, "bfloat16")
  created = run(2)
  assert created.model.dtype == "auto"
  train_and_evaluate(created, str(tmp_path / "run"))
  assert saved_dtype(tmp_path / "run") == "bfloat16"
  assert "model.dtype auto -> bfloat16: $LLM_JAX_AUTO_DTYPE=bfloat16" in capsys.readouterr().out

  monkeypatch.setenv(peaks.AUTO_ENV, "float32")
  resumed = run(4)
  s = train_and_evaluate(resumed, str(tmp_path / "run"))
  assert s["step"] == 4 and saved_dtype(tmp_path / "run") == "bfloat16"
  assert ("model.dtype auto -> bfloat16: the run's own, kept from its config.json"
          in capsys.readouterr().out)
  a, _ = final_params(tmp_path / "straight")
  b, _ = final_params(tmp_path / "run")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)

  # an explicit change of dtype is still refused, in one line
  changed = run(6)
  changed.model.dtype = "float32"
  with pytest.raises(UserError, match="config.model.dtype='float32' differs .*'bfloat16'"):
    train_and_evaluate(changed, str(tmp_path / "run"))


def test_the_default_auto_unpinned_is_this_machines_measured_choice(
    toy_corpus, tmp_path, monkeypatch, capsys):
  """No LLM_JAX_AUTO_DTYPE and a fresh peaks cache: the run measures this machine's matmul peaks
  once, chooses by them, and says so; its config.json keeps the choice."""
  monkeypatch.delenv(peaks.AUTO_ENV, raising=False)
  monkeypatch.setenv("LLM_JAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(peaks, "_SEEN", {})
  c = tiny_config(toy_corpus, max_steps=1, lr_decay_steps=1, warmup_steps=0, eval_interval=1,
                  checkpoint_every=1, log_interval=1)
  train_and_evaluate(c, str(tmp_path / "run"))
  measured = json.loads(peaks.cache_file().read_text())[peaks.machine()]
  dtype, why = peaks.auto_choice(measured)
  assert dtype in ("float32", "bfloat16") and saved_dtype(tmp_path / "run") == dtype
  assert f"model.dtype auto -> {dtype}: {why}" in capsys.readouterr().out


def test_a_sweep_keeps_the_dtype_its_runs_took(tmp_path, toy_corpus, capsys):
  """A sweep point says 'auto'; its run, once trained, says bfloat16 in its config.json: the sweep
  rewrites that config without a refusal and without 'auto', and a sibling experiment's same
  point finds the run as its finished twin."""
  from llm_jax.sweep import runner, spec, worker
  from test_sweep import write_experiment
  a = write_experiment(tmp_path / "a", toy_corpus, [{"model.n_layer": 1}])
  b = write_experiment(tmp_path / "b", toy_corpus, [{"model.n_layer": 1}])
  done = spec.load_experiment(a).runs[0]
  trained = done.config.copy_and_resolve_references()
  trained.model.dtype = "bfloat16"  # as the worker's run fixed it (peaks.fix_run_dtype)
  worker.write_run(done.workdir, trained)
  assert spec.load_experiment(a).runs[0].config.model.dtype == "auto"
  worker.write_run(done.workdir, spec.load_experiment(a).runs[0].config)
  assert saved_dtype(tmp_path / done.workdir) == "bfloat16"
  with open(f"{done.workdir}/summary.json", "w") as f:
    json.dump({"step": done.config.train.max_steps}, f)
  runner.run_sweep(b)
  assert "copied n_layer=1/seed0" in capsys.readouterr().out
  assert saved_dtype(tmp_path / spec.load_experiment(b).runs[0].workdir) == "bfloat16"


def test_vectorized_runs_that_took_different_dtypes_are_refused(tmp_path, toy_corpus):
  """Two runs of one vmapped program say 'auto', but one was created in bfloat16 and the other in
  float32 (on two machines): refused in one line before anything is built."""
  from llm_jax.sweep import worker
  from llm_jax.training.vectorized import train_runs
  configs = []
  for name, dtype in (("a", "bfloat16"), ("b", "float32")):
    c = tiny_config(toy_corpus)
    c.model.dtype = dtype
    worker.write_run(str(tmp_path / name), c)
    configs.append(tiny_config(toy_corpus))
  assert [c.model.dtype for c in configs] == ["auto", "auto"]
  with pytest.raises(UserError, match="config.model.dtype differs between vectorized runs"):
    train_runs(configs, [str(tmp_path / "a"), str(tmp_path / "b")],
               Hooks(fix_dtype=peaks.fix_run_dtype))
