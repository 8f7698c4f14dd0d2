"""The sweep tool: experiment expansion and checks, the process pool with skip and resume, the
report, and the vectorized mode (equal to separate runs)."""

import csv
import json
import os
import shutil

import pytest

from llm_jax.errors import UserError
from llm_jax.sweep import grid, report, runner, spec, worker

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def write_experiment(folder, corpus, points, seeds=(0,), overrides=None):
  """An experiment on the tests' tiny GPT (conftest.tiny_config)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "base.py"), "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {TESTS_DIR!r})\nfrom conftest import tiny_config\n"
            f"def get_config():\n  return tiny_config({str(corpus)!r})\n")
  with open(os.path.join(folder, "experiment.py"), "w") as f:
    f.write(f"def get_experiment():\n  return {{'base': 'base.py', 'points': {points!r}, "
            f"'seeds': {list(seeds)!r}, 'overrides': {overrides or {}!r}}}\n")
  return str(folder)


def test_grid_is_every_combination_first_axis_slowest():
  points = grid({"model.norm": ["pre", "post"], "model.n_layer": [4, 8], "model.pos": ["learned"]})
  assert points == [{"model.norm": n, "model.n_layer": l, "model.pos": "learned"}
                    for n in ("pre", "post") for l in (4, 8)]


def test_experiment_expands_points_x_seeds_with_names_and_workdirs(tmp_path, toy_corpus):
  d = write_experiment(tmp_path / "exp", toy_corpus,
                       grid({"model.norm": ["pre", "post"], "train.warmup_steps": [0, 5]}),
                       seeds=(0, 1), overrides={"train.max_steps": 12})
  exp = spec.load_experiment(d)
  assert len(exp.runs) == 8 and [p for p, _ in exp.points][:2] == ["norm=pre,warmup_steps=0",
                                                                  "norm=pre,warmup_steps=5"]
  run = exp.runs[7]
  assert (run.point, run.seed) == ("norm=post,warmup_steps=5", 1)
  assert (run.config.model.norm, run.config.train.warmup_steps, run.config.seed,
          run.config.train.max_steps) == ("post", 5, 1, 12)
  assert run.workdir == os.path.join(d, "runs", "norm=post,warmup_steps=5", "seed1")


@pytest.mark.parametrize("points, overrides, message", [
    ([{"model.nrom": "post"}], None, "'model.nrom' is not a config field"),
    ([{"modle.norm": "post"}], None, "'modle' is not a section"),
    ([{"model.n_layer": "four"}], None, "model.n_layer='four' has the wrong type"),
    ([{"model.norm": "mid"}], None, "config.model.norm='mid' is invalid"),
    ([{}], {"train.nope": 1}, "'train.nope' is not a config field"),
    ([{"model.norm": "pre"}, {"model.norm": "pre"}], None, "same overrides"),
    ([{"slurm.gpus": 2}], None, "slurm.gpus=2 is invalid: use slurm.nodes or slurm.tasks_per_node"),
    ([{}], {"slurm.nodes": 0}, "slurm.nodes=0 is invalid"),
    ([{"slurm.tasks_per_node": 2}], None, "2 processes (slurm.nodes x slurm.tasks_per_node): use "
                                          "--launcher=submitit"),
    ([{"rl.task": "arithmetic"}, {}], None, "point task=arithmetic is an RL run (it names an "
                                            "rl.task) and point base is not"),
])
def test_a_bad_override_fails_before_any_run_starts(tmp_path, toy_corpus, points, overrides,
                                                    message):
  d = write_experiment(tmp_path / "exp", toy_corpus, points, overrides=overrides)
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    runner.run_sweep(d)
  assert not os.path.exists(os.path.join(d, "runs"))


def test_report_aggregates_fake_runs(tmp_path, toy_corpus):
  d = write_experiment(tmp_path / "exp", toy_corpus,
                       [{"model.n_layer": 1}, {"model.n_layer": 2}], seeds=(0, 1, 2))
  exp = spec.load_experiment(d)
  for i, run in enumerate(exp.runs[:5]):  # the last run never started
    os.makedirs(run.workdir)
    final = 2.0 + i / 10
    with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
      for step, v in ((0, 3.0), (10, 1.5 + i / 10), (20, final)):
        f.write(json.dumps({"step": step, "train_loss": v, "val_loss": v}) + "\n")
    with open(os.path.join(run.workdir, "summary.json"), "w") as f:
      json.dump({"step": 20, "params": 1000 * (i + 1), "tokens_per_s": 100.0 * (i + 1),
                 "wall_s": 10.0}, f)
  outputs = report.write_report(exp)
  assert all(os.path.getsize(p) > 0 for p in outputs)
  with open(os.path.join(d, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["status"] for r in rows] == ["done"] * 5 + ["not run"]
  assert float(rows[1]["best_val_loss"]) == pytest.approx(1.6)  # the min, not the last
  assert rows[4]["model.n_layer"] == "2"
  points = report.aggregate(report.collect(exp))
  assert points[0]["final_val_loss"] == pytest.approx(2.1)  # mean of 2.0, 2.1, 2.2
  assert points[0]["final_val_loss_std"] == pytest.approx(0.1)  # sample std
  assert points[1]["seeds"] == 2 and points[1]["final_val_loss"] == pytest.approx(2.35)
  md = open(os.path.join(d, "results.md")).read()
  assert "| n_layer=1 | 3/3 | 2.1000 ± 0.1000 |" in md and "| n_layer=2 | 2/2 |" in md


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, f)]


def test_sweep_runs_skips_finished_resumes_interrupted_and_vectorizes_equally(
    tmp_path, toy_corpus, capsys):
  points = [{"train.learning_rate": 1e-3},
            {"train.learning_rate": 3e-3, "model.dropout": 0.1, "train.weight_decay": 0.0}]
  d = write_experiment(tmp_path / "exp", toy_corpus, points, seeds=(0, 1))
  runner.run_sweep(d, jobs=2)
  exp = spec.load_experiment(d)
  assert all(spec.is_finished(r) for r in exp.runs)
  first = {r.workdir: losses(r.workdir) for r in exp.runs}
  assert "points 2/2 done, 0 running, 0 left; runs 4/4 done" in capsys.readouterr().out

  # interrupt one run: it loses its final checkpoint and summary, so it resumes from step 10
  run = exp.runs[3]
  os.remove(os.path.join(run.workdir, "summary.json"))
  shutil.rmtree(os.path.join(run.workdir, "checkpoints", "20"))
  runner.run_sweep(d, jobs=2)
  out = capsys.readouterr().out
  assert "3 finished already, 1 to run" in out
  assert "resuming at step 10" in open(os.path.join(run.workdir, runner.LOG_FILE)).read()
  assert {r.workdir: losses(r.workdir) for r in exp.runs} == first

  # the same runs, all four in one vmapped program: the same per-step losses
  # (in a folder of its own: beside exp/ its runs would be copied from there, as finished twins)
  v = shutil.copytree(d, tmp_path / "elsewhere" / "vec",
                      ignore=shutil.ignore_patterns("runs", "results*"))
  runner.run_sweep(str(v), vectorize=True)
  assert "4 to run as 1 process(es)" in capsys.readouterr().out
  for r in spec.load_experiment(str(v)).runs:
    separate = first[os.path.join(d, "runs", r.point, f"seed{r.seed}")]
    vectorized = losses(r.workdir)
    assert [s for s, *_ in vectorized] == [s for s, *_ in separate]
    for (_, a, b), (_, c, e) in zip(separate, vectorized):
      assert (a is None) == (c is None) and (b is None) == (e is None)
      assert a is None or c == pytest.approx(a, rel=1e-5)
      assert b is None or e == pytest.approx(b, rel=1e-5)
    with open(os.path.join(r.workdir, "summary.json")) as f:
      assert json.load(f)["vectorized"] == 4


def test_a_run_finished_in_a_sibling_experiment_is_copied_not_trained(tmp_path, toy_corpus,
                                                                       capsys):
  a = write_experiment(tmp_path / "a", toy_corpus, [{"model.n_layer": 1}])
  b = write_experiment(tmp_path / "b", toy_corpus, [{"model.n_layer": 1}])
  c = write_experiment(tmp_path / "c", toy_corpus, [{"model.n_layer": 1}],
                       overrides={"train.learning_rate": 2e-3})
  done = spec.load_experiment(a).runs[0]
  worker.write_run(done.workdir, done.config)
  with open(os.path.join(done.workdir, "summary.json"), "w") as f:
    json.dump({"step": done.config.train.max_steps}, f)
  runner.run_sweep(b)
  out = capsys.readouterr().out
  assert "copied n_layer=1/seed0 from ../a/runs/n_layer=1/seed0" in out and "0 to run" in out
  assert spec.is_finished(spec.load_experiment(b).runs[0])
  assert runner.find_twin(spec.load_experiment(c).runs[0], str(tmp_path)) is None
