"""What a researcher watches: TensorBoard events beside metrics.jsonl, `llm-jax plot`, and the
start and end summary lines."""

import json
import re

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import tiny_config
from llm_jax.models import flops_per_token
from llm_jax.training.loop import train_and_evaluate
from test_bad_inputs import run_cli
from test_faults import tree_digest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run with a text sample at each evaluation, and its printed output."""
  import contextlib
  import io
  d = tmp_path_factory.mktemp("observed")
  from conftest import TOY_TEXT
  (d / "toy.txt").write_text(TOY_TEXT)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):  # not a terminal, as a SLURM job's log
    summary = train_and_evaluate(tiny_config(d / "toy.txt", sample_tokens=8, log_seconds=0),
                                 str(d / "run"))
  return d / "run", summary, out.getvalue()


def test_tensorboard_events_hold_the_metrics_and_a_sample(run):
  workdir, _, _ = run
  acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  scalars = set(acc.Tags()["scalars"])
  assert {"train/loss", "val/loss", "train/lr", "train/grad_norm", "train/param_norm",
          "train/tokens_per_s"} <= scalars
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  # the event file holds the values metrics.jsonl holds, step by step
  for tag, key in (("train/loss", "loss"), ("val/loss", "val_loss"), ("train/lr", "lr"),
                   ("train/param_norm", "param_norm")):
    expected = [(r["step"], r[key]) for r in records if key in r]
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in got] == [s for s, _ in expected], tag
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)
  # the parameter norm grows away from init and is the norm of the parameters
  norms = [e.value for e in acc.Scalars("train/param_norm")]
  assert all(n > 0 for n in norms) and len(set(norms)) > 1
  _, state = tree_digest(workdir, 20)
  params = [v.astype(np.float64) for k, v in state.items() if k.startswith("['params']")]
  np.testing.assert_allclose(norms[-1], np.sqrt(sum((p ** 2).sum() for p in params)), rtol=1e-5)
  # a text sample at each evaluation (steps 0, 10, 20)
  texts = acc.Tensors("text/sample")
  assert [t.step for t in texts] == [0, 10, 20]
  sample = texts[-1].tensor_proto.string_val[0].decode()
  assert sample.startswith("```\n") and len(sample.strip("`\n")) > 0


def test_the_event_writer_leaves_torch_unimported_and_importable(tmp_path):
  """The events are written without torch (tensorboardX imported it where installed: 3.7-5.3 s of
  every run's start on 2 shared cores, against 0.4-0.7 s for tensorboard's own writer)."""
  import importlib.util
  import subprocess
  import sys
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed here: there is nothing to leave out")
  code = ("import sys; from llm_jax.training import events; assert 'torch' not in sys.modules; "
          f"w = events.EventWriter({str(tmp_path)!r}, 0); w.train({{'step': 1, 'loss': 2.5}}); "
          "w.close(); import torch; torch.zeros(1)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5)]


def test_start_and_end_summary_lines(run):
  workdir, summary, out = run
  lines = out.splitlines()
  head = next(l for l in lines if "parameters" in l)
  n = summary["params"]
  n_wpe = 16 * 32  # the position table is not a matmul (nanoGPT's estimate_mfu)
  flops = flops_per_token(tiny_config("x").model, n - n_wpe)
  assert flops == 6 * (n - n_wpe) + 12 * 2 * 16 * 32  # 6N + 12 L T C
  assert f"{n / 1e6:.2f}M parameters, {flops / 1e3:.2f}kFLOPs/token" in head
  assert "1 device(s) (jit), global batch 8 (8 examples per batch shard x 1 accumulation steps), " \
         "128 tokens/step" in head
  tail = next(l for l in lines if l.startswith("llm-jax: done"))
  assert tail.startswith(f"llm-jax: done at step 20: {20 * 128:,} tokens in all")
  assert f"best val loss {summary['best_val_loss']:.4f}" in tail
  assert summary["best_val_loss"] == min(
      json.loads(l)["val_loss"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
      if "val_loss" in l)


def test_a_log_that_is_not_a_terminal_gets_plain_progress_lines(run):
  workdir, _, out = run
  losses = {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").open())
            if "loss" in r}
  lines = re.findall(r"^step (\d+)/20: loss (\d+\.\d{4}), [\d,]+ tokens/s, \d+m\d\ds elapsed, "
                     r"ETA \d+m\d\ds$", out, re.M)
  # log_seconds=0: one at each log step (log_interval=5), with that step's mean training loss
  assert [int(s) for s, _ in lines] == [5, 10, 15, 20]
  assert [float(l) for _, l in lines] == [round(losses[s], 4) for s in (5, 10, 15, 20)]


def test_plot_draws_one_colour_per_run(run, tmp_path):
  import shutil
  import matplotlib.image
  workdir, _, _ = run
  other = tmp_path / "other_run"
  other.mkdir()
  shutil.copy(workdir / "metrics.jsonl", other / "metrics.jsonl")
  out = tmp_path / "curves.png"
  code, stdout, err = run_cli("plot", workdir, other, f"--out={out}")
  assert code == 0, err
  assert "2 run(s)" in stdout
  image = matplotlib.image.imread(out)[..., :3]
  assert image.shape[0] > 100 and image.shape[1] > 100
  # matplotlib's first two colours, C0 (blue) and C1 (orange), are both drawn
  for colour in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
    close = np.all(np.abs(image * 255 - np.array(colour)) < 12, axis=-1)
    assert close.sum() > 50, colour
